# frozen_string_literal: true

require_relative "test_helper"
require_relative "support/primitive_modes"
require_relative "support/splice_zstream_support"
require "tempfile"
require "stringio"

# The splice family (issue 3, "Tests"): IO.splice, IO.tee, IO.double_splice
# and Ringspun::Pipe. SpliceContract runs in all four modes (io_uring, epoll,
# no scheduler, Async); the bulk tests run only where the issue asks for
# them; the argument checks do not depend on the mode.
module SpliceContract
  include RingspunTest::SpliceZstreamSupport

  def setup
    super
    @dir = Dir.mktmpdir("ringspun-splice")
  end

  def teardown
    super
  ensure
    FileUtils.rm_rf(@dir) if @dir
  end

  # Writes data to a file in the test's directory; returns its path.
  def data_file(name, data)
    path = File.join(@dir, name)
    File.binwrite(path, data)
    path
  end

  # The article's `spin`: a fiber under a scheduler; with none, a thread
  # (Ringspun.spin needs a scheduler).
  def article_spin(&block)
    scheduled? ? Ringspun.spin(&block) : Thread.new(&block)
  end

  # ---- file to socket ---------------------------------------------------------------------

  # Opens the file at `path` and hands it, with one end of a fresh `kind`
  # socket pair (:tcp or :unix), to the block, while a reader drains the
  # other end. Returns [the block's value, [bytes, sha256] the reader got].
  def send_file_through(path, kind)
    out, back = kind == :tcp ? tcp_pair : unix_pair
    reader = go { drain(back) }
    moved = File.open(path, "rb") { |f| yield f, out }
    out.close_write
    [moved, reader.value]
  ensure
    close_all(out, back)
  end

  def test_double_splice_file_to_tcp_socket
    data = random_bytes(11, MIB + 13)
    path = data_file("src.bin", data)
    in_mode do
      moved, got = send_file_through(path, :tcp) { |f, dest| IO.double_splice(f, dest) }
      assert_equal data.bytesize, moved
      assert_equal [data.bytesize, sha256(data)], got
      assert_no_pending_operations
    end
  end

  # From a file, sendfile(2) starts at the file's position, after the bytes
  # Ruby already buffered: a file read partway goes out from where its
  # reader stopped, once, in order.
  def test_double_splice_a_file_read_partway
    data = random_bytes(15, 600 * KIB + 9)
    path = data_file("src.bin", data)
    in_mode do
      moved, got = send_file_through(path, :tcp) do |f, dest|
        assert_equal data.byteslice(0, 5), f.read(5) # Ruby buffers more than that
        IO.double_splice(f, dest).tap { assert f.eof? }
      end
      assert_equal data.bytesize - 5, moved
      assert_equal [data.bytesize - 5, sha256(data.byteslice(5..))], got
      assert_no_pending_operations
    end
  end

  def test_double_splice_file_to_unix_socket_with_small_chunks
    data = random_bytes(12, 300 * KIB + 1)
    path = data_file("src.bin", data)
    in_mode do
      moved, got = send_file_through(path, :unix) { |f, dest| IO.double_splice(f, dest, chunk_size: 4096) }
      assert_equal data.bytesize, moved
      assert_equal [data.bytesize, sha256(data)], got
      assert_no_pending_operations
    end
  end

  def test_splice_file_to_unix_socket_through_a_pipe
    data = random_bytes(13, 200 * KIB + 17)
    path = data_file("src.bin", data)
    in_mode do
      a, b = unix_pair
      reader = go { drain(b) }
      r, w = IO.pipe
      filler = go { File.open(path, "rb") { |f| IO.splice(f, w, -16 * KIB) }.tap { w.close } }
      moved = IO.splice(r, a, -16 * KIB)
      a.close_write
      assert_equal data.bytesize, filler.value
      assert_equal data.bytesize, moved
      assert_equal [data.bytesize, sha256(data)], reader.value
      assert_no_pending_operations
    ensure
      close_all(a, b, r, w)
    end
  end

  def test_double_splice_file_to_file_and_pipe_to_socket
    data = random_bytes(14, 150 * KIB + 3)
    path = data_file("src.bin", data)
    out = File.join(@dir, "out.bin")
    in_mode do
      moved = File.open(path, "rb") { |f| File.open(out, "wb") { |o| IO.double_splice(f, o) } }
      assert_equal data.bytesize, moved
      assert_equal sha256(data), file_sha256(out)

      r, w = IO.pipe
      a, b = unix_pair
      writer = go { w.write(data).tap { w.close } }
      reader = go { drain(b) }
      assert_equal data.bytesize, IO.double_splice(r, a)
      a.close_write
      assert_equal data.bytesize, writer.value
      assert_equal [data.bytesize, sha256(data)], reader.value
      assert_no_pending_operations
    ensure
      close_all(r, w, a, b)
    end
  end

  # ---- socket to socket ----------------------------------------------------------------------

  # client <-TCP-> proxy <-UNIX-> server: the request goes up through one
  # double_splice, the response down through the other, concurrently.
  def test_proxy_between_sockets_in_both_directions
    request = random_bytes(21, 300 * KIB + 1)
    response = random_bytes(22, 700 * KIB + 3)
    in_mode do
      client, front = tcp_pair
      back, server = unix_pair
      up = go { IO.double_splice(front, back).tap { back.close_write } }
      down = go { IO.double_splice(back, front).tap { front.close_write } }
      served = go do
        got = drain(server)
        server.write(response)
        server.close_write
        got
      end
      asked = go do
        client.write(request)
        client.close_write
        drain(client)
      end
      assert_equal [response.bytesize, sha256(response)], asked.value
      assert_equal [request.bytesize, sha256(request)], served.value
      assert_equal request.bytesize, up.value
      assert_equal response.bytesize, down.value
      assert_no_pending_operations
    ensure
      close_all(client, front, back, server)
    end
  end

  # ---- pipe to pipe and tee ------------------------------------------------------------------

  def test_pipe_to_pipe_until_end_of_input
    data = random_bytes(31, 200 * KIB + 5) # more than a pipe holds: back-pressure
    in_mode do
      r1, w1 = IO.pipe
      r2, w2 = IO.pipe
      writer = go { w1.write(data).tap { w1.close } }
      reader = go { drain(r2) }
      moved = IO.splice(r1, w2, -4096)
      w2.close
      assert_equal data.bytesize, moved
      assert_equal data.bytesize, writer.value
      assert_equal [data.bytesize, sha256(data)], reader.value
      assert_no_pending_operations
    ensure
      close_all(r1, w1, r2, w2)
    end
  end

  def test_splice_with_positive_maxlen_moves_at_most_maxlen_and_zero_at_end
    in_mode do
      r1, w1 = IO.pipe
      r2, w2 = IO.pipe
      w1.write("hello world")
      assert_equal 5, IO.splice(r1, w2, 5)
      assert_equal "hello", r2.read(5)
      assert_equal 6, r1.splice_to(w2, 100)
      assert_equal " world", r2.readpartial(100)
      w1.write("xyz")
      assert_equal 3, w2.splice_from(r1, 3)
      assert_equal "xyz", r2.readpartial(100)
      w1.close
      assert_equal 0, IO.splice(r1, w2, 100)
      assert_equal 0, IO.splice(r1, w2, -100)
      assert_no_pending_operations
    ensure
      close_all(r1, w1, r2, w2)
    end
  end

  def test_splice_waits_for_input_that_comes_later
    in_mode do
      r1, w1 = IO.pipe
      r2, w2 = IO.pipe
      late = go do
        sleep 0.05
        w1.write("late bytes")
      end
      assert_equal 10, IO.splice(r1, w2, 100)
      assert_equal 10, late.value
      assert_equal "late bytes", r2.readpartial(100)
      assert_no_pending_operations
    ensure
      close_all(r1, w1, r2, w2)
    end
  end

  def test_tee_duplicates_without_consuming
    in_mode do
      r1, w1 = IO.pipe
      r2, w2 = IO.pipe
      w1.write("abcdef")
      assert_equal 4, IO.tee(r1, w2, 4)
      assert_equal "abcd", r2.readpartial(100)
      assert_equal "abcdef", r1.readpartial(100) # still there
      late = go do
        sleep 0.05
        w1.write("xyz")
      end
      assert_equal 3, IO.tee(r1, w2, 100) # waited for the data
      late.value
      assert_equal "xyz", r2.readpartial(100)
      assert_equal "xyz", r1.readpartial(100)
      w1.close
      assert_equal 0, IO.tee(r1, w2, 100)
      assert_no_pending_operations
    ensure
      close_all(r1, w1, r2, w2)
    end
  end

  # ---- Ringspun::Pipe ------------------------------------------------------------------------------

  def test_ringspun_pipe_as_source_and_destination
    data = random_bytes(41, 500 * KIB + 9)
    path = data_file("src.bin", data)
    out = File.join(@dir, "out.bin")
    in_mode do
      pipe = Ringspun::Pipe.new
      drained = go { File.open(out, "wb") { |o| IO.splice(pipe, o, -32 * KIB) } }
      filled = File.open(path, "rb") { |f| IO.splice(f, pipe, -32 * KIB) }
      pipe.close
      assert_equal data.bytesize, filled
      assert_equal data.bytesize, drained.value
      assert_equal sha256(data), file_sha256(out)
      pipe.close_read

      # Pipe to Pipe with IO.splice, then double_splice out of a Pipe and
      # into one.
      p1 = Ringspun::Pipe.new
      p2 = Ringspun::Pipe.new(size: 256 * KIB)
      writer = go { p1.write(data).tap { p1.close } }
      middle = go { IO.splice(p1, p2, -64 * KIB).tap { p2.close } }
      a, b = unix_pair
      reader = go { drain(b) }
      assert_equal data.bytesize, IO.double_splice(p2, a)
      a.close_write
      assert_equal data.bytesize, writer.value
      assert_equal data.bytesize, middle.value
      assert_equal [data.bytesize, sha256(data)], reader.value

      p3 = Ringspun::Pipe.new
      chunks = go do
        got = []
        p3.read_loop(1000) { |c| got << c }
        got
      end
      assert_equal data.bytesize, File.open(path, "rb") { |f| IO.double_splice(f, p3) }
      p3.close
      got = chunks.value
      assert_operator got.map(&:bytesize).max, :<=, 1000
      assert_equal sha256(data), sha256(got.join)
      assert_no_pending_operations
    ensure
      [pipe, p1, p2, p3].compact.each { |x| x.close; x.close_read }
      close_all(a, b)
    end
  end

  def test_ringspun_pipe_round_trip_of_writes_and_reads
    in_mode do
      pipe = Ringspun::Pipe.new
      refute pipe.closed?
      assert_equal 4, pipe.write("ab", "cd")
      assert_same pipe, pipe << "ef"
      assert_equal "abcdef", pipe.readpartial(100)
      reader = go { pipe.read }
      pipe << "gh" << "ij"
      pipe.close
      assert pipe.closed?
      assert_equal "ghij", reader.value
      assert_raises(EOFError) { pipe.readpartial(1) }
      null = File.open(File::NULL, "wb")
      assert_equal 0, IO.splice(pipe, null, 10)
      assert_no_pending_operations
    ensure
      pipe&.close
      pipe&.close_read
      null&.close
    end
  end

  # ---- end of input ------------------------------------------------------------------------------------

  def test_empty_source_moves_nothing
    path = data_file("empty.bin", "")
    in_mode do
      a, b = unix_pair
      reader = go { drain(b) }
      assert_equal 0, File.open(path, "rb") { |f| IO.double_splice(f, a) }
      a.close_write
      assert_equal [0, sha256("")], reader.value

      r, w = IO.pipe
      assert_equal 0, File.open(path, "rb") { |f| IO.splice(f, w, -16 * KIB) }
      assert_equal 0, File.open(path, "rb") { |f| IO.splice(f, w, 16 * KIB) }
      w.close
      File.open(File.join(@dir, "out.bin"), "wb") do |o|
        assert_equal 0, IO.splice(r, o, 10)
        assert_equal 0, IO.splice(r, o, -10)
        assert_equal 0, IO.double_splice(r, o)
      end
      assert_equal 0, File.size(File.join(@dir, "out.bin"))
      assert_no_pending_operations
    ensure
      close_all(a, b, r, w)
    end
  end

  # ---- the article (seeds/004), with Ringspun::Pipe and Ringspun.spin ----------------------------------

  # The first version: a loop of 16 KiB splices, the inner loop making sure
  # everything that entered the pipe left it.
  def send_file_using_splice_loop(src, dest)
    pipe = Ringspun::Pipe.new
    loop do
      bytes_available = IO.splice(src, pipe, 2**14)
      break if bytes_available == 0

      while bytes_available > 0
        written = IO.splice(pipe, dest, bytes_available)
        bytes_available -= written
      end
    end
  ensure
    pipe&.close
    pipe&.close_read
  end

  def test_article_example_splice_loop
    data = random_bytes(51, 100 * KIB + 21)
    path = data_file("src.bin", data)
    in_mode do
      a, b = unix_pair
      reader = go { drain(b) }
      File.open(path, "rb") { |f| send_file_using_splice_loop(f, a) }
      a.close_write
      assert_equal [data.bytesize, sha256(data)], reader.value
      assert_no_pending_operations
    ensure
      close_all(a, b)
    end
  end

  def test_article_example_spin_and_pipe
    data = random_bytes(52, 400 * KIB + 33)
    path = data_file("src.bin", data)
    in_mode do
      a, b = tcp_pair
      reader = go { drain(b) }
      src = File.open(path, "rb")
      filled = nil
      # pipe = Ringspun::Pipe.new
      # Ringspun.spin { IO.splice(src, pipe, -2**14); pipe.close }
      # IO.splice(pipe, dest, -2**14)
      pipe = Ringspun::Pipe.new
      spun = article_spin do
        filled = IO.splice(src, pipe, -2**14)
      ensure
        pipe.close
      end
      moved = IO.splice(pipe, a, -2**14)
      spun.value # a Task or a Thread: waits for it, re-raises its error
      a.close_write
      assert_equal data.bytesize, filled
      assert_equal data.bytesize, moved
      assert_equal [data.bytesize, sha256(data)], reader.value
      assert_no_pending_operations
    ensure
      pipe&.close
      pipe&.close_read
      close_all(src, a, b)
    end
  end

  def test_article_example_double_splice
    data = random_bytes(53, 400 * KIB + 35)
    path = data_file("src.bin", data)
    in_mode do
      a, b = tcp_pair
      reader = go { drain(b) }
      File.open(path, "rb") { |src| IO.double_splice(src, a) }
      a.close_write
      assert_equal [data.bytesize, sha256(data)], reader.value
      assert_no_pending_operations
    ensure
      close_all(a, b)
    end
  end

  # ---- interruption and errors ----------------------------------------------------------------------------

  def test_timeout_mid_transfer_to_a_peer_that_never_reads_leaves_nothing_behind
    path = sparse_file(@dir, "big.bin", 64 * MIB)
    in_mode do
      fds = open_fd_count
      a, b = unix_pair
      src = File.open(path, "rb")
      cpu0 = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
      elapsed = self.elapsed do
        assert_raises(Timeout::Error) { Timeout.timeout(0.3) { IO.double_splice(src, a) } }
      end
      cpu = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) - cpu0
      assert_operator elapsed, :<, 2.0
      # Waiting on a full socket is a wait, not a loop: far less CPU than
      # the 0.3 s it lasted.
      assert_operator cpu, :<, 0.15, "#{cpu}s of CPU while the destination was full"
      assert_no_pending_operations

      r, w = IO.pipe # an idle source: the splice waits on src
      assert_raises(Timeout::Error) { Timeout.timeout(0.1) { IO.splice(r, a, -4096) } }
      assert_raises(Timeout::Error) { Timeout.timeout(0.1) { IO.double_splice(r, a) } }
      assert_no_pending_operations
      close_all(a, b, src, r, w)
      assert_equal fds, open_fd_count, "double_splice's private pipe left open"
    ensure
      close_all(a, b, src, r, w)
    end
  end


  # The destination is full when the Timeout strikes, so bytes sit in the
  # private pipe: they go back to the source, and calling again delivers
  # every byte in order (the source's IO may now buffer some of them).
  def test_double_splice_called_again_after_a_timeout_with_a_full_destination
    data = random_bytes(23, 600 * KIB + 7)
    in_mode do
      src_r, src_w = unix_pair
      dst_r, dst_w = IO.pipe
      feeder = go do
        src_w.write(data)
        src_w.close
      end
      assert_raises(Timeout::Error) { Timeout.timeout(0.2) { IO.double_splice(src_r, dst_w, chunk_size: 16 * KIB) } }
      reader = go { dst_r.read }
      rest = IO.double_splice(src_r, dst_w, chunk_size: 16 * KIB)
      dst_w.close
      out = reader.value
      feeder.value
      assert_equal sha256(data), sha256(out), "#{out.bytesize} of #{data.bytesize} bytes came out"
      assert_operator rest, :<, data.bytesize
      assert_no_pending_operations
    ensure
      close_all(src_r, src_w, dst_r, dst_w)
    end
  end
  def test_peer_closing_mid_transfer_raises_promptly
    path = sparse_file(@dir, "big.bin", 64 * MIB)
    %i[unix tcp].each do |kind|
      in_mode do
        a, b = kind == :unix ? unix_pair : tcp_pair
        closer = go do
          b.readpartial(64 * KIB)
          b.close
        end
        error = nil
        elapsed = self.elapsed do
          error = assert_raises(Errno::EPIPE, Errno::ECONNRESET) do
            File.open(path, "rb") { |f| IO.double_splice(f, a) }
          end
        end
        closer.value
        assert_operator elapsed, :<, 2.0, "#{kind}: took #{elapsed}s"
        assert_match(/double_splice: dest/, error.message)
        assert_no_pending_operations
      ensure
        close_all(a, b)
      end
    end
  end

  def test_splice_to_a_closed_peer_raises_naming_dest
    in_mode do
      a, b = unix_pair
      b.close
      r, w = IO.pipe
      w.write("x" * 1000)
      error = assert_raises(Errno::EPIPE, Errno::ECONNRESET) { IO.splice(r, a, 1000) }
      assert_match(/splice: dest/, error.message)
      w.close
      error = assert_raises(Errno::EPIPE, Errno::ECONNRESET) { IO.double_splice(r, a) }
      assert_match(/double_splice: dest/, error.message)
      assert_no_pending_operations
    ensure
      close_all(a, b, r, w)
    end
  end

  # ---- GC ------------------------------------------------------------------------------------------------

  # Small transfers under GC.stress, and GC.compact between them, with the
  # reading task alive across the compaction.
  def test_under_gc_stress_and_compaction
    data = random_bytes(61, 64 * KIB + 3)
    path = data_file("src.bin", data)
    in_mode do
      3.times do |i|
        GC.compact
        a, b = unix_pair
        gone, peer = unix_pair # an error path too: a destination whose peer is gone
        peer.close
        reader = go { drain(b) }
        error = nil
        moved = File.open(path, "rb") do |f|
          GC.stress = true
          n = IO.double_splice(f, a)
          f.rewind
          begin
            IO.double_splice(f, gone) if i.zero? # raising under GC.stress is slow
          rescue SystemCallError => e
            error = e
          end
          n
        ensure
          GC.stress = false
        end
        a.close_write
        GC.compact
        assert_equal data.bytesize, moved, "round #{i}"
        assert_includes [Errno::EPIPE, Errno::ECONNRESET], error.class, "round #{i}" if i.zero?
        assert_equal [data.bytesize, sha256(data)], reader.value, "round #{i}"
      ensure
        GC.stress = false
        close_all(a, b, gone, peer)
      end
      assert_no_pending_operations
    end
  end
end

RingspunTest::PrimitiveModes.define("TestSplice", SpliceContract)

# More than 4 GiB in one call: the counts are 64-bit. A sparse file on tmpfs
# reads as zeros without filling memory, so this takes ~0.1 s a call; it runs
# in two modes only (native io_uring and no scheduler), per the test plan.
module SpliceHugeContract
  include RingspunTest::SpliceZstreamSupport

  HUGE = (4 * GIB) + 12_345

  def test_more_than_4_gib_from_a_sparse_file_returns_the_exact_count
    dir = Dir.mktmpdir("ringspun-sparse", sparse_dir)
    path = sparse_file(dir, "huge.bin", HUGE)
    in_mode do
      moved = File.open(path, "rb") { |f| File.open(File::NULL, "wb") { |null| IO.double_splice(f, null) } }
      assert_equal HUGE, moved

      pipe = Ringspun::Pipe.new(size: MIB)
      null = File.open(File::NULL, "wb")
      drained = go { IO.splice(pipe, null, -MIB) }
      filled = File.open(path, "rb") { |f| IO.splice(f, pipe, -MIB) }
      pipe.close
      assert_equal HUGE, filled
      assert_equal HUGE, drained.value
      assert_no_pending_operations
    ensure
      pipe&.close
      pipe&.close_read
      null&.close
    end
  ensure
    FileUtils.rm_rf(dir) if dir
  end
end

TestSpliceIoUring.include(SpliceHugeContract)
TestSpliceBlocking.include(SpliceHugeContract)

# Many transfers in one Ringspun.run: only in Ringspun's own modes.
module SpliceManyContract
  include RingspunTest::SpliceZstreamSupport

  COPIES = 1000

  # 1,000 concurrent double_splice copies of 1 MiB each, socket pair to
  # socket pair; each copy's bytes are distinct (an 8-byte trailer holds its
  # number) and hashed on arrival.
  def test_thousand_concurrent_double_splice_copies_of_one_mib
    base = random_bytes(71, MIB - 8)
    base_digest = OpenSSL::Digest::SHA256.new.update(base)
    sockets = []
    in_mode do
      readers = Array.new(COPIES) do |i|
        src_w, src_r = unix_pair
        dst_w, dst_r = unix_pair
        sockets.push(src_w, src_r, dst_w, dst_r)
        go do
          src_w.write(base)
          src_w.write([i].pack("Q>"))
          src_w.close_write
        end
        go { IO.double_splice(src_r, dst_w).tap { dst_w.close_write } }
        go { drain(dst_r) }
      end
      readers.each_with_index do |reader, i|
        expected = base_digest.dup.update([i].pack("Q>")).hexdigest
        assert_equal [MIB, expected], reader.value, "copy #{i}"
      end
      assert_no_pending_operations
    ensure
      close_all(sockets)
    end
  end

  # A thousand double_splice fibers waiting on idle sockets must not cost a
  # thousand threads (io_uring would run a waiting IORING_OP_SPLICE in an
  # io-wq worker); then all of them finish when data flows.
  def test_thousand_idle_double_splices_add_at_most_32_threads_then_finish
    sockets = []
    in_mode do
      before = task_count
      pairs = Array.new(COPIES) do
        src = unix_pair
        dst = unix_pair
        sockets.concat(src).concat(dst)
        [src, dst]
      end
      copies = pairs.map { |(_, src_r), (dst_w, _)| go { IO.double_splice(src_r, dst_w).tap { dst_w.close_write } } }
      sleep 0.2 # every copy is parked on its idle source by now
      peak = Array.new(5) do
        sleep 0.02
        task_count
      end.max
      assert_operator peak - before, :<=, 32, "threads: #{before} before, #{peak} with 1,000 idle copies"

      readers = pairs.each_with_index.map do |((src_w, _), (_, dst_r)), i|
        src_w.write("copy #{i}\n" * 100)
        src_w.close_write
        go { dst_r.read }
      end
      readers.each_with_index { |r, i| assert_equal "copy #{i}\n" * 100, r.value }
      copies.each_with_index { |c, i| assert_equal ("copy #{i}\n" * 100).bytesize, c.value }
      assert_no_pending_operations
    ensure
      close_all(sockets)
    end
  end
end

TestSpliceIoUring.include(SpliceManyContract)
TestSpliceEpoll.include(SpliceManyContract)

# Argument checks and errors that do not depend on the mode.
class TestSpliceArguments < RingspunTest::Case
  include RingspunTest::SpliceZstreamSupport

  def setup
    super
    @dir = Dir.mktmpdir("ringspun-splice-args")
    @file = File.join(@dir, "src.bin")
    File.binwrite(@file, "0123456789")
    @ios = []
  end

  def teardown
    close_all(@ios)
    super
  ensure
    FileUtils.rm_rf(@dir) if @dir
  end

  def keep(*ios)
    @ios.concat(ios)
    ios.size == 1 ? ios.first : ios
  end

  def test_maxlen_zero_is_an_argument_error
    r, w = keep(*IO.pipe)
    assert_raises(ArgumentError) { IO.splice(r, w, 0) }
    assert_raises(ArgumentError) { IO.tee(r, w, 0) }
    assert_raises(ArgumentError) { r.splice_to(w, 0) }
    assert_raises(ArgumentError) { w.splice_from(r, 0) }
  end

  def test_neither_side_a_pipe_is_einval_naming_the_call
    src = keep(File.open(@file, "rb"))
    a, = keep(*unix_pair)
    error = assert_raises(Errno::EINVAL) { IO.splice(src, a, 10) }
    assert_equal "Invalid argument - splice: neither src nor dest is a pipe", error.message
    error = assert_raises(Errno::EINVAL) { src.splice_to(a, -10) }
    assert_equal "Invalid argument - splice: neither src nor dest is a pipe", error.message
  end

  def test_tee_needs_two_pipes
    src = keep(File.open(@file, "rb"))
    r, w = keep(*IO.pipe)
    assert_raises(Errno::EINVAL) { IO.tee(src, w, 10) }
    a, = keep(*unix_pair)
    assert_raises(Errno::EINVAL) { IO.tee(r, a, 10) }
  end

  def test_closed_io_is_an_io_error
    r, w = keep(*IO.pipe)
    closed = File.open(@file, "rb")
    closed.close
    assert_raises(IOError) { IO.splice(closed, w, 10) }
    assert_raises(IOError) { IO.splice(r, closed, 10) }
    assert_raises(IOError) { IO.double_splice(closed, w) }
    assert_raises(IOError) { IO.double_splice(r, closed) }
    assert_raises(IOError) { IO.tee(closed, w, 10) }

    pipe = Ringspun::Pipe.new
    pipe.close
    src = keep(File.open(@file, "rb"))
    assert_raises(IOError) { IO.splice(src, pipe, 10) }   # its write end is closed
    assert_raises(IOError) { IO.double_splice(src, pipe) }
    pipe.close_read
    assert_raises(IOError) { IO.splice(pipe, w, 10) }     # its read end too
  end

  def test_other_types_are_type_errors
    r, w = keep(*IO.pipe)
    ["path", nil, 1.5, :sym, Object.new, StringIO.new("data")].each do |bad|
      assert_raises(TypeError, bad.inspect) { IO.splice(bad, w, 10) }
      assert_raises(TypeError, bad.inspect) { IO.splice(r, bad, 10) }
      assert_raises(TypeError, bad.inspect) { IO.tee(bad, w, 10) }
      assert_raises(TypeError, bad.inspect) { IO.double_splice(bad, w) }
      assert_raises(TypeError, bad.inspect) { IO.double_splice(r, bad) }
    end
  end

  def test_double_splice_chunk_size_must_be_positive
    r, w = keep(*IO.pipe)
    assert_raises(ArgumentError) { IO.double_splice(r, w, chunk_size: 0) }
    assert_raises(ArgumentError) { IO.double_splice(r, w, chunk_size: -1) }
    assert_raises(ArgumentError) { IO.double_splice(r, w, chunk: 10) }
  end

  def test_wrong_direction_is_ebadf_naming_the_side
    r, w = keep(*IO.pipe)
    ro = keep(File.open(@file, "rb"))
    error = assert_raises(Errno::EBADF) { IO.splice(w, ro, 10) }
    assert_match(/splice: src/, error.message)
    error = assert_raises(Errno::EBADF) { IO.splice(r, ro, 10) }
    assert_match(/splice: dest/, error.message)
    error = assert_raises(Errno::EBADF) { IO.double_splice(r, ro) }
    assert_match(/double_splice: dest/, error.message)
  end

  def test_integer_fds_are_accepted
    src = keep(File.open(@file, "rb"))
    r, w = keep(*IO.pipe)
    assert_equal 10, IO.splice(src.fileno, w.fileno, -4)
    w.close
    assert_equal "0123456789", r.read
    src.rewind
    out = keep(File.open(File.join(@dir, "out.bin"), "wb"))
    assert_equal 10, IO.double_splice(src.fileno, out.fileno)
    assert_equal "0123456789", File.binread(File.join(@dir, "out.bin"))
  end

  def test_an_unused_integer_fd_is_ebadf
    r, w = keep(*IO.pipe)
    unused = 19_999
    skip "fd #{unused} is in use" if File.exist?("/proc/self/fd/#{unused}")
    assert_raises(Errno::EBADF) { IO.splice(unused, w, 10) }
    assert_raises(Errno::EBADF) { IO.splice(r, unused, 10) }
  end

  def test_a_delegator_such_as_tempfile_is_unwrapped
    tmp = Tempfile.new("ringspun", @dir)
    tmp.binmode
    tmp.write("tempfile bytes")
    tmp.flush
    tmp.rewind
    r, w = keep(*IO.pipe)
    assert_equal 14, IO.splice(tmp, w, -1024)
    w.close
    assert_equal "tempfile bytes", r.read
    tmp.rewind
    out = Tempfile.new("ringspun-out", @dir)
    assert_equal 14, IO.double_splice(tmp, out)
    assert_equal "tempfile bytes", File.binread(out.path)
  ensure
    tmp&.close!
    out&.close!
  end

  # An SSLSocket answers to_io with its TCP socket: splicing there would put
  # plaintext on the wire. It is refused, and nothing reaches the wire.
  def test_an_ssl_socket_is_refused_never_unwrapped
    client, server, raw_client, raw_server = ssl_pair
    keep(client, server, raw_client, raw_server)
    src = keep(File.open(@file, "rb"))
    r, w = keep(*IO.pipe)
    w.write("secret")
    [
      -> { IO.splice(r, client, 10) },
      -> { IO.splice(client, w, 10) },
      -> { r.splice_to(client, -10) },
      -> { IO.double_splice(src, client) },
      -> { IO.double_splice(client, w) },
      -> { IO.tee(r, client, 10) }
    ].each_with_index do |call, i|
      error = assert_raises(ArgumentError, "call #{i}") { call.call }
      assert_match(/TLS/, error.message, "call #{i}")
    end
    assert_nil raw_server.wait_readable(0.05), "bytes reached the wire around TLS"
    assert_equal "secret", r.readpartial(100) # and nothing was taken
    # The TLS pair still works.
    client.write("through TLS")
    assert_equal "through TLS", server.readpartial(100)
  end
end

# Ringspun::Pipe's own methods, where the mode does not matter.
class TestRingspunPipe < RingspunTest::Case
  def test_size_and_capacity
    pipe = Ringspun::Pipe.new
    assert_equal 65_536, pipe.size
    pipe.size = 1024 * 1024
    assert_equal 1024 * 1024, pipe.size
    assert_raises(ArgumentError) { pipe.size = 0 }
    assert_raises(ArgumentError) { pipe.size = -4096 }
    sized = Ringspun::Pipe.new(size: 256 * 1024)
    assert_equal 256 * 1024, sized.size
  ensure
    [pipe, sized].compact.each { |x| x.close; x.close_read }
  end

  def test_close_is_idempotent_and_ends_are_cloexec
    pipe = Ringspun::Pipe.new
    [pipe.read_io, pipe.write_io].each do |io|
      assert io.close_on_exec?
      assert_equal Encoding::BINARY, io.external_encoding if io.equal?(pipe.read_io)
    end
    pipe.close
    pipe.close
    assert pipe.closed?
    assert pipe.write_io.closed?
    refute pipe.read_io.closed?
    pipe.close_read
    pipe.close_read
    assert pipe.read_io.closed?
  end

  def test_read_and_read_loop_after_close
    pipe = Ringspun::Pipe.new
    pipe << "one," << "two"
    pipe.close
    chunks = []
    assert_same pipe, pipe.read_loop(2) { |c| chunks << c }
    assert_equal "one,two", chunks.join
    assert_operator chunks.map(&:bytesize).max, :<=, 2
    assert_equal "", pipe.read
  ensure
    pipe&.close_read
  end
end

# Bytes an IO holds in Ruby's own buffers belong to the stream, as they do
# for IO.copy_stream: what a #gets read ahead of the line it returned must
# still be moved, and what a #write left unflushed must come first.
class TestSpliceRubyBuffers < RingspunTest::Case
  include RingspunTest::SpliceZstreamSupport

  def setup
    super
    @dir = Dir.mktmpdir("ringspun-splice-buffers")
    @path = File.join(@dir, "src.txt")
    File.binwrite(@path, "first line\n#{'rest ' * 10}")
  end

  def teardown
    super
  ensure
    FileUtils.rm_rf(@dir)
  end

  def test_double_splice_after_gets_moves_what_ruby_read_ahead
    a, b = unix_pair
    a.write("line\nbody bytes")
    a.close_write
    out = File.join(@dir, "out.bin")
    assert_equal "line\n", b.gets
    moved = File.open(out, "wb") { |o| IO.double_splice(b, o) }
    assert_equal "body bytes", File.binread(out)
    assert_equal 10, moved
  ensure
    close_all(a, b)
  end

  def test_splice_after_gets_moves_what_ruby_read_ahead
    r, w = IO.pipe
    moved = File.open(@path, "rb") do |f|
      assert_equal "first line\n", f.gets
      IO.splice(f, w, -4096)
    end
    w.close
    assert_equal "rest " * 10, r.read
    assert_equal 50, moved
  ensure
    close_all(r, w)
  end

  def test_splice_after_an_unflushed_write_keeps_the_order
    r, w = IO.pipe
    w.write("spliced")
    w.close
    out = File.join(@dir, "out.bin")
    File.open(out, "wb") do |o|
      o.write("HEAD:")
      IO.splice(r, o, -4096)
    end
    assert_equal "HEAD:spliced", File.binread(out)
  ensure
    close_all(r, w)
  end
end
