# frozen_string_literal: true

require "bench/c_program"
require "bench/stream_peer"

# Another process writes a stream of bytes into a loopback TCP connection;
# the contender reads it to the end in 64 KiB chunks and counts the bytes.
module Bench
  module ReadLoop
    CHUNK = 64 * 1024
    MIB = 1024 * 1024
    SEED = 5 # issue 5

    module_function

    # Reads params[:mib] MiB from a writer process with the block, which
    # returns the bytes it read, inside `tasks` (Fibers or Threads).
    def measure(tasks, params, meter)
      tasks.check!
      bytes = params[:mib] * MIB
      near, writer = start_writer(bytes)
      read = nil
      # The window inside the scheduler's run: it times the reading, not
      # the setting up of a ring.
      tasks.run do
        meter.measure do
          writer.go!
          read = yield near
          read / MIB
        end
      end
      writer.wait
      check(read_total: read, want: bytes)
    ensure
      near&.close
    end

    # The physical limit: bench/c/read_loop.c reads the socket instead,
    # with `args` ("fresh", "256": a new buffer per read, see the program).
    def measure_c(params, meter, args = [])
      binary = CProgram.build("read_loop")
      bytes = params[:mib] * MIB
      near, writer = start_writer(bytes)
      own = nil
      meter.measure do
        writer.go!
        own = CProgram.figures(StreamPeer.spawn_reader([binary, *args], near).wait)
        own[:units]
      end
      writer.wait
      check(read_total: own[:bytes], want: bytes)
      CProgram.adopt(meter, own)
    ensure
      near&.close unless near&.closed?
    end

    def start_writer(bytes)
      near, far = StreamPeer.tcp_pair
      writer = StreamPeer.fork_writer(far, near) do |io|
        piece = Random.new(SEED).bytes(MIB)
        (bytes / MIB).times { io.write(piece) }
      end
      [near, writer]
    end

    def check(read_total:, want:)
      raise "read #{read_total} bytes, the writer sent #{want}" unless read_total == want
    end

    # ---- the readers: each returns the bytes it read -----------------------------

    # The plain-Ruby way: a new String for every read.
    def readpartial(io)
      total = 0
      loop { total += io.readpartial(CHUNK).bytesize }
    rescue EOFError
      total
    end

    def read_loop(io)
      total = 0
      io.read_loop(CHUNK) { |chunk| total += chunk.bytesize }
      total
    end

    def recv_loop(io)
      total = 0
      io.recv_loop(CHUNK) { |chunk| total += chunk.bytesize }
      total
    end
  end
end

Bench.define(:read_loop) do
  title "read a stream to its end in 64 KiB chunks over loopback TCP"
  about <<~MD
    A forked writer process sends `mib` MiB (a 1 MiB random block, repeated) into a loopback
    TCP connection as fast as the reader takes it; the contender reads to end of input in
    chunks of up to 64 KiB, each chunk a new String, and adds up their sizes. The timed window
    starts when the writer is told to go and ends at end of input. *readpartial* is the
    plain-Ruby way: `IO#readpartial(65536)` in a loop, a new String per read, no scheduler.
    `IO#read_loop(65536)` and `BasicSocket#recv_loop(65536)` (multishot receive on io_uring) run
    in a fiber under `Ringspun.run` forced to one backend, and `IO#read_loop` also with no
    scheduler. The C program (`bench/c/read_loop.c`) reads the same socket with `read(2)` into one
    reused buffer; its row's CPU s and peak RSS are its own. Its *fresh* row reads each chunk
    into a new `malloc`'d 64 KiB buffer and frees them 256 at a time, as Ruby's GC frees Strings
    (its malloc limit starts at 16 MiB): the least a new buffer per chunk costs, in C. The
    issue's target: `read_loop` at least 1.2x `readpartial`.
  MD
  metric "MiB/s"
  bytes_per_unit 1024 * 1024
  sizes quick: { mib: 256 }, full: { mib: 1024 }
  reference :readpartial

  contender(:readpartial, "readpartial loop, new String per read (no scheduler)") do |params, meter|
    Bench::ReadLoop.measure(Bench::Threads.new, params, meter) { |io| Bench::ReadLoop.readpartial(io) }
  end
  contender(:read_loop_io_uring, "IO#read_loop, Ringspun io_uring") do |params, meter|
    Bench::ReadLoop.measure(Bench::Fibers.new(:io_uring), params, meter) { |io| Bench::ReadLoop.read_loop(io) }
  end
  contender(:read_loop_epoll, "IO#read_loop, Ringspun epoll") do |params, meter|
    Bench::ReadLoop.measure(Bench::Fibers.new(:epoll), params, meter) { |io| Bench::ReadLoop.read_loop(io) }
  end
  contender(:read_loop_blocking, "IO#read_loop, no scheduler") do |params, meter|
    require "ringspun"
    Bench::ReadLoop.measure(Bench::Threads.new, params, meter) { |io| Bench::ReadLoop.read_loop(io) }
  end
  contender(:recv_loop_io_uring, "BasicSocket#recv_loop, Ringspun io_uring") do |params, meter|
    Bench::ReadLoop.measure(Bench::Fibers.new(:io_uring), params, meter) { |io| Bench::ReadLoop.recv_loop(io) }
  end
  contender(:recv_loop_epoll, "BasicSocket#recv_loop, Ringspun epoll") do |params, meter|
    Bench::ReadLoop.measure(Bench::Fibers.new(:epoll), params, meter) { |io| Bench::ReadLoop.recv_loop(io) }
  end
  contender(:c, "C read(2) loop (bench/c/read_loop.c)") do |params, meter|
    Bench::ReadLoop.measure_c(params, meter)
  end
  contender(:c_fresh, "C read(2) loop, a new 64 KiB malloc per read, freed 256 at a time") do |params, meter|
    Bench::ReadLoop.measure_c(params, meter, %w[fresh 256])
  end
end
