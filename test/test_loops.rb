# frozen_string_literal: true

require_relative "test_helper"
require_relative "support/primitive_modes"
require_relative "support/stream_peers"
require "msgpack"
require "etc"

# IO#read_loop, BasicSocket#recv_loop and IO#feed_loop (issue 5, "Tests"),
# written once and run in the four modes of RingspunTest::PrimitiveModes:
# TestLoopsIoUring, TestLoopsEpoll, TestLoopsBlocking, TestLoopsAsync.
module LoopsContract
  include RingspunTest

  SP = RingspunTest::StreamPeers

  # Sizes of the trickling writer's pieces (cycled): tiny ones, both sides
  # of a page and of the default maxlen (64 KiB), and bigger ones.
  PIECES = [1, 2, 3, 7, 64, 100, 1000, 4095, 4096, 4097, 65_535, 65_536, 65_537, 131_072, 5].freeze

  # Which loops each kind of stream is read with.
  # A loop named with _reuse yields one reused String (read_loop's buffer
  # argument, feed_loop's default), which the test's block copies.
  LOOPS = { pipe: %i[read_loop feed_loop read_loop_reuse feed_loop_reuse],
            unix: %i[read_loop recv_loop feed_loop read_loop_reuse recv_loop_reuse feed_loop_reuse],
            tcp: %i[read_loop recv_loop feed_loop read_loop_reuse recv_loop_reuse feed_loop_reuse] }.freeze

  # A feed_loop receiver whose method hands each chunk to the block given
  # to feed_loop, so a feed_loop test reads like a read_loop one.
  class Forwarder
    attr_reader :calls

    def initialize
      @calls = 0
    end

    def push(chunk)
      @calls += 1
      yield chunk
    end
  end

  # ---- helpers -----------------------------------------------------------------

  # Runs the loop `meth` over io with the block; maxlen nil means the default.
  # A _reuse loop hands the block a copy of each chunk, and checks that
  # every chunk was the one reused binary String.
  def loop_over(io, meth, maxlen = nil, &block)
    case meth
    when :read_loop, :recv_loop
      maxlen ? io.public_send(meth, maxlen, &block) : io.public_send(meth, &block)
    when :feed_loop
      opts = { reuse: false, maxlen: maxlen }.compact
      io.feed_loop(Forwarder.new, :push, **opts, &block)
    when :read_loop_reuse, :recv_loop_reuse, :feed_loop_reuse then loop_reusing(io, meth, maxlen, &block)
    else raise ArgumentError, meth.inspect
    end
  end

  def loop_reusing(io, meth, maxlen, &block)
    buffer = +"the caller's buffer"
    seen = nil
    copying = proc do |c|
      seen ||= c
      assert_same seen, c, "#{meth}: the same String every time"
      assert_equal Encoding::ASCII_8BIT, c.encoding
      block.call(c.dup)
    end
    if meth == :feed_loop_reuse
      io.feed_loop(Forwarder.new, :push, **{ maxlen: maxlen }.compact, &copying)
    else
      ret = io.public_send(meth.to_s.delete_suffix("_reuse"), maxlen || 65_536, buffer, &copying)
      assert_same buffer, seen if seen
      ret
    end
  end

  def first_difference(want, got)
    n = [want.bytesize, got.bytesize].min
    i = (0...n).find { |k| want.getbyte(k) != got.getbyte(k) }
    i || n
  end

  # The same bytes, in order; the message says where they part.
  def assert_same_bytes(want, got, what = "bytes")
    return pass if want.b == got.b

    flunk "#{what}: expected #{want.bytesize} bytes, got #{got.bytesize}; first difference at byte #{first_difference(want.b, got.b)}"
  end

  # Every chunk: a new binary String of 1..maxlen bytes; all of them
  # together: exactly the expected bytes.
  def assert_chunks(chunks, want, maxlen)
    chunks.each_with_index do |c, i|
      assert_equal Encoding::ASCII_8BIT, c.encoding, "chunk #{i}: encoding"
      assert_operator c.bytesize, :>, 0, "chunk #{i}: empty"
      assert_operator c.bytesize, :<=, maxlen, "chunk #{i}: longer than maxlen #{maxlen}"
    end
    assert_equal chunks.size, chunks.map(&:object_id).uniq.size, "one String yielded twice"
    assert_same_bytes want, chunks.join
  end

  # Reads what is left (binary) after a loop ended early.
  def rest_of(io)
    io.read.b
  end

  # ---- every byte once, in order ---------------------------------------------------

  LOOPS.each do |kind, meths|
    meths.each do |meth|
      define_method("test_#{meth}_over_#{kind}_delivers_every_byte_once_in_order_from_a_trickling_writer") do
        src = SP.bytes(400_000, 11)
        in_mode do
          SP.with_pair(kind) do |r, w|
            writer = go { SP.trickle(w, src, PIECES) }
            chunks = []
            ret = loop_over(r, meth) { |c| chunks << c }
            assert_same r, ret, "#{meth} returns the IO"
            assert_equal src.bytesize, writer.value
            assert_chunks chunks, src, 65_536
            assert_no_pending_operations
          end
        end
      end

      define_method("test_#{meth}_over_#{kind}_honours_a_small_maxlen_down_to_1") do
        in_mode do
          [[1000, 50_000, [333, 4096, 1, 10_000, 77]], [1, 3000, [1, 500, 7, 1024]]].each do |maxlen, size, pieces|
            src = SP.bytes(size, 12 + maxlen)
            SP.with_pair(kind) do |r, w|
              writer = go { SP.trickle(w, src, pieces) }
              chunks = []
              loop_over(r, meth, maxlen) { |c| chunks << c }
              writer.value
              assert_operator chunks.size, :>=, size / maxlen, "#{size} bytes in chunks of at most #{maxlen}"
              assert_chunks chunks, src, maxlen
            end
          end
        end
      end

      # All the data is there (and the writer closed) before the loop starts,
      # so on io_uring the read-ahead has bytes in hand when the block breaks:
      # they must go back to the IO.
      define_method("test_#{meth}_over_#{kind}_break_mid_loop_then_read_gets_the_rest") do
        src = SP.bytes(60_000, 14)
        in_mode do
          SP.with_pair(kind) do |r, w|
            w.write(src)
            w.close
            got = +"".b
            n = 0
            ret = loop_over(r, meth, 4096) do |c|
              got << c
              n += 1
              break :stopped if n == 3
            end
            assert_equal :stopped, ret, "break's value is the loop's value"
            assert_no_pending_operations "a read-ahead left in flight after break"
            assert_operator got.bytesize, :<=, 3 * 4096
            assert_same_bytes src, got + rest_of(r), "bytes before break + IO#read after it"
          end
        end
      end

      # Nothing more to read when the block breaks: the read-ahead is waiting
      # and must be cancelled, and later bytes must reach the following read.
      define_method("test_#{meth}_over_#{kind}_break_while_the_next_read_waits") do
        first = SP.bytes(4096, 15)
        later = SP.bytes(70_000, 16)
        in_mode do
          SP.with_pair(kind) do |r, w|
            w.write(first)
            got = +"".b
            loop_over(r, meth, 4096) do |c|
              got << c
              break if got.bytesize >= 4096
            end
            assert_no_pending_operations "the waiting read-ahead was not cancelled"
            assert_same_bytes first, got
            writer = go { SP.trickle(w, later, [1000, 30_000], pause: 0.001) }
            assert_same_bytes later, rest_of(r), "bytes written after break"
            writer.value
            assert_no_pending_operations
          end
        end
      end

      define_method("test_#{meth}_over_#{kind}_exception_in_block_propagates_and_leaves_the_rest_readable") do
        src = SP.bytes(60_000, 17)
        in_mode do
          SP.with_pair(kind) do |r, w|
            w.write(src)
            w.close
            got = +"".b
            boom = MyError.new("chunk 2")
            raised = assert_raises(MyError) do
              loop_over(r, meth, 4096) do |c|
                got << c
                raise boom if got.bytesize > 4096
              end
            end
            assert_same boom, raised, "the block's own exception comes out"
            assert_no_pending_operations "an operation left in flight after an exception"
            assert_same_bytes src, got + rest_of(r)
          end
        end
      end

      define_method("test_#{meth}_over_#{kind}_at_end_of_input_yields_nothing_and_returns_the_io") do
        in_mode do
          SP.with_pair(kind) do |r, w|
            w.close
            yielded = []
            assert_same r, loop_over(r, meth) { |c| yielded << c }
            assert_same r, loop_over(r, meth) { |c| yielded << c }, "a second loop at end of input"
            assert_empty yielded
            assert_no_pending_operations
          end
        end
      end

      # Ruby's own read buffer (filled by gets) is part of the stream.
      define_method("test_#{meth}_over_#{kind}_starts_with_the_bytes_ruby_already_buffered") do
        body = SP.bytes(100_000, 18)
        in_mode do
          SP.with_pair(kind) do |r, w|
            writer = go { SP.trickle(w, "header line\n#{body}".b, [50_000, 20_000], pause: 0.001) }
            assert_equal "header line\n", r.gets
            chunks = []
            loop_over(r, meth) { |c| chunks << c }
            writer.value
            assert_same_bytes body, chunks.join
          end
        end
      end
    end
  end

  # maxlen bounds every chunk, the first one (from Ruby's buffer) included.
  def test_maxlen_bounds_the_bytes_ruby_already_buffered_too
    body = SP.bytes(3000, 19)
    in_mode do
      { pipe: :read_loop, unix: :recv_loop, tcp: :feed_loop }.each do |kind, meth|
        SP.with_pair(kind) do |r, w|
          w.write("header line\n#{body}".b)
          w.close
          assert_equal "header line\n", r.gets
          chunks = []
          loop_over(r, meth, 100) { |c| chunks << c }
          assert_chunks chunks, body, 100
        end
      end
    end
  end

  # ---- errors ---------------------------------------------------------------------

  # The peer resets the connection after sending "abc": the bytes arrive,
  # then the loop raises ECONNRESET naming itself.
  LOOPS[:tcp].each do |meth|
    define_method("test_#{meth}_raises_econnreset_when_the_peer_resets") do
      in_mode do
        SP.with_pair(:tcp) do |r, w|
          w.write("abc")
          w.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii"))
          w.close
          got = []
          e = assert_raises(Errno::ECONNRESET) { loop_over(r, meth) { |c| got << c } }
          assert_includes e.message, meth.to_s.delete_suffix("_reuse")
          assert_equal ["abc"], got
          assert_no_pending_operations
        end
      end
    end
  end

  # Timeout interrupts a loop that waits for data: it raises Timeout::Error,
  # leaves nothing in flight, and loses no byte written afterwards.
  LOOPS.each do |kind, meths|
    meths.each do |meth|
      define_method("test_#{meth}_over_#{kind}_interrupted_by_timeout_loses_no_byte") do
        first = SP.bytes(1000, 26)
        later = SP.bytes(90_000, 27)
        in_mode do
          SP.with_pair(kind) do |r, w|
            w.write(first)
            got = +"".b
            assert_raises(Timeout::Error) do
              Timeout.timeout(0.05) { loop_over(r, meth) { |c| got << c } }
            end
            assert_no_pending_operations "an operation left in flight after Timeout"
            assert_same_bytes first, got
            writer = go { SP.trickle(w, later, [4096, 50_000], pause: 0.001) }
            assert_same_bytes later, rest_of(r), "bytes written after the timeout"
            writer.value
          end
        end
      end
    end
  end

  def test_maxlen_must_be_positive
    in_mode do
      SP.with_pair(:unix) do |r, _w|
        [0, -1].each do |bad|
          assert_raises(ArgumentError) { r.read_loop(bad) { flunk "yielded" } }
          assert_raises(ArgumentError) { r.recv_loop(bad) { flunk "yielded" } }
          assert_raises(ArgumentError) { r.feed_loop(Forwarder.new, :push, maxlen: bad) { flunk "yielded" } }
        end
      end
    end
  end

  def test_a_write_only_or_closed_io_raises_ioerror
    in_mode do
      SP.with_pair(:pipe) do |r, w|
        assert_raises(IOError) { w.read_loop { flunk "yielded" } }
        assert_raises(IOError) { w.feed_loop(->(_) { flunk "fed" }) }
        r.close
        assert_raises(IOError) { r.read_loop { flunk "yielded" } }
      end
    end
  end

  # ---- feed_loop ------------------------------------------------------------------

  def test_feed_loop_calls_call_by_default_and_returns_the_io
    src = SP.bytes(200_000, 21)
    in_mode do
      SP.with_pair(:unix) do |r, w|
        writer = go { SP.trickle(w, src, PIECES) }
        chunks = []
        assert_same r, r.feed_loop(->(c) { chunks << c }, reuse: false)
        writer.value
        assert_chunks chunks, src, 65_536
      end
    end
  end

  def test_feed_loop_passes_the_block_to_the_receiver_method_and_honours_maxlen
    src = SP.bytes(20_000, 22)
    in_mode do
      SP.with_pair(:pipe) do |r, w|
        writer = go { SP.trickle(w, src, [7000, 13_000]) }
        fwd = Forwarder.new
        chunks = []
        assert_same r, r.feed_loop(fwd, "push", maxlen: 512) { |c| chunks << c.dup }
        writer.value
        assert_equal chunks.size, fwd.calls
        assert_chunks chunks, src, 512
      end
    end
  end

  # ---- one reused String --------------------------------------------------------------

  # The block gets the caller's String each time, overwritten by the next
  # read; a reference the block keeps sees the last chunk, never freed
  # memory; a copy it made (even a shared one: String#dup) keeps its bytes.
  def test_read_loop_reuses_the_buffer_given_and_overwrites_it
    src = SP.bytes(300_000, 23)
    in_mode do
      SP.with_pair(:unix) do |r, w|
        writer = go { SP.trickle(w, src, [70_000, 5000, 100_000, 1]) }
        buffer = +"caller's"
        kept = nil
        copies = []
        overwritten = []
        assert_same r, r.read_loop(65_536, buffer) { |c|
          kept ||= c
          overwritten << (kept == c)
          copies << c.dup
        }
        writer.value
        assert_same buffer, kept
        assert_equal Encoding::ASCII_8BIT, buffer.encoding
        assert overwritten.all?, "a reference kept from the first chunk holds the current one"
        assert_equal "", kept, "at the end of input the buffer is empty, as read(n, buf) leaves it"
        assert_same_bytes src, copies.join
        assert_operator copies.size, :>, 1
      end
    end
  end

  def test_feed_loop_reuses_one_string_unless_told_not_to
    in_mode do
      [[{}, 1], [{ reuse: true }, 1], [{ reuse: false }, 3]].each do |opts, strings|
        SP.with_pair(:pipe) do |r, w|
          writer = go { SP.trickle(w, "a" * 30, [10], pause: 0.002) }
          ids = []
          r.feed_loop(->(c) { ids << c.object_id }, maxlen: 10, **opts)
          writer.value
          assert_equal [3, strings], [ids.size, ids.uniq.size], opts.inspect
        end
      end
    end
  end

  def test_the_reused_buffer_must_be_a_writable_string
    in_mode do
      SP.with_pair(:pipe) do |r, w|
        w.write("abc")
        assert_raises(FrozenError) { r.read_loop(10, "frozen".freeze) { flunk "yielded" } }
        assert_raises(TypeError) { r.read_loop(10, 42) { flunk "yielded" } }
        # Frozen by the block: the next read refuses to overwrite it.
        w.close
        assert_raises(FrozenError) { r.read_loop(1, +"") { |c| c.freeze } }
        assert_equal "bc", r.read
      end
    end
  end

  def test_feed_loop_exception_in_receiver_propagates
    in_mode do
      SP.with_pair(:unix) do |r, w|
        w.write("x" * 10)
        receiver = ->(_c) { raise MyError, "receiver failed" }
        e = assert_raises(MyError) { r.feed_loop(receiver) }
        assert_equal "receiver failed", e.message
        assert_no_pending_operations
      end
    end
  end

  LOOPS.each_key do |kind|
    define_method("test_feed_loop_over_#{kind}_into_a_msgpack_unpacker_yields_every_object") do
      objs = Array.new(3000) { |i| { "id" => i, "name" => "item #{i}", "tags" => %w[a b c].first(i % 4), "v" => i * 1.5 } }
      bytes = objs.map { |o| MessagePack.pack(o) }.join.b
      in_mode do
        SP.with_pair(kind) do |r, w|
          writer = go { SP.trickle(w, bytes, [1, 13, 4096, 999, 65_537]) }
          got = []
          assert_same r, r.feed_loop(MessagePack::Unpacker.new, :feed_each) { |o| got << o }
          writer.value
          assert_equal objs.size, got.size
          assert_equal objs, got
        end
      end
    end
  end

  # ---- GC pressure and compaction ------------------------------------------------------

  def test_loops_under_gc_stress_and_compaction
    src = SP.bytes(6000, 23)
    in_mode do
      %i[read_loop recv_loop feed_loop].each do |meth|
        SP.with_pair(:unix) do |r, w|
          w.write(src)
          w.close
          chunks = []
          begin
            GC.stress = true
            loop_over(r, meth, 3000) { |c| chunks << c }
          ensure
            GC.stress = false
          end
          assert_chunks chunks, src, 3000
        end
        SP.with_pair(:unix) do |r, w|
          w.write(src)
          w.close
          chunks = []
          loop_over(r, meth, 3000) do |c|
            chunks << c
            GC.compact
          end
          assert_chunks chunks, src, 3000
        end
      end
      assert_no_pending_operations
    end
  end

  # ---- many at once -------------------------------------------------------------------

  # Starts one reader task per pair, all waiting at once; then writes each
  # its message in two pieces with a pause between. Two fds per pair: 2,000
  # for 1,000 pairs, well under the 20,000 open-file limit.
  def many_loops(kind, meth, count)
    skip "#{count} concurrent loops need a fiber scheduler (not threads)" unless scheduled?

    in_mode do
      pairs = Array.new(count) { SP.pair(kind) }
      begin
        waiting = 0
        readers = pairs.map do |r, _w|
          go do
            got = +"".b
            waiting += 1
            loop_over(r, meth) { |c| got << c }
            got
          end
        end
        sleep 0.01 until waiting == count
        sleep 0.02
        if ringspun_scheduler
          assert_operator ringspun_scheduler.pending_operations, :>=, count, "every loop waits at once"
        end
        pairs.each_with_index { |(_r, w), i| w.write("#{i}:#{'a' * (i % 50)}|") }
        sleep 0.005
        pairs.each_with_index do |(_r, w), i|
          w.write("#{'b' * (i % 70)}:#{i}")
          w.close
        end
        readers.each_with_index do |t, i|
          assert_equal "#{i}:#{'a' * (i % 50)}|#{'b' * (i % 70)}:#{i}", t.value, "reader #{i}"
        end
        assert_no_pending_operations
      ensure
        pairs.flatten.each { |io| io.close unless io.closed? }
      end
    end
  end

  def test_a_thousand_concurrent_read_loops_over_pipes
    many_loops(:pipe, :read_loop, 1000)
  end

  def test_a_thousand_concurrent_recv_loops_over_unix_sockets
    many_loops(:unix, :recv_loop, 1000)
  end

  def test_a_thousand_concurrent_feed_loops_over_tcp
    many_loops(:tcp, :feed_loop, 1000)
  end

  # ---- multishot receive (io_uring) -------------------------------------------------------

  def test_recv_loop_on_io_uring_uses_the_buffer_ring
    skip "multishot receive is a Ringspun-on-io_uring path" unless mode == :io_uring

    in_mode do
      SP.with_pair(:unix) do |r, w|
        w.write("ping")
        w.close
        got = []
        r.recv_loop { |c| got << c }
        assert_equal ["ping"], got
        assert_includes Fiber.scheduler.features, :buf_ring, "kernel #{Etc.uname[:release]}: multishot receive with a buffer ring"
      end
    end
  end

  # The buffer ring is shared and bounded. One consumer sleeps in its
  # block (0.4 s) while its peer floods it with 8 MiB, more than
  # the ring holds; meanwhile another loop receives 100 KB. Returns the
  # other loop's [seconds, CPU seconds of the process meanwhile].
  def with_a_slow_neighbour
    flood = SP.bytes(8 * 1024 * 1024, 24)
    small = SP.bytes(100_000, 25)
    in_mode do
      SP.with_pair(:unix) do |slow_r, slow_w|
        SP.with_pair(:unix) do |fast_r, fast_w|
          flooder = go { SP.trickle(slow_w, flood, [65_536], pause: 0) }
          slow_got = +"".b
          slow = go do
            first = true
            slow_r.recv_loop do |c|
              slow_got << c
              if first
                first = false
                sleep 0.4
              end
            end
          end
          sleep 0.05 # the flood is in flight now
          cpu0 = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
          t0 = now
          feeder = go { SP.trickle(fast_w, small, [10_000], pause: 0.001) }
          fast_got = +"".b
          fast_r.recv_loop { |c| fast_got << c }
          took = now - t0
          cpu = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) - cpu0
          feeder.value
          assert_same_bytes small, fast_got, "the other loop"
          flooder.value
          slow.value
          assert_same_bytes flood, slow_got, "the slow loop"
          assert_no_pending_operations
          [took, cpu]
        end
      end
    end
  end

  def test_a_slow_consumer_does_not_stall_another_loop
    took, = with_a_slow_neighbour
    assert_operator took, :<, 0.25, "seconds the other loop took to receive 100 KB while a neighbour sleeps 0.4 s"
  end

  def test_nothing_spins_while_a_consumer_sleeps
    took, cpu = with_a_slow_neighbour
    assert_operator cpu, :<, 0.1, "CPU seconds burnt in #{took.round(3)} s of receiving 100 KB (a busy loop?)"
  end
end

RingspunTest::PrimitiveModes.define("TestLoops", LoopsContract)
