# frozen_string_literal: true

require "socket"
require_relative "c_program"

module Bench
  # One-way transfers into a loopback TCP connection whose far end another
  # process drains (bench/c/drain.c), the shape of the double_splice, gzip
  # and gunzip cases: the contender's process does only the sending half,
  # so its CPU seconds are that half's.
  #
  #   Bench::Transfer.in_ruby(meter, tasks, path: file, units: mib) do |src, dest|
  #     IO.double_splice(src, dest)
  #   end
  #   Bench::Transfer.in_c(meter, ["splice_copy", file], units: mib)
  #
  # The connection is made and the drain started before the window. The
  # window opens just before the job and closes when the drain has seen end
  # of input and reported its count: every byte has arrived.
  module Transfer
    module_function

    # Runs the job in this process, inside `tasks` (Fibers, Threads for no
    # scheduler, AsyncTasks, PolyphonyTasks): the window is taken inside
    # the scheduler's run, so it times the transfer, not the setting up of
    # the scheduler.
    #
    # @param tasks [#check!, #run] where the job runs
    # @param path [String] the file to send
    # @param units [Integer] units of work the job is (MiB)
    # @yieldparam src [File] the file, open for reading
    # @yieldparam dest [TCPSocket] the connection to the drain
    # @return [Integer] the bytes the drain received
    def in_ruby(meter, tasks, path:, units:)
      # The connection first: Polyphony replaces TCPServer with a wrapper
      # that has no #local_address.
      drain = Drain.new
      tasks.check! # loads the library, sets up a ring: not in the window
      received = nil
      File.open(path, "rb") do |src|
        tasks.run do
          meter.measure do
            yield src, drain.socket
            received = meter.harness_objects { drain.finish }
            units
          end
        end
      end
      drain.reap
      received
    ensure
      drain&.close
    end

    # Runs a reference program from bench/c/ with the connection as its
    # stdout; it prints its figures (see bench/c/figures.h) on stderr, and
    # they become the contender's: its CPU seconds and peak RSS, and a
    # window that starts when its main() began, not before fork and exec.
    #
    # @param argv [Array<String>] the program's name under bench/c/, then its arguments
    # @param units [Integer] units of work the job is (MiB)
    # @param pkg [String, nil] a pkg-config package the program links with
    # @return [Hash] the drain's count as :received and the program's figures
    def in_c(meter, argv, units:, pkg: nil)
      program = CProgram.build(argv.first, pkg: pkg)
      drain = Drain.new
      own = nil
      received = nil
      meter.measure do
        own = drain.run_program([program, *argv.drop(1)])
        received = drain.finish
        units
      end
      drain.reap
      runq_ns = own[:runq_ns]
      meter.adopt(cpu_s: own.fetch(:cpu_s), rss_peak_kib: own.fetch(:maxrss_kib), started_ns: own.fetch(:start_ns),
                  runq_s: runq_ns&.positive? ? runq_ns / 1e9 : nil)
      own.merge(received: received)
    ensure
      drain&.close
    end

    # Checks what the drain received.
    # @raise [RuntimeError] when it is not `want` (an Integer or a Range)
    def check(received, want, what)
      return if want === received # rubocop:disable Style/CaseEquality -- Integer or Range

      raise "#{what}: the drain received #{received.inspect} bytes, expected #{want}"
    end
  end

  # A loopback TCP connection and bench/c/drain.c reading its far end to
  # end of input in another process.
  class Drain
    attr_reader :socket

    def initialize
      server = TCPServer.new("127.0.0.1", 0)
      @socket = TCPSocket.new("127.0.0.1", server.local_address.ip_port)
      far = server.accept
      server.close
      @report, report_w = IO.pipe
      @pid = Process.spawn(CProgram.build("drain"), in: far, out: report_w)
      far.close
      report_w.close
    end

    # Ends the stream and waits until the drain has read all of it.
    # @return [Integer] the bytes it received
    def finish
      @socket.close unless @socket.closed?
      report = @report.read # end of file when the drain exits
      Integer(report[/bytes=(\d+)/, 1] || raise("the drain reported #{report.inspect}"))
    end

    # Runs a program writing into the connection (as its stdout) and waits
    # for it; this process's copy of the connection is closed at once, so
    # the drain sees end of input when the program exits.
    # @return [Hash] the program's figures
    def run_program(argv)
      err_r, err_w = IO.pipe
      pid = Process.spawn(*argv, out: @socket, err: err_w)
      err_w.close
      @socket.close
      err = err_r.read
      _, status = Process.wait2(pid)
      raise "#{File.basename(argv.first)} failed (#{status.inspect}): #{err.strip}" unless status.success?

      CProgram.figures(err)
    ensure
      err_r&.close
    end

    # Collects the drain process once the window is over.
    def reap
      _, status = Process.wait2(@pid)
      @pid = nil
      raise "the drain failed: #{status.inspect}" unless status.success?
    end

    def close
      if @pid
        Process.kill(:KILL, @pid)
        Process.wait(@pid)
      end
      [@socket, @report].each { |io| io.close unless io.closed? }
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
  end
end
