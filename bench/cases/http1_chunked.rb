# frozen_string_literal: true

require "fileutils"
require "bench/c_program"
require "bench/stream_peer"

# A file sent into a loopback TCP connection as an HTTP/1.1 chunked body
# (or, for double_splice, as is); another process drains the connection and
# checks the framing.
module Bench
  module Http1Chunked
    CHUNK = 64 * 1024
    MIB = 1024 * 1024
    SEED = 6 # issue 6
    DATA_DIR = File.expand_path("../out/data", __dir__)

    module_function

    # A file of `mib` MiB (a 1 MiB random block, repeated) under
    # bench/out/data/, written the first time a contender needs it.
    # @return [String] its path
    def data_file(mib)
      data_file_of("http1_chunked_#{mib}MiB.bin", mib * MIB)
    end

    # The smaller file of the untimed check: not a whole number of chunks.
    def check_file
      data_file_of("http1_chunked_check.bin", 3 * MIB + 12_345)
    end

    def data_file_of(name, size)
      path = File.join(DATA_DIR, name)
      return path if File.exist?(path) && File.size(path) == size

      FileUtils.mkdir_p(DATA_DIR)
      partial = "#{path}.#{Process.pid}.tmp"
      block = Random.new(SEED).bytes(MIB)
      File.open(partial, "wb") do |f|
        (size / MIB).times { f.write(block) }
        f.write(block.byteslice(0, size % MIB))
      end
      File.rename(partial, path)
      path
    end

    # Sends the file with the block (given the file and the socket; it
    # returns the payload bytes it sent) inside `tasks` (Fibers or Threads).
    # `framing` is :chunked or :raw (double_splice).
    #
    # Untimed first: the check file goes through the same sender to
    # bench/c/http1_chunked_drain.c, which checks the framing and compares
    # every payload byte with the file. Then the timed send: the drain only
    # moves the bytes into /dev/null (checking chunked framing there would
    # make the drain the bottleneck, and a different one for double_splice)
    # and counts them; the window ends when it has seen them all.
    def measure(tasks, framing, params, meter, &sender)
      tasks.check!
      drain = CProgram.build("http1_chunked_drain")
      path = data_file(params[:mib])
      check = check_file
      near, peer = open_drain([drain, framing.to_s, check])
      File.open(check, "rb") do |file|
        check_verified(file.size, *send_through(tasks, file, near, peer, &sender), framing)
      end
      warm(path)
      near, peer = open_drain([drain, "raw"])
      sent = drained = nil
      File.open(path, "rb") do |file|
        sent, drained = send_through(tasks, file, near, peer, meter, &sender)
      end
      check_timed(File.size(path), sent, drained, framing)
    ensure
      near&.close unless near&.closed?
    end

    # Reads the file once before the window, so every contender sends it
    # from the page cache. A contender that found it evicted (the first
    # of a run, after other cases' files) read it at a seventh of the rate
    # (467 MiB/s against 3,063 for the Ruby loop's median), and that one
    # round made the ratios range up to 8.5x.
    def warm(path)
      buf = String.new(capacity: MIB)
      File.open(path, "rb") { |f| nil while f.read(MIB, buf) }
    end

    # A loopback TCP connection whose far end the drain program reads.
    # @return [Array(TCPSocket, StreamPeer)]
    def open_drain(argv)
      near, far = StreamPeer.tcp_pair
      [near, StreamPeer.spawn_reader(argv, far)]
    end

    # Sends the file into `near`, closes it and waits for the drain; timed
    # by `meter` if given, inside the scheduler's run (the window times the
    # send, not the setting up of a ring).
    # @return [Array(Integer, Hash)] what the sender returned, and the drain's figures
    def send_through(tasks, file, near, drain, meter = nil)
      sent = drained = nil
      tasks.run do
        job = lambda do
          sent = yield file, near
          near.close
          drained = CProgram.figures(drain.wait)
          file.size / MIB
        end
        meter ? meter.measure(&job) : job.call
      end
      [sent, drained]
    end

    # The untimed send: the drain checked the framing and every payload byte.
    def check_verified(size, sent, drained, framing)
      check_sent(size, sent)
      ok = drained[:payload_bytes] == size &&
           (framing == :chunked ? drained[:chunks].positive? : drained[:wire_bytes] == size)
      raise "the checking drain saw #{drained.inspect} for a #{framing} send of #{size} bytes" unless ok
    end

    # The timed send: the drain counted the bytes on the wire; chunked
    # framing costs a little more than the payload (9 bytes per 64 KiB chunk).
    def check_timed(size, sent, drained, framing)
      check_sent(size, sent)
      over = drained[:wire_bytes] - size
      ok = framing == :chunked ? over.positive? && over < size / 1000 + 64 : over.zero?
      raise "the drain saw #{drained[:wire_bytes]} bytes for a #{framing} send of #{size} bytes" unless ok
    end

    def check_sent(size, sent)
      raise "the sender says #{sent.inspect} payload bytes, the file has #{size}" unless sent == size
    end

    # ---- the senders: each returns the payload bytes it sent --------------------------

    # The plain-Ruby way, as examples/threaded_file_server.rb's ChunkedWriter:
    # read 64 KiB into a reused buffer, then one IO#write of the chunk
    # header, the chunk and its CRLF.
    def ruby_loop(file, io)
      buf = String.new(capacity: CHUNK)
      total = 0
      while file.read(CHUNK, buf)
        io.write("#{buf.bytesize.to_s(16)}\r\n", buf, "\r\n")
        total += buf.bytesize
      end
      io.write("0\r\n\r\n")
      total
    end

    def http1_splice_chunked(file, io)
      IO.http1_splice_chunked(file, io)
    end

    def double_splice(file, io)
      IO.double_splice(file, io)
    end

    # bench/c/http1_uring_chain.c: the io_uring linked chain per chunk the
    # issue describes, in C. Reads the file from its position on stdin,
    # writes the body to the socket on stdout; its CPU and RSS become the
    # contender's.
    def c_uring_chain(file, io, meter)
      binary = CProgram.build("http1_uring_chain", pkg: "liburing")
      report, status = IO.pipe do |r, w|
        pid = Process.spawn(binary, CHUNK.to_s, in: file, out: io, err: w)
        w.close
        [r.read, Process.wait2(pid).last]
      end
      raise "http1_uring_chain failed: #{status.inspect}: #{report}" unless status.success?

      own = CProgram.figures(report)
      CProgram.adopt(meter, own) if meter
      own.fetch(:payload)
    end
  end
end

Bench.define(:http1_chunked) do
  title "send a file as an HTTP/1.1 chunked body over loopback TCP"
  about <<~MD
    A file of `mib` MiB (a 1 MiB random block, repeated; in the page cache) goes into a loopback
    TCP connection as an HTTP/1.1 chunked body of 64 KiB chunks, or as is for `double_splice`.
    A C program in another process (`bench/c/http1_chunked_drain.c`) drains the connection with
    `splice(2)` into `/dev/null` and counts the bytes, so the drain costs next to nothing and is
    the same for every contender; the window ends when it has seen them all, and the count must
    be the file plus a little framing (none for `double_splice`). Checking the framing during
    the timed send would make the drain the bottleneck (measured: `http1_splice_chunked` ran at
    2,603 MiB/s into a checking drain, 4,114 MiB/s into this one), so before the window each contender
    sends a 3 MiB + 12,345 byte file through the same code to the drain in checking mode, which
    checks the framing and compares every payload byte with the file. *Ruby loop* is the
    plain-Ruby way: `File#read(65536, buf)` into a reused buffer and one `IO#write` of header,
    chunk and CRLF per chunk, no scheduler. `IO.http1_splice_chunked(file, socket)` runs in a
    fiber under `Ringspun.run` forced to one backend, and with no scheduler.
    `IO.double_splice(file, socket)` moves the same file with no framing: the bar for
    `http1_splice_chunked`. *C: io_uring linked chain* (`bench/c/http1_uring_chain.c`) is the
    design the issue names, alone in C: per chunk one submission of a linked header write and
    `IORING_OP_SPLICE` from a pipe to the socket, beside the splice of the next chunk into the
    pipe; it shows what that design costs on this kernel, where io_uring runs every splice on
    an io-wq worker. The issue's targets: `http1_splice_chunked` at least 2x the Ruby
    loop and at least 0.9x `double_splice`; the second ratio is the median of per-round
    ratios between those two rows (same backend), computed from `bench/out/results.json`.
  MD
  metric "MiB/s"
  bytes_per_unit 1024 * 1024
  # 1 GiB even in quick mode: at 256 MiB a window was 0.07 s, short enough
  # for one scheduling hiccup to move a round's ratio.
  sizes quick: { mib: 1024 }, full: { mib: 2048 }
  reference :ruby_loop

  contender(:ruby_loop, "Ruby loop: read 64 KiB, one write of header + chunk + CRLF (no scheduler)") do |params, meter|
    Bench::Http1Chunked.measure(Bench::Threads.new, :chunked, params, meter) do |file, io|
      Bench::Http1Chunked.ruby_loop(file, io)
    end
  end
  contender(:http1_splice_chunked_io_uring, "IO.http1_splice_chunked, Ringspun io_uring") do |params, meter|
    Bench::Http1Chunked.measure(Bench::Fibers.new(:io_uring), :chunked, params, meter) do |file, io|
      Bench::Http1Chunked.http1_splice_chunked(file, io)
    end
  end
  contender(:http1_splice_chunked_epoll, "IO.http1_splice_chunked, Ringspun epoll") do |params, meter|
    Bench::Http1Chunked.measure(Bench::Fibers.new(:epoll), :chunked, params, meter) do |file, io|
      Bench::Http1Chunked.http1_splice_chunked(file, io)
    end
  end
  contender(:http1_splice_chunked_blocking, "IO.http1_splice_chunked, no scheduler") do |params, meter|
    require "ringspun"
    Bench::Http1Chunked.measure(Bench::Threads.new, :chunked, params, meter) do |file, io|
      Bench::Http1Chunked.http1_splice_chunked(file, io)
    end
  end
  contender(:c_uring_chain, "C: io_uring linked chain per chunk, as the issue describes (bench/c/http1_uring_chain.c)") do |params, meter|
    Bench::Http1Chunked.measure(Bench::Threads.new, :chunked, params, meter) do |file, io|
      Bench::Http1Chunked.c_uring_chain(file, io, meter)
    end
  end
  contender(:double_splice_io_uring, "IO.double_splice (no framing), Ringspun io_uring") do |params, meter|
    Bench::Http1Chunked.measure(Bench::Fibers.new(:io_uring), :raw, params, meter) do |file, io|
      Bench::Http1Chunked.double_splice(file, io)
    end
  end
  contender(:double_splice_epoll, "IO.double_splice (no framing), Ringspun epoll") do |params, meter|
    Bench::Http1Chunked.measure(Bench::Fibers.new(:epoll), :raw, params, meter) do |file, io|
      Bench::Http1Chunked.double_splice(file, io)
    end
  end
end
