# frozen_string_literal: true

require "socket"

module Bench
  # The other end of a stream, in another process, so the contender's
  # process does only its own half of the job (and its CPU seconds are only
  # that half's).
  #
  #   near, far = Bench::StreamPeer.tcp_pair
  #   writer = Bench::StreamPeer.fork_writer(far, near) { |io| io.write(data) }
  #   meter.measure do
  #     writer.go!                 # the writer starts only now
  #     ... read near until end of input ...
  #   end
  #   writer.wait
  class StreamPeer
    GO = "g"

    # A connected TCP pair on 127.0.0.1.
    # @return [Array(TCPSocket, TCPSocket)]
    def self.tcp_pair
      server = TCPServer.new("127.0.0.1", 0)
      far = TCPSocket.new("127.0.0.1", server.local_address.ip_port)
      [server.accept, far]
    ensure
      server&.close
    end

    # Forks a process that waits for {#go!}, then runs the block on its
    # end of the stream and closes it; the parent's copy of that end is
    # closed, so the near end sees end of input when the block is done.
    # Fork before any scheduler runs: the child does plain blocking IO.
    #
    # @param far [BasicSocket] the child's end
    # @param near [BasicSocket] the parent's end (closed in the child)
    # @yieldparam io [BasicSocket] far
    # @return [StreamPeer]
    def self.fork_writer(far, near)
      pid = fork do
        near.close
        far.read(1) == GO or exit!(2)
        yield far
        far.close
        exit!(0)
      rescue Exception => e # rubocop:disable Lint/RescueException -- reported, then the child dies
        warn("stream peer: #{e.full_message(highlight: false)}")
        exit!(1)
      end
      far.close
      new(pid, near)
    end

    # Runs a program with the far end as its stdin, its stdout to a pipe;
    # the parent's copy of the far end is closed. The program owns the
    # stream from the start (no go signal).
    # @return [StreamPeer]
    def self.spawn_reader(argv, far)
      out_r, out_w = IO.pipe
      pid = Process.spawn(*argv, in: far, out: out_w)
      out_w.close
      far.close
      new(pid, nil, out_r)
    end

    def initialize(pid, near, output = nil)
      @pid = pid
      @near = near
      @output = output
    end

    attr_reader :pid

    # Lets a forked writer start.
    def go!
      @near.write(GO)
    end

    # Waits for the process.
    # @return [String] what it printed on stdout ("" for a forked writer)
    # @raise [RuntimeError] when it failed
    def wait
      out = @output ? @output.read : ""
      _, status = Process.wait2(@pid)
      raise "stream peer #{@pid} failed: #{status.inspect}" unless status.success?

      out
    ensure
      @output&.close
    end
  end
end
