# frozen_string_literal: true

require "fileutils"
require "bench/c_program"
require "bench/stream_peer"

# Another process sends a stream of small MessagePack maps into a loopback
# TCP connection; the contender decodes every message and looks at it.
module Bench
  module MsgpackEach
    CHUNK = 64 * 1024
    DATA_DIR = File.expand_path("../out/data", __dir__)
    NO_GEM = 3 # the stream writer's exit status without the msgpack gem

    module_function

    # Message i of the stream.
    def message(index)
      { "id" => index, "name" => "user#{index % 100}", "ok" => true }
    end

    # The stream of `count` messages, packed by the msgpack gem into a file
    # under bench/out/data/ the first time a contender needs it (in a child
    # process, so the contender's own heap and peak RSS stay its own).
    # @return [String] its path
    def stream_file(count)
      path = File.join(DATA_DIR, "msgpack_maps_#{count}.msgpack")
      return path if File.exist?(path)

      FileUtils.mkdir_p(DATA_DIR)
      partial = "#{path}.#{Process.pid}.tmp"
      pid = fork do
        require_gem
        File.open(partial, "wb") do |file|
          packer = MessagePack::Packer.new(file)
          count.times { |i| packer.write(message(i)) }
          packer.flush
        end
        exit!(0)
      rescue Skip => e
        warn(e.message)
        exit!(NO_GEM)
      end
      _, status = Process.wait2(pid)
      raise Skip, "the msgpack gem is needed to write the stream" if status.exitstatus == NO_GEM
      raise "writing #{partial} failed: #{status.inspect}" unless status.success?

      File.rename(partial, path)
      path
    end

    def require_gem
      require "msgpack"
    rescue LoadError => e
      raise Skip, "the msgpack gem is not installed here (#{e.message})"
    end

    # Both decoders take the options issue 16 names; the third is the
    # default set.
    OPTIONS = { plain: {}, symbolize_freeze: { symbolize_keys: true, freeze: true } }.freeze

    # Decodes params[:messages] messages with `decoder` (one of the methods
    # below), inside `tasks` (Fibers or Threads), from a writer process over
    # loopback TCP (source :socket) or straight from the file (:file), with
    # OPTIONS[options].
    def measure(tasks, decoder, params, meter, source: :socket, options: :plain)
      tasks.check!
      count = params[:messages]
      opts = OPTIONS.fetch(options)
      near, writer = source == :file ? [File.open(stream_file(count), "rb"), nil] : start_writer(stream_file(count))
      seen = 0
      last = nil
      # The window inside the scheduler's run: it times the decoding, not
      # the setting up of a ring.
      tasks.run do
        meter.measure do
          writer&.go!
          public_send(decoder, near, opts) do |msg|
            seen += 1
            last = msg
          end
          seen
        end
      end
      writer&.wait
      want = message(count - 1)
      want = want.transform_keys(&:to_sym) if opts[:symbolize_keys]
      check(seen, last && last[opts[:symbolize_keys] ? :id : "id"], count)
      raise "last message #{last.inspect}, want #{want.inspect}" unless last == want
      raise "last message not frozen" if opts[:freeze] && !(last.frozen? && last.values.last(2).first.frozen?)
    ensure
      near&.close
    end

    # No decoding and no IO: the same messages built by Ruby's own Hash
    # literal and yielded to the same block. No decoder that hands a block
    # these objects can take less time than this.
    def measure_floor(params, meter)
      count = params[:messages]
      names = Array.new(100) { |i| "user#{i}" }.freeze
      seen = 0
      last = nil
      meter.measure do
        build_each(count, names) do |msg|
          seen += 1
          last = msg
        end
        seen
      end
      check(seen, last["id"], count)
    end

    def build_each(count, names)
      count.times { |i| yield({ "id" => i, "name" => names[i % 100].dup, "ok" => true }) }
    end

    # The physical limit: bench/c/msgpack_unpack.c decodes the socket instead.
    def measure_c(params, meter)
      binary = CProgram.build("msgpack_unpack", pkg: "msgpack")
      count = params[:messages]
      near, writer = start_writer(stream_file(count))
      own = nil
      meter.measure do
        writer.go!
        own = CProgram.figures(StreamPeer.spawn_reader([binary], near).wait)
        own[:units]
      end
      writer.wait
      check(own[:units], own[:last_id], count)
      CProgram.adopt(meter, own)
    ensure
      near&.close unless near&.closed?
    end

    def start_writer(path)
      near, far = StreamPeer.tcp_pair
      [near, StreamPeer.fork_writer(far, near) { |io| IO.copy_stream(path, io) }]
    end

    def check(seen, last_id, count)
      raise "decoded #{seen} messages, the writer sent #{count}" unless seen == count
      raise "the last message's id is #{last_id.inspect}, want #{count - 1}" unless last_id == count - 1
    end

    # ---- the decoders ----------------------------------------------------------------

    # The plain-Ruby way, as issue 16 states it: the msgpack gem's
    # streaming unpacker fed by read(65536, buf), one reused String.
    def gem_feed_each(io, opts, &block)
      unpacker = MessagePack::Unpacker.new(**opts)
      buf = String.new(capacity: CHUNK)
      unpacker.feed_each(buf, &block) while io.read(CHUNK, buf)
    end

    def msgpack_each(io, opts, &block)
      io.msgpack_each(**opts, &block)
    end
  end
end

Bench.define(:msgpack_each) do
  title "decode a stream of small MessagePack maps over loopback TCP and from a file"
  about <<~MD
    A forked writer process sends `messages` MessagePack maps of three entries,
    `{"id" => i, "name" => "user\#{i % 100}", "ok" => true}` (about 25 bytes each, packed once by
    the msgpack gem into `bench/out/data/`), into a loopback TCP connection with
    `IO.copy_stream`. The contender decodes every message into Ruby objects and hands it to a
    block that counts it and keeps the last one (checked afterwards, with the count). The timed
    window starts when the writer is told to go and ends at end of input. *msgpack gem* is the
    plain-Ruby way: `MessagePack::Unpacker#feed_each(io.readpartial(65536))` in a loop, no
    scheduler. `IO#msgpack_each` runs in a fiber under `Ringspun.run` forced to one backend, and
    with no scheduler. The C program (`bench/c/msgpack_unpack.c`) decodes the same socket with
    msgpack-c's streaming unpacker into msgpack-c objects, no Ruby objects; its row's CPU s and
    peak RSS are its own. *Ruby floor* decodes nothing and reads nothing: it builds the same
    Hashes with a Ruby literal (the name a new String each time, as a decoder makes it) and
    yields them to the same block, the least time any decoder that hands a block these objects
    can take on this Ruby. Issue 16's target: `msgpack_each` at least 1.2x the gem's messages/s, from a
    socket and from a file, with the same options.
  MD
  metric "messages/s"
  bytes_per_unit 25
  sizes quick: { messages: 1_000_000 }, full: { messages: 10_000_000 }
  reference :msgpack_gem

  contender(:msgpack_gem, "msgpack gem Unpacker#feed_each over read(65536, buf) (no scheduler)") do |params, meter|
    Bench::MsgpackEach.require_gem
    Bench::MsgpackEach.measure(Bench::Threads.new, :gem_feed_each, params, meter)
  end
  contender(:msgpack_gem_file, "msgpack gem feed_each over read(65536, buf), from the file") do |params, meter|
    Bench::MsgpackEach.require_gem
    Bench::MsgpackEach.measure(Bench::Threads.new, :gem_feed_each, params, meter, source: :file)
  end
  contender(:msgpack_gem_symbolize_freeze, "msgpack gem feed_each, symbolize_keys+freeze") do |params, meter|
    Bench::MsgpackEach.require_gem
    Bench::MsgpackEach.measure(Bench::Threads.new, :gem_feed_each, params, meter, options: :symbolize_freeze)
  end
  contender(:msgpack_each_io_uring, "IO#msgpack_each, Ringspun io_uring") do |params, meter|
    Bench::MsgpackEach.measure(Bench::Fibers.new(:io_uring), :msgpack_each, params, meter)
  end
  contender(:msgpack_each_epoll, "IO#msgpack_each, Ringspun epoll") do |params, meter|
    Bench::MsgpackEach.measure(Bench::Fibers.new(:epoll), :msgpack_each, params, meter)
  end
  contender(:msgpack_each_blocking, "IO#msgpack_each, no scheduler") do |params, meter|
    require "ringspun"
    Bench::MsgpackEach.measure(Bench::Threads.new, :msgpack_each, params, meter)
  end
  contender(:msgpack_each_file_io_uring, "IO#msgpack_each from the file, Ringspun io_uring") do |params, meter|
    Bench::MsgpackEach.measure(Bench::Fibers.new(:io_uring), :msgpack_each, params, meter, source: :file)
  end
  contender(:msgpack_each_file_blocking, "IO#msgpack_each from the file, no scheduler") do |params, meter|
    require "ringspun"
    Bench::MsgpackEach.measure(Bench::Threads.new, :msgpack_each, params, meter, source: :file)
  end
  contender(:msgpack_each_symbolize_freeze_io_uring, "IO#msgpack_each, symbolize_keys+freeze, Ringspun io_uring") do |params, meter|
    Bench::MsgpackEach.measure(Bench::Fibers.new(:io_uring), :msgpack_each, params, meter, options: :symbolize_freeze)
  end
  [[:msgpack_each_io_uring, :msgpack_gem, "from a socket"], [:msgpack_each_blocking, :msgpack_gem, "from a socket"],
   [:msgpack_each_file_io_uring, :msgpack_gem_file, "from a file"],
   [:msgpack_each_file_blocking, :msgpack_gem_file, "from a file"],
   [:msgpack_each_symbolize_freeze_io_uring, :msgpack_gem_symbolize_freeze, "symbolize_keys+freeze"]].each do |ours, gem, how|
    target issue: 16, text: "msgpack_each at least 1.2x the msgpack gem's feed_each, #{how}",
           contender: ours, rate_vs: gem, at_least: 1.2
  end
  contender(:c, "C msgpack-c unpacker (bench/c/msgpack_unpack.c)") do |params, meter|
    Bench::MsgpackEach.measure_c(params, meter)
  end
  contender(:ruby_floor, "Ruby floor: the same Hashes from a literal, yielded; no decoding, no IO") do |params, meter|
    Bench::MsgpackEach.measure_floor(params, meter)
  end
end
