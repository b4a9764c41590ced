# frozen_string_literal: true

require "msgpack"
require "socket"
require "timeout"
require "zlib"
require_relative "stream_peers"

module RingspunTest
  # Fault injection for test/test_faults.rb (and the smoke run under the
  # seccomp launcher): every primitive as a uniform "transfer" from a source
  # stream to a destination stream, and a rig that feeds the source from one
  # task, drains the destination in another, and lets a test break either
  # side, interrupt the call, or cut the input short.
  #
  # Each task owns the end it works on and closes it itself; the rig closes
  # only the primitive's two ends, and only once the primitive has returned.
  # So no fd is ever closed while a fiber is parked on it (io_uring keeps
  # its own reference to the file, epoll silently forgets it: either way
  # the waiter would hang), and a waiter is always woken by its peer going
  # away instead.
  module Faults
    KIB = 1024

    # Raised into a helper task to stop it (see Task#stop).
    class Stopped < StandardError; end

    # Errors a writer sees when its reader went away: EPIPE, or ECONNRESET
    # when a TCP peer answered with a reset.
    PEER_GONE = [Errno::EPIPE, Errno::ECONNRESET].freeze

    # ---- tasks --------------------------------------------------------------------

    # A concurrent task: a fiber under a scheduler, a thread without one.
    # #result waits (through the scheduler, if any) and returns [:ok, value]
    # or [:error, exception]; #value re-raises; #stop raises Stopped into a
    # task still running and waits for it.
    class Task
      def initialize(&block)
        @done = Queue.new
        @started = false
        runner = proc do
          @started = true
          @done << [:ok, block.call]
        rescue Exception => e # rubocop:disable Lint/RescueException -- handed to #result
          @done << [:error, e]
        end
        @handle = Fiber.scheduler ? Fiber.schedule(&runner) : Thread.new(&runner)
      end

      def result
        return @result if @result

        if @handle.is_a?(Thread)
          begin
            @handle.join
          rescue Exception => e # rubocop:disable Lint/RescueException -- it died outside the runner
            @done << [:error, e] if @done.empty?
          end
        end
        @result = @done.pop
      end

      def value
        status, value = result
        raise value if status == :error

        value
      end

      def alive?
        @result.nil? && @done.empty? && @handle.alive?
      end

      # Raises exc into the task (wherever it is parked), then waits for it.
      # A thread is given the time to enter its block first: raised into
      # before that, it would die outside the block's rescue.
      def interrupt(exc = Stopped, message = "stopped")
        Thread.pass until @started || !@handle.alive?
        @handle.raise(exc, message) if alive?
        result
      end

      def stop
        interrupt(Stopped)
      end
    end

    # ---- streams --------------------------------------------------------------------

    # Closes a TCP socket with SO_LINGER 0: the kernel sends RST instead of
    # FIN and drops whatever was not sent yet.
    def self.reset(sock)
      sock.setsockopt(Socket::Option.linger(true, 0))
      sock.close
    end

    def self.close_quietly(*ios)
      ios.each { |io| io.close if io && !io.closed? }
    end

    # ---- the primitives as transfers --------------------------------------------------

    # name: the primitive (and the variant); src/dst: the stream kinds it
    # takes; pipe_side: one side must be a pipe (splice); encode: payload ->
    # the bytes the source carries; decode: what the destination got ->
    # payload; truncated: what a source cut short mid-stream gives, either
    # :prefix (the output is the decoded prefix that was fed) or the
    # exception classes; cut: where to cut the encoded input so the cut is
    # inside the stream (never on a boundary a decoder would accept);
    # call: (src, dst) -> runs the primitive.
    Spec = Struct.new(:name, :src, :dst, :pipe_side, :encode, :decode, :truncated, :cut, :call, keyword_init: true) do
      def kinds_ok?(src_kind, dst_kind)
        src.include?(src_kind) && dst.include?(dst_kind) && (!pipe_side || src_kind == :pipe || dst_kind == :pipe)
      end

      # Every allowed [src, dst] pair.
      def combos
        src.product(dst).select { |s, d| kinds_ok?(s, d) }
      end

      # One [src, dst] pair with the given side fixed (or nil).
      def combo(src_kind: nil, dst_kind: nil, index: 0)
        ok = combos.select { |s, d| (src_kind.nil? || s == src_kind) && (dst_kind.nil? || d == dst_kind) }
        ok.empty? ? nil : ok[index % ok.size]
      end

      def to_s
        name.to_s
      end
    end

    IDENTITY = ->(bytes) { bytes }
    HALF = ->(bytes) { bytes.bytesize / 2 }

    # A readpartial object over an IO (the "any object with readpartial"
    # source of the zlib primitives).
    class Reader
      def initialize(io)
        @io = io
      end

      def readpartial(maxlen, buf = nil)
        buf ? @io.readpartial(maxlen, buf) : @io.readpartial(maxlen)
      end
    end

    # A write object over an IO.
    class Writer
      def initialize(io)
        @io = io
      end

      def write(*strings)
        @io.write(*strings)
      end
    end

    module_function

    # payload split into MessagePack bin objects of varying sizes (the msgpack
    # gem packs them: an independent encoder).
    def msgpack_stream(payload)
      rng = Random.new(payload.bytesize)
      out = String.new(encoding: Encoding::BINARY)
      off = 0
      while off < payload.bytesize
        piece = payload.byteslice(off, 1 + rng.rand(3000))
        out << ::MessagePack.pack(piece)
        off += piece.bytesize
      end
      out
    end

    def msgpack_concat(bytes)
      out = String.new(encoding: Encoding::BINARY)
      ::MessagePack::Unpacker.new.feed_each(bytes) { |obj| out << obj }
      out
    end

    # Offset inside the middle object of a msgpack stream (inside its body,
    # so the stream never ends on an object boundary).
    def msgpack_cut(bytes)
      offsets = []
      pos = 0
      # Every object is a bin: a header, then its body.
      while pos < bytes.bytesize
        head = bytes.getbyte(pos)
        len, hl = case head
                  when 0xc4 then [bytes.getbyte(pos + 1), 2]
                  when 0xc5 then [bytes.byteslice(pos + 1, 2).unpack1("n"), 3]
                  when 0xc6 then [bytes.byteslice(pos + 1, 4).unpack1("N"), 5]
                  else raise ArgumentError, "not a bin object at #{pos}"
                  end
        offsets << [pos, hl, len]
        pos += hl + len
      end
      start, hl, len = offsets[offsets.size / 2]
      start + hl + [len / 2, len - 1].min
    end

    def chunked(payload)
      StreamPeers.chunked(StreamPeers.pieces(payload, 1000 + (payload.bytesize % 3000)))
    end

    def unchunk(body)
      StreamPeers.strict_unchunk(body).first
    end

    # A Ringspun::Pipe between two tasks: `into` fills it (in a task of its
    # own), `out_of` drains it here. An early exit stops the pump. When the
    # pump failed, its error is the one raised: it is the cause (a source
    # reset cuts the pipe's stream short, and the drain then sees a
    # truncated stream).
    def through_pipe(into, out_of)
      pipe = pump = nil
      begin
        # Without a scheduler Timeout raises from its own thread between any
        # two Ruby instructions: landing after the pipe was made and before
        # this begin, it left the read end open (seen once in the sanitizer
        # pass). The pipe is made with interruptions held until it exists;
        # the pump is not, as its thread would inherit the mask.
        Thread.handle_interrupt(Object => :never) { pipe = Ringspun::Pipe.new }
        pump = Task.new do
          into.call(pipe)
        ensure
          pipe.close
        end
        moved = out_of.call(pipe)
        pump.value
        moved
      rescue StandardError
        # The pump's failure is the cause of ours (it closed the pipe): give it
        # a moment to finish (a thread still in its ensure would lose the race).
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 2
        sleep 0.001 while pump&.alive? && Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
        status, cause = pump.result unless pump.nil? || pump.alive?
        raise cause if status == :error && !cause.is_a?(Stopped)

        raise
      ensure
        # Nested, so an interruption that lands in the first part (a
        # Timeout firing just as the drain returned) still closes both ends.
        begin
          pipe&.close_read
          pump&.stop
        ensure
          pipe&.close_read
          pipe&.close
        end
      end
    end

    def tee_through(src, dst)
      total = 0
      loop do
        n = IO.tee(src, dst, 16 * KIB)
        return total if n.zero?

        src.read(n) # tee copied these; now consume them
        total += n
      end
    end

    ALL = %i[pipe unix tcp].freeze
    SOCKETS = %i[unix tcp].freeze
    GZIP = ->(bytes) { Zlib.gzip(bytes) }
    GUNZIP = ->(bytes) { Zlib.gunzip(bytes.b) } # .b: see RingspunTest::Case#zlib_gunzip
    DEFLATE = ->(bytes) { Zlib::Deflate.deflate(bytes) }
    INFLATE = ->(bytes) { Zlib::Inflate.inflate(bytes.b) }
    BUF = [Zlib::BufError].freeze
    EOF = [EOFError].freeze

    SPECS = [
      Spec.new(name: :splice, src: ALL, dst: ALL, pipe_side: true, encode: IDENTITY, decode: IDENTITY,
               truncated: :prefix, cut: HALF, call: ->(s, d) { IO.splice(s, d, -16 * KIB) }),
      Spec.new(name: :tee, src: [:pipe], dst: [:pipe], encode: IDENTITY, decode: IDENTITY,
               truncated: :prefix, cut: HALF, call: ->(s, d) { tee_through(s, d) }),
      Spec.new(name: :double_splice, src: ALL, dst: ALL, encode: IDENTITY, decode: IDENTITY,
               truncated: :prefix, cut: HALF, call: ->(s, d) { IO.double_splice(s, d, chunk_size: 16 * KIB) }),
      Spec.new(name: :pipe_splice, src: ALL, dst: ALL, encode: IDENTITY, decode: IDENTITY,
               truncated: :prefix, cut: HALF,
               call: ->(s, d) { through_pipe(->(p) { IO.splice(s, p, -16 * KIB) }, ->(p) { IO.splice(p, d, -16 * KIB) }) }),
      Spec.new(name: :pipe_gzip_gunzip, src: ALL, dst: ALL, encode: IDENTITY, decode: IDENTITY,
               truncated: :prefix, cut: HALF,
               call: ->(s, d) { through_pipe(->(p) { IO.gzip(s, p, level: 1) }, ->(p) { IO.gunzip(p, d) }) }),
      Spec.new(name: :gzip, src: ALL, dst: ALL, encode: IDENTITY, decode: GUNZIP,
               truncated: :prefix, cut: HALF, call: ->(s, d) { IO.gzip(s, d, level: 1) }),
      Spec.new(name: :gzip_objects, src: ALL, dst: ALL, encode: IDENTITY, decode: GUNZIP,
               truncated: :prefix, cut: HALF, call: ->(s, d) { IO.gzip(Reader.new(s), Writer.new(d), level: 1) }),
      Spec.new(name: :gunzip, src: ALL, dst: ALL, encode: GZIP, decode: IDENTITY,
               truncated: BUF, cut: HALF, call: ->(s, d) { IO.gunzip(s, d) }),
      Spec.new(name: :gunzip_objects, src: ALL, dst: ALL, encode: GZIP, decode: IDENTITY,
               truncated: BUF, cut: HALF, call: ->(s, d) { IO.gunzip(Reader.new(s), Writer.new(d)) }),
      Spec.new(name: :deflate, src: ALL, dst: ALL, encode: IDENTITY, decode: INFLATE,
               truncated: :prefix, cut: HALF, call: ->(s, d) { IO.deflate(s, d, level: 1) }),
      Spec.new(name: :inflate, src: ALL, dst: ALL, encode: DEFLATE, decode: IDENTITY,
               truncated: BUF, cut: HALF, call: ->(s, d) { IO.inflate(s, d) }),
      Spec.new(name: :read_loop, src: ALL, dst: ALL, encode: IDENTITY, decode: IDENTITY,
               truncated: :prefix, cut: HALF, call: ->(s, d) { s.read_loop(16 * KIB) { |c| d.write(c) } }),
      Spec.new(name: :recv_loop, src: SOCKETS, dst: ALL, encode: IDENTITY, decode: IDENTITY,
               truncated: :prefix, cut: HALF, call: ->(s, d) { s.recv_loop(16 * KIB) { |c| d.write(c) } }),
      Spec.new(name: :feed_loop, src: ALL, dst: ALL, encode: IDENTITY, decode: IDENTITY,
               truncated: :prefix, cut: HALF, call: ->(s, d) { s.feed_loop(d, :write, maxlen: 16 * KIB) }),
      Spec.new(name: :msgpack_each, src: ALL, dst: ALL, encode: ->(b) { msgpack_stream(b) }, decode: IDENTITY,
               truncated: EOF, cut: ->(b) { msgpack_cut(b) }, call: ->(s, d) { s.msgpack_each { |o| d.write(o) } }),
      Spec.new(name: :msgpack_write, src: ALL, dst: ALL, encode: IDENTITY, decode: ->(b) { msgpack_concat(b) },
               truncated: :prefix, cut: HALF,
               call: lambda do |s, d|
                 loop { d.msgpack_write(s.readpartial(16 * KIB)) }
               rescue EOFError
                 nil
               end),
      Spec.new(name: :http1_splice_chunked, src: ALL, dst: ALL, encode: IDENTITY, decode: ->(b) { unchunk(b) },
               truncated: :prefix, cut: HALF, call: ->(s, d) { IO.http1_splice_chunked(s, d, 16 * KIB) }),
      Spec.new(name: :http1_splice_unchunked, src: ALL, dst: ALL, encode: ->(b) { chunked(b) }, decode: IDENTITY,
               truncated: EOF, cut: HALF, call: ->(s, d) { IO.http1_splice_unchunked(s, d) })
    ].freeze

    def spec(name)
      SPECS.find { |s| s.name == name } or raise ArgumentError, "no spec #{name}"
    end

    # ---- the rig ----------------------------------------------------------------------

    # One transfer's streams and its two helper tasks.
    #
    # feed: :all     write the input (in `pieces`, cycled, pausing `pause`
    #                seconds after every `pause_every`-th piece), then close
    #       :stall   write input[0, stall_at], wait for #release, write the rest
    #       :cut     write input[0, cut], then close (the source ends early)
    #       :reset   write input[0, cut], then reset (TCP)
    # sink: :all     read to end of input
    #       :close   read at least one byte, close, then #release the feeder
    #       :reset   the same with a TCP reset
    # #progress pops once the sink has its first byte.
    class Rig
      attr_reader :spec, :src, :dst, :src_kind, :dst_kind, :input, :fed, :cut_at

      def initialize(spec, src_kind, dst_kind, payload, feed: :all, sink: :all, pieces: nil, pause: 0, pause_every: 3, stall_at: nil)
        raise ArgumentError, "#{spec} cannot take #{src_kind} -> #{dst_kind}" unless spec.kinds_ok?(src_kind, dst_kind)

        @spec = spec
        @src_kind = src_kind
        @dst_kind = dst_kind
        @payload = payload
        @input = spec.encode.call(payload)
        @feed = feed
        @sink = sink
        @pieces = pieces
        @pause = pause
        @pause_every = pause_every
        @cut_at = spec.cut.call(@input) if %i[cut reset].include?(feed)
        @stall_at = stall_at || @input.bytesize / 2
        @gate = Queue.new
        @first_byte = Queue.new
        @fed = 0
        @src, @src_peer = StreamPeers.pair(src_kind)
        @dst_peer, @dst = StreamPeers.pair(dst_kind)
      end

      def start
        @feeder = Task.new { feed }
        @sinker = Task.new { drain }
        self
      end

      def release
        @gate << :go
      end

      # Waits for the sink's first byte; false if none came within `limit`
      # seconds (or the sink ended empty).
      def progress(limit = 5)
        Timeout.timeout(limit) { @first_byte.pop } == :got
      rescue Timeout::Error
        false
      end

      def call
        @spec.call.call(@src, @dst)
      end

      # After the call: close the primitive's ends, release a stalled
      # feeder, and wait for both helpers. Returns [feeder result, sink
      # result] (each [:ok, value] or [:error, exception]).
      def finish
        Faults.close_quietly(@src, @dst)
        release
        [@feeder.result, @sinker.result]
      ensure
        close_all
      end

      # Every fd of the rig, closed or not (for a test that cannot finish it).
      def ios
        [@src, @src_peer, @dst, @dst_peer]
      end

      def close_all
        Faults.close_quietly(*ios)
      end

      private

      def feed
        case @feed
        when :all then write_pieces(@input)
        when :stall
          write_pieces(@input.byteslice(0, @stall_at))
          @gate.pop
          write_pieces(@input.byteslice(@stall_at..))
        when :cut, :reset then write_pieces(@input.byteslice(0, @cut_at))
        end
        :fed
      rescue *PEER_GONE => e
        # The primitive stopped reading and the rig closed its end.
        e.class
      ensure
        if @feed == :reset && !@src_peer.closed?
          Faults.reset(@src_peer)
        else
          Faults.close_quietly(@src_peer)
        end
      end

      def write_pieces(data)
        return @src_peer.write(data).tap { |n| @fed += n } unless @pieces

        off = 0
        i = 0
        while off < data.bytesize
          n = @src_peer.write(data.byteslice(off, @pieces[i % @pieces.size]))
          off += n
          @fed += n
          i += 1
          sleep @pause if @pause.positive? && (i % @pause_every).zero?
        end
        off
      end

      def drain
        out = String.new(encoding: Encoding::BINARY)
        buf = String.new
        loop do
          @dst_peer.readpartial(64 * KIB, buf)
          @first_byte << :got if out.empty?
          out << buf
          next if @sink == :all

          @sink == :reset ? Faults.reset(@dst_peer) : @dst_peer.close
          release
          break
        end
        out
      rescue EOFError
        out
      ensure
        @first_byte << :none if out&.empty? # a waiter must not hang
        Faults.close_quietly(@dst_peer)
      end
    end

    # Each fault as a check: runs it, then a small clean transfer of the same
    # primitive on the same streams' kinds (and the same scheduler), and
    # returns the problems found as sentences (empty when all is well). Plain
    # functions, not assertions, so the smoke run under the seccomp launcher
    # (a subprocess) uses them too, and a test reports every problem at once
    # instead of stopping at the first.
    module Checks
      module_function

      def payload(seed, size)
        Random.new(seed).bytes(size)
      end

      # Starts the rig, runs the primitive (through `around`, if given),
      # finishes: [error or nil, feeder result, sink result].
      def run(rig, &around)
        rig.start
        error = nil
        begin
          around ? around.call(rig) : rig.call
        rescue StandardError => e
          error = e
        end
        feeder, sink = rig.finish
        [error, feeder, sink]
      end

      def describe(error)
        error ? "#{error.class} (#{error.message})" : "no error"
      end

      def identity?(spec)
        spec.decode.equal?(IDENTITY)
      end

      # [the payload decoded from what the sink got, nil] or [nil, problem].
      def decoded(spec, sink)
        return [nil, "the sink failed: #{describe(sink[1])}"] unless sink[0] == :ok

        [spec.decode.call(sink[1]), nil]
      rescue StandardError => e
        [nil, "its output does not decode: #{describe(e)}"]
      end

      # nil when `got` (a #decoded pair) is `want`, else a problem.
      def output_problem(got, want)
        bytes, problem = got
        return problem if problem
        return nil if bytes == want

        "#{bytes.bytesize} bytes came out of #{want.bytesize}, or they differ"
      end

      # Output of an interrupted or failed transfer: must be a prefix of
      # the payload (identity transfers only; a decoder's output cannot be
      # checked piecewise). Returns a problem or nil.
      def prefix_problem(what, spec, payload, sink)
        return "#{what}: the sink failed: #{describe(sink[1])}" unless sink[0] == :ok
        return nil unless identity?(spec)
        return nil if payload.start_with?(sink[1])

        "#{what}: the #{sink[1].bytesize} bytes that came out are not a prefix of the payload"
      end

      # A plain transfer that must deliver every byte.
      def clean(spec, sk, dk, size: 3000, seed: 1, after: nil)
        what = "#{spec} #{sk}->#{dk}: #{after ? "the next transfer after #{after}" : 'a clean transfer'}"
        data = payload(seed, size)
        error, feeder, sink = run(Rig.new(spec, sk, dk, data))
        return ["#{what} raised #{describe(error)}"] if error
        return ["#{what}: the feeder ended with #{feeder.inspect}"] unless feeder == %i[ok fed]

        problem = output_problem(decoded(spec, sink), data)
        problem ? ["#{what}: #{problem}"] : []
      end

      # The destination's reader closes (or resets) after its first bytes;
      # the source stalls until it has, then sends the rest.
      def broken_destination(spec, sk, dk, how, seed: 2)
        what = "#{spec} #{sk}->#{dk} with the destination peer's #{how}"
        data = payload(seed, 256 * KIB)
        error, _feeder, sink = run(Rig.new(spec, sk, dk, data, feed: :stall, sink: how))
        problems = []
        problems << "#{what}: expected EPIPE or ECONNRESET, got #{describe(error)}" unless PEER_GONE.include?(error.class)
        problems << "#{what}: the error blames the source: #{error.message}" if error&.message&.match?(/: src\z/)
        problems << prefix_problem(what, spec, data, sink)
        problems.compact + clean(spec, sk, dk, after: "the destination peer's #{how}")
      end

      # The source ends (cleanly) in the middle of the stream.
      def source_cut(spec, sk, dk, seed: 3)
        what = "#{spec} #{sk}->#{dk} with the source cut short"
        data = payload(seed, 128 * KIB)
        rig = Rig.new(spec, sk, dk, data, feed: :cut)
        error, feeder, sink = run(rig)
        fed = rig.input.byteslice(0, rig.cut_at)
        problems = []
        problems << "#{what}: the feeder ended with #{feeder.inspect}" unless feeder == %i[ok fed]
        if spec.truncated == :prefix
          # Nothing was wrong with the input: it just ended. Every byte fed
          # comes out.
          problem = error ? "raised #{describe(error)}" : output_problem(decoded(spec, sink), fed)
          problems << "#{what}: #{problem}" if problem
        else
          problems << "#{what}: expected #{spec.truncated.join(' or ')}, got #{describe(error)}" unless spec.truncated.include?(error.class)
          problems << prefix_problem(what, spec, data, sink)
        end
        problems.compact + clean(spec, sk, dk, after: "a source cut short")
      end

      # The source's writer resets the TCP connection mid-stream.
      def source_reset(spec, dk, seed: 4)
        what = "#{spec} tcp->#{dk} with the source peer's reset"
        data = payload(seed, 256 * KIB)
        error, _feeder, sink = run(Rig.new(spec, :tcp, dk, data, feed: :reset))
        problems = []
        problems << "#{what}: expected ECONNRESET, got #{describe(error)}" unless error.instance_of?(Errno::ECONNRESET)
        problems << "#{what}: the error blames the destination: #{error.message}" if error&.message&.match?(/: dest\z/)
        problems << prefix_problem(what, spec, data, sink)
        problems.compact + clean(spec, :tcp, dk, after: "a source reset")
      end

      # A Timeout.timeout of `limit` seconds around a trickling transfer:
      # either it completes with every byte, or it raises Timeout::Error.
      # Returns [:completed or :timed_out, problems].
      # The limit is log-uniform between 20 us and 20 ms: a third of the
      # draws fall before a transfer's first pause and a fifth after most
      # transfers end, so both outcomes of the race show up on a fast
      # machine and on a slow (sanitized) one alike.
      def timeout(spec, sk, dk, rng, limit: 0.00002 * (1000**rng.rand), stress: false)
        what = "#{spec} #{sk}->#{dk} under a #{(limit * 1000).round(2)} ms timeout#{' and GC.stress' if stress}"
        data = rng.bytes(1 + rng.rand(stress ? 2 * KIB : 16 * KIB))
        rig = Rig.new(spec, sk, dk, data, pieces: [512 + rng.rand(4096)], pause: stress ? 0 : 0.0002)
        error, feeder, sink = run(rig) do |r|
          GC.stress = true if stress
          Timeout.timeout(limit) { r.call }
        ensure
          GC.stress = false if stress
        end
        case error
        when nil
          problem = feeder == %i[ok fed] ? output_problem(decoded(spec, sink), data) : "the feeder ended with #{feeder.inspect}"
          [:completed, problem ? ["#{what}: completed, but #{problem}"] : []]
        when Timeout::Error
          [:timed_out, [prefix_problem(what, spec, data, sink)].compact + clean(spec, sk, dk, size: 700, after: "a timeout")]
        else
          [:failed, ["#{what}: expected completion or Timeout::Error, got #{describe(error)}"]]
        end
      end

      # Primitives a caller can call again on the same source after an
      # interruption, to pick up where the interrupted call stopped: each
      # takes (src, dst, collected) and puts what it moves into dst (the
      # splices) or into the String `collected` (the loops: a block that
      # cannot block, so an interruption lands in the primitive's own wait).
      RESUMABLE = {
        splice: ->(s, d, _) { IO.splice(s, d, -4096) },
        double_splice: ->(s, d, _) { IO.double_splice(s, d, chunk_size: 4096) },
        read_loop: ->(s, _, out) { s.read_loop(4096) { |c| out << c } },
        recv_loop: ->(s, _, out) { s.recv_loop(4096) { |c| out << c } },
        feed_loop: ->(s, _, out) { s.feed_loop(out, :<<, maxlen: 4096) },
        msgpack_each: lambda do |s, _, out|
          s.msgpack_each do |o|
            raise TypeError, "decoded #{o.inspect[0, 40]}, not one of the Strings sent: the stream lost its place" unless o.is_a?(String)

            out << o
          end
        end
      }.freeze

      # Without a scheduler, Timeout raises from its own thread, between any
      # two Ruby instructions: also inside the block, after a chunk or an
      # object was handed to it and before `out << o` kept it, which loses
      # it in the test's code, not the primitive's. There the interrupt is
      # let in only where the thread blocks (waiting for the source), which
      # is where a scheduler's Timeout strikes too.
      def resumable_call(name, rig, collected)
        call = -> { RESUMABLE.fetch(name).call(rig.src, rig.dst, collected) }
        return call.call if Fiber.scheduler

        Thread.handle_interrupt(Timeout::Error => :on_blocking) { call.call }
      end

      # Timeouts keep interrupting the primitive while the source trickles;
      # each time it is simply called again. In the end every byte must
      # have come out exactly once, in order. Returns [timeouts, problems].
      def resume_after_timeouts(name, sk, rng)
        spec = Faults.spec(name)
        _, dk = spec.combo(src_kind: sk)
        data = rng.bytes(40 * KIB + rng.rand(60 * KIB))
        rig = Rig.new(spec, sk, dk, data, pieces: Array.new(7) { 1 + rng.rand(6000) }, pause: 0.0003, pause_every: 4).start
        what = "#{name} #{sk}->#{dk} called again after each Timeout"
        collected = String.new(encoding: Encoding::BINARY)
        timeouts = 0
        problem = nil
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 20
        loop do
          Timeout.timeout(0.0002 + (rng.rand * 0.002)) { resumable_call(name, rig, collected) }
          break
        rescue Timeout::Error
          timeouts += 1
          next if Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline

          problem = "#{what}: no end after 20 s"
          break
        rescue StandardError => e
          problem = "#{what}: after #{timeouts} timeouts raised #{describe(e)}#{" (while handling #{e.cause.class})" if e.cause}"
          break
        end
        _feeder, sink = rig.finish
        out = %i[splice double_splice].include?(name) ? sink[1] : collected
        problem ||= "#{what}: #{out.bytesize} bytes came out of #{data.bytesize} after #{timeouts} timeouts, or they differ" unless out == data
        [timeouts, [problem].compact]
      end

      # Fiber#raise (Thread#raise without a scheduler) into the task running
      # the transfer, once it has moved bytes and waits for a stalled source.
      def raise_into(spec, sk, dk, exc, seed: 5)
        what = "#{spec} #{sk}->#{dk} with #{exc} raised into it"
        data = payload(seed, 256 * KIB)
        rig = Rig.new(spec, sk, dk, data, feed: :stall).start
        worker = Task.new { rig.call }
        moving = rig.progress
        sleep 0.002 # let it park on the stalled source
        status, error = worker.interrupt(exc, "raised into #{spec}")
        _feeder, sink = rig.finish
        problems = []
        problems << "#{what}: no byte moved before the raise" unless moving
        problems << "#{what}: the task ended with #{status == :ok ? "#{error.inspect}, no error" : describe(error)}" unless status == :error && error.instance_of?(exc)
        problems << prefix_problem(what, spec, data, sink)
        problems.compact + clean(spec, sk, dk, after: "#{exc} raised into a transfer")
      end
    end
  end
end
