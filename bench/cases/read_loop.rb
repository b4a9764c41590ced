# frozen_string_literal: true

require "fileutils"
require "bench/c_program"
require "bench/stream_peer"

# A stream read to its end in 64 KiB chunks, from three sources: a loopback
# TCP connection and a pipe another process writes into, and a file in the
# page cache. The contender reads with the block, which counts the bytes.
module Bench
  module ReadLoop
    CHUNK = 64 * 1024
    MIB = 1024 * 1024
    SEED = 5 # issue 5
    DATA_DIR = File.expand_path("../out/data", __dir__)

    # The other process's end of a pipe: it writes once told to go.
    class PipeWriter
      def initialize(pid, go)
        @pid = pid
        @go = go
      end

      def go!
        @go.write(StreamPeer::GO)
        @go.close
      end

      def wait
        _, status = Process.wait2(@pid)
        raise "pipe writer #{@pid} failed: #{status.inspect}" unless status.success?
      end
    end

    # A file that needs no writer: it is there already.
    class NoWriter
      def go! = nil
      def wait = nil
    end

    module_function

    # Reads params[:mib] MiB from `source` (:tcp, :pipe or :file) with the
    # block, which returns the bytes it read, inside `tasks` (Fibers or
    # Threads).
    def measure(tasks, params, meter, source = :tcp)
      tasks.check!
      bytes = params[:mib] * MIB
      near, writer = open_source(source, bytes)
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

    def open_source(source, bytes)
      case source
      when :tcp then start_writer(bytes)
      when :pipe then start_pipe_writer(bytes)
      when :file then [File.open(data_file(bytes), "rb"), NoWriter.new]
      else raise ArgumentError, source.inspect
      end
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

    def piece
      Random.new(SEED).bytes(MIB)
    end

    def start_writer(bytes)
      near, far = StreamPeer.tcp_pair
      writer = StreamPeer.fork_writer(far, near) do |io|
        block = piece
        (bytes / MIB).times { io.write(block) }
      end
      [near, writer]
    end

    def start_pipe_writer(bytes)
      r, w = IO.pipe
      go_r, go_w = IO.pipe
      pid = fork do
        r.close
        go_w.close
        go_r.read(1) == StreamPeer::GO or exit!(2)
        block = piece
        (bytes / MIB).times { w.write(block) }
        w.close
        exit!(0)
      end
      w.close
      go_r.close
      [r, PipeWriter.new(pid, go_w)]
    end

    # The file read by the :file source, made once (then in the page cache).
    def data_file(bytes)
      path = File.join(DATA_DIR, "read_loop_#{bytes / MIB}mib.bin")
      return path if File.size?(path) == bytes

      FileUtils.mkdir_p(DATA_DIR)
      partial = "#{path}.#{Process.pid}.tmp"
      File.open(partial, "wb") do |f|
        block = piece
        (bytes / MIB).times { f.write(block) }
      end
      File.rename(partial, path)
      path
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

    # The plain-Ruby way with one buffer: readpartial(CHUNK, buf).
    def readpartial_reuse(io)
      total = 0
      buf = String.new(capacity: CHUNK)
      loop { total += io.readpartial(CHUNK, buf).bytesize }
    rescue EOFError
      total
    end

    def read_loop(io)
      total = 0
      io.read_loop(CHUNK) { |chunk| total += chunk.bytesize }
      total
    end

    def read_loop_reuse(io)
      total = 0
      io.read_loop(CHUNK, String.new(capacity: CHUNK)) { |chunk| total += chunk.bytesize }
      total
    end

    def recv_loop(io)
      total = 0
      io.recv_loop(CHUNK) { |chunk| total += chunk.bytesize }
      total
    end

    # The contenders every source has.
    def define_common(kase, source)
      kase.contender(:readpartial, "readpartial loop, new String per read (no scheduler)") do |params, meter|
        measure(Bench::Threads.new, params, meter, source) { |io| readpartial(io) }
      end
      kase.contender(:readpartial_reuse, "readpartial(65536, buf) loop, one String (no scheduler)") do |params, meter|
        measure(Bench::Threads.new, params, meter, source) { |io| readpartial_reuse(io) }
      end
      { io_uring: "Ringspun io_uring", epoll: "Ringspun epoll", blocking: "no scheduler" }.each do |way, label|
        kase.contender(:"read_loop_#{way}", "IO#read_loop, #{label}") do |params, meter|
          measure(tasks_for(way), params, meter, source) { |io| read_loop(io) }
        end
        kase.contender(:"read_loop_reuse_#{way}", "IO#read_loop(65536, buf), #{label}") do |params, meter|
          measure(tasks_for(way), params, meter, source) { |io| read_loop_reuse(io) }
        end
      end
    end

    def tasks_for(way)
      return Bench::Fibers.new(way) unless way == :blocking

      require "ringspun"
      Bench::Threads.new
    end
  end
end

Bench.define(:read_loop) do
  title "read a stream to its end in 64 KiB chunks over loopback TCP"
  about <<~MD
    A forked writer process sends `mib` MiB (a 1 MiB random block, repeated) into a loopback
    TCP connection as fast as the reader takes it; the contender reads to end of input in
    chunks of up to 64 KiB and adds up their sizes. The timed window starts when the writer
    is told to go and ends at end of input. *readpartial* is the plain-Ruby way:
    `IO#readpartial(65536)` in a loop, a new String per read, no scheduler; *readpartial(65536,
    buf)* reuses one String. `IO#read_loop(65536)` (a new String per chunk, read straight into
    it) and `IO#read_loop(65536, buf)` (one reused String) run in a fiber under `Ringspun.run`
    forced to one backend, and with no scheduler; `BasicSocket#recv_loop(65536)` receives with
    multishot receive on io_uring (a copy out of the buffer ring per chunk). The C program
    (`bench/c/read_loop.c`) reads the same socket with `read(2)` into one reused buffer; its
    row's CPU s and peak RSS are its own. Its *fresh* row reads each chunk into a new `malloc`'d
    64 KiB buffer and frees them 256 at a time, as Ruby's GC frees Strings: the least a new
    buffer per chunk costs, in C. The issue's targets (#16): `read_loop` at least 1.0x
    `readpartial`, `read_loop(65536, buf)` at least 1.2x.
  MD
  metric "MiB/s"
  bytes_per_unit 1024 * 1024
  sizes quick: { mib: 256 }, full: { mib: 1024 }
  reference :readpartial

  Bench::ReadLoop.define_common(self, :tcp)
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
