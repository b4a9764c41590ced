# frozen_string_literal: true

require "open3"
require "socket"
require "timeout"
require "bench/c_program"
require "bench/fixtures"
require "bench/peers"

# Many copies at once: each sends the same 1 MiB file down a loopback TCP
# connection of its own, and a reader in the same process reads the other
# end to end of input.
module Bench
  module ConcurrentCopies
    MIB = 1024 * 1024
    CHUNK = 64 * 1024

    module_function

    # Connects the pairs (before the window), then runs every copy and its
    # reader as tasks of `tasks`, the copy done by the block.
    # @yieldparam src [File] the file, opened by the copy's task
    # @yieldparam dest [TCPSocket] the copy's connection
    def measure(tasks, params, meter, &copy)
      copies = params[:copies]
      # The connections first: Polyphony replaces TCPServer with a wrapper
      # that has no #local_address.
      pairs = connect(copies)
      tasks.check!
      received = Array.new(copies)
      meter.measure do
        tasks.run do |t|
          pairs.each_with_index do |(out, back), i|
            t.spawn { send_file(params[:path], out, &copy) }
            t.spawn { received[i] = read_all(back) }
          end
        end
        copies * params[:mib]
      end
      check(received, params[:mib] * MIB)
    ensure
      pairs&.flatten&.each { |io| io.close unless io.closed? }
    end

    # The Ruby floor: the same copies and readers with no scheduler and no
    # concurrency, each copy sent whole and then read (Bench::Inline). Any
    # event loop runs this Ruby and more. A copy that does not fit in the
    # socket's buffers would wait forever for its reader: skipped then.
    def measure_inline(params, meter)
      Timeout.timeout(10 + params[:copies] / 10) do
        measure(Bench::Inline.new, params, meter) { |src, dest| IO.copy_stream(src, dest) }
      end
    rescue Timeout::Error
      raise Skip, "a #{params[:mib]} MiB copy does not fit in a loopback socket's buffers here"
    end

    # One C thread doing every copy (bench/c/concurrent_copies.c): the
    # most any event loop on one thread could do. It connects its own pairs
    # and times its copies from start_ns on.
    def measure_c(params, meter)
      binary = CProgram.build("concurrent_copies")
      own = nil
      meter.measure do
        out, status = Open3.capture2(binary, params[:path], params[:copies].to_s)
        raise "concurrent_copies failed: #{status.inspect}" unless status.success?

        own = CProgram.figures(out)
        params[:copies] * params[:mib]
      end
      check([own[:bytes]], params[:copies] * params[:mib] * MIB)
      meter.adopt(cpu_s: own.fetch(:cpu_s), rss_peak_kib: own.fetch(:maxrss_kib), started_ns: own.fetch(:start_ns))
    end

    # @return [Array<Array(TCPSocket, TCPSocket)>] [sending end, reading end]
    def connect(copies)
      server = TCPServer.new("127.0.0.1", 0)
      port = server.local_address.ip_port
      Array.new(copies) do
        out = TCPSocket.new("127.0.0.1", port)
        [out, server.accept]
      end
    ensure
      server&.close
    end

    def send_file(path, out)
      File.open(path, "rb") { |src| yield src, out }
      out.close
    end

    # The reader, the same in every contender: readpartial into one reused
    # String until end of input.
    # @return [Integer] the bytes read
    def read_all(io)
      buffer = String.new(capacity: CHUNK)
      total = 0
      loop { total += io.readpartial(CHUNK, buffer).bytesize }
    rescue EOFError
      total
    end

    def check(received, want)
      wrong = received.each_index.reject { |i| received[i] == want }
      return if wrong.empty?

      raise "#{wrong.size} copies of #{received.size} came out wrong, e.g. copy #{wrong.first}: " \
            "#{received[wrong.first].inspect} bytes, not #{want}"
    end
  end
end

Bench.define(:concurrent_copies) do
  title "1,000 concurrent 1 MiB copies over loopback TCP"
  about <<~MD
    `copies` loopback TCP connections are made before the window. In the window, every copy at
    once opens the same `mib` MiB file (random bytes, in the page cache) and sends it down its
    own connection, then closes it; for each, a reader in the same process reads the other end
    to end of input with `readpartial` into one reused 64 KiB String and counts the bytes (each
    count is checked). Ringspun runs every copy and every reader as a fiber under `Ringspun.run`
    forced to one backend, the copies with `IO.double_splice`. The reference is the classic way:
    one Ruby thread per copy with `IO.copy_stream` (`sendfile(2)`) and one per reader, blocking
    IO, no scheduler. Polyphony runs the same with its own `IO.double_splice` and `spin`; Async
    runs `IO.copy_stream` in a task per copy. *One C thread* (`bench/c/concurrent_copies.c`)
    does the same copies with no runtime: `sendfile(2)` and `read(2)` into one buffer, the copies
    visited round robin, non-blocking; its CPU s and peak RSS are its own, and its window starts
    after it has connected its pairs. It is the most any event loop on one thread can do. *No
    scheduler* runs the same Ruby (copies with `IO.copy_stream`, readers as above) with no
    concurrency at all: each copy is sent whole, then its reader reads it, then the next. It is
    the floor of the Ruby every contender runs, the most any Ruby event loop can do. The
    issue's targets: `Ringspun.run` with `double_splice` at least 2x faster than a thread per
    copy, with a lower peak RSS.
  MD
  metric "MiB/s"
  bytes_per_unit 1024 * 1024
  sizes quick: { copies: 1000, mib: 1 }, full: { copies: 1000, mib: 1 }
  setup { |params, fixtures| { path: fixtures.random(params[:mib] * 1024 * 1024, seed: 6) } }
  # Per copy: two sockets and the file while it is sent; a thread for the
  # copy and one for its reader.
  needs { |params| { fds: 3 * params[:copies] + 16, threads: 2 * params[:copies] + 2 } }
  reference :threads

  target issue: 3, text: "1,000 copies with double_splice at least 2x faster than a thread per copy",
         contender: :ringspun_io_uring, rate_vs: :threads, at_least: 2.0
  target issue: 3, text: "1,000 copies with double_splice at least 2x faster than a thread per copy",
         contender: :ringspun_epoll, rate_vs: :threads, at_least: 2.0
  target issue: 3, text: "1,000 copies: peak RSS lower than a thread per copy",
         contender: :ringspun_io_uring, rss_vs: :threads, below: 1.0
  target issue: 3, text: "1,000 copies: peak RSS lower than a thread per copy",
         contender: :ringspun_epoll, rss_vs: :threads, below: 1.0

  contender(:threads, "a thread per copy, IO.copy_stream") do |params, meter|
    Bench::ConcurrentCopies.measure(Bench::Threads.new, params, meter) { |src, dest| IO.copy_stream(src, dest) }
  end
  contender(:ringspun_io_uring, "IO.double_splice, Ringspun io_uring") do |params, meter|
    Bench::ConcurrentCopies.measure(Bench::Fibers.new(:io_uring), params, meter) { |src, dest| IO.double_splice(src, dest) }
  end
  contender(:ringspun_epoll, "IO.double_splice, Ringspun epoll") do |params, meter|
    Bench::ConcurrentCopies.measure(Bench::Fibers.new(:epoll), params, meter) { |src, dest| IO.double_splice(src, dest) }
  end
  contender(:polyphony, "Polyphony 1.6 IO.double_splice") do |params, meter|
    Bench::ConcurrentCopies.measure(Bench::PolyphonyTasks.new, params, meter) { |src, dest| IO.double_splice(src, dest) }
  end
  contender(:async, "Async 2.24: IO.copy_stream in a task") do |params, meter|
    Bench::ConcurrentCopies.measure(Bench::AsyncTasks.new, params, meter) { |src, dest| IO.copy_stream(src, dest) }
  end
  contender(:ruby_inline, "no scheduler: one copy (IO.copy_stream) then its reader, in turn") do |params, meter|
    Bench::ConcurrentCopies.measure_inline(params, meter)
  end
  contender(:c_one_thread, "one C thread: sendfile + read(2), no runtime (bench/c/concurrent_copies.c)") do |params, meter|
    Bench::ConcurrentCopies.measure_c(params, meter)
  end
end
