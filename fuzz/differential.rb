# frozen_string_literal: true

# Differential check: Ringspun's decoders against reference decoders, on the
# seed corpus (fuzz/seeds.rb), the saved regressions
# (fuzz/regressions/differential/<family>/) and N deterministic mutations of
# the seeds (bit flips, byte changes, truncations, insertions, deletions,
# duplicated ranges, splices of two seeds).
#
#   family   ours                                  reference
#   gzip     IO.gunzip                             Zlib::GzipReader, member after member
#   zlib     IO.inflate                            Zlib::Inflate.inflate
#   chunked  IO.http1_splice_unchunked             RingspunFuzz::ChunkedReference
#   msgpack  Ringspun::MessagePack.unpack,         the msgpack gem (a Factory with no
#            IO#msgpack_each                       types registered)
#
# Agreement means the same bytes or objects on success, and failing exactly
# when the reference fails, with the error classes mapped:
#   gzip, zlib  any Zlib::Error                 <=> any Zlib::Error
#   chunked     Ringspun::HTTP1::ParseError     <=> invalid, at the same byte offset
#               EOFError                        <=> truncated
#               and the same payload delivered before the error, and on
#               success what follows the body is left unread in the source
#   msgpack     MalformedFormatError            <=> MalformedFormatError, StackError,
#                                                   or extra bytes after the object
#               EOFError                        <=> EOFError
#               UnknownExtTypeError, EncodingError <=> the same class
#
# Deliberate differences, handled in the reference:
# - gzip: zero bytes after a member are padding, as gzip -d and Python's gzip
#   take them; Zlib::GzipReader.zcat fails on them ("not in gzip format").
#   The reference skips zeros between members itself.
# - gzip: a header with FHCRC. Ruby's reader takes flag 0x02 for the old
#   "multi-part" flag and refuses it; zlib (and RFC 1952) read it as a CRC-16
#   of the header. The reference checks that CRC itself, then hands Ruby the
#   member without it.
# - gzip: the header's name and comment are kept up to 65535 bytes (the
#   binding's buffer less its terminator): ours must be the reference's,
#   truncated there.
#
# Open findings (reported, not yet fixed) fail the run unless FUZZ_ALLOW
# names them; each rule below says what it lets through.
#
# A disagreement fails the run and prints the input as hex; the input is
# also written under tmp/fuzz/differential/ to be kept as a regression.

require "digest"
require "fileutils"
require "socket"
require "stringio"
require "tempfile"
require "timeout"
require "zlib"
require "msgpack"
require_relative "seeds"
require_relative "chunked_reference"

module RingspunFuzz
  module Differential
    FAMILIES = %w[gzip zlib chunked msgpack].freeze
    ROOT = File.expand_path("..", __dir__)
    REGRESSIONS = File.join(ROOT, "fuzz", "regressions", "differential")
    OUT_DIR = File.join(ROOT, "tmp", "fuzz", "differential")
    NAME_MAX = 65_535 # the binding's header buffers: RS_BLOCK_SIZE less the terminator
    CHECK_TIMEOUT = 20 # seconds per input: longer is a hang

    Disagreement = Struct.new(:family, :input, :how, :what)

    def self.allowed?(id)
      ENV.fetch("FUZZ_ALLOW", "").split(",").map(&:strip).include?(id)
    end

    # A sanitizer build of the extension (RINGSPUN_SANITIZE) preloads ASan.
    # Under it, an input that triggers an open memory finding would end the
    # whole process, so such inputs are not run: they count as a
    # disagreement unless FUZZ_ALLOW names the finding.
    def self.asan?
      ENV.fetch("LD_PRELOAD", "").include?("libasan")
    end

    # What to say for an input that triggers open finding `id`, known
    # before running it: nil (allowed), a disagreement (under ASan, not run)
    # or :run.
    def self.triggers(id, what)
      return nil if allowed?(id)
      return "open finding #{id}: #{what} (not run: under ASan it would end the process)" if asan?

      :run
    end

    # ---- inputs -------------------------------------------------------------------

    INTERESTING = [0, 1, 0x7f, 0x80, 0xff, 0x1f, 0x8b, 0x08, 13, 10, 0x30, 0x66, 0x3b, 0x20,
                   0xc0, 0xc1, 0xdc, 0xdd, 0xde, 0xdf, 0x90, 0x80, 0xd9, 0xc4, 0xc7, 0xd4].freeze

    # One mutation of data: one to three edits, chosen by rng.
    def self.mutate(data, others, rng)
      out = data.b.dup
      rng.rand(1..3).times do
        size = out.bytesize
        case rng.rand(8)
        when 0 # flip bits
          rng.rand(1..4).times { i = rng.rand(size); out.setbyte(i, out.getbyte(i) ^ (1 << rng.rand(8))) } if size.positive?
        when 1 # an interesting byte
          out.setbyte(rng.rand(size), INTERESTING.sample(random: rng)) if size.positive?
        when 2 # truncate
          out = out.byteslice(0, rng.rand(size + 1))
        when 3 # insert random bytes
          at = rng.rand(size + 1)
          out = out.byteslice(0, at) + rng.bytes(rng.rand(1..8)) + out.byteslice(at..)
        when 4 # delete a range
          at = rng.rand(size + 1)
          out = out.byteslice(0, at) + (out.byteslice((at + rng.rand(1..16))..) || "".b)
        when 5 # duplicate a range elsewhere
          from = rng.rand(size + 1)
          piece = out.byteslice(from, rng.rand(1..64)) || "".b
          at = rng.rand(size + 1)
          out = out.byteslice(0, at) + piece + out.byteslice(at..)
        when 6 # this one's head, another's tail
          other = others.sample(random: rng).b
          out = out.byteslice(0, rng.rand(size + 1)) + other.byteslice(rng.rand(other.bytesize + 1)..)
        else # another one after this one
          out += others.sample(random: rng).b
        end
      end
      out
    end

    def self.seed_inputs(family)
      case family
      when "gzip" then Seeds.gzip
      when "zlib" then Seeds.zlib
      when "chunked" then Seeds.chunked
      else Seeds.msgpack
      end.map { |name, data| ["seed #{name}", data] }
    end

    def self.regression_inputs(family)
      Dir[File.join(REGRESSIONS, family, "*")].sort.map { |f| ["regression #{File.basename(f)}", File.binread(f)] }
    end

    # Big seeds make slow mutants and add little: mutate the small ones.
    def self.mutants(family, seeds, count, rng)
      small = seeds.map(&:last).select { |d| d.bytesize <= 16_384 }
      Array.new(count) { |i| ["mutation #{i}", mutate(small.sample(random: rng), small, rng)] }
    end

    # ---- gzip and zlib ---------------------------------------------------------------

    # A source that hands out the input in reads of random sizes through
    # readpartial, the way a socket wrapper would.
    class Trickle
      def initialize(data, rng)
        @data = data
        @pos = 0
        @rng = rng
      end

      def readpartial(max, buf = nil)
        raise EOFError, "end of file reached" if @pos >= @data.bytesize

        n = [@rng.rand(1..64), max].min
        chunk = @data.byteslice(@pos, n)
        @pos += chunk.bytesize
        buf ? buf.replace(chunk) : chunk
      end
    end

    def self.with_source_file(data)
      Tempfile.create("ringspun-diff") do |f|
        f.binmode
        f.write(data)
        f.flush
        f.rewind
        yield f
      end
    end

    # Runs IO.gunzip or IO.inflate from a String, a File or a trickling reader.
    def self.ours_zlib(method, data, how, rng)
      out = +"".b
      info = {}
      rest = method == :gunzip ? [out, info] : [out]
      case how
      when :string then IO.public_send(method, data.dup, *rest)
      when :file then with_source_file(data) { |f| IO.public_send(method, f, *rest) }
      else IO.public_send(method, Trickle.new(data, rng), *rest)
      end
      [:ok, out, info]
    rescue StandardError, NoMemoryError => e
      [:error, e]
    end

    # FHCRC: RFC 1952's header CRC, which Ruby's reader refuses as
    # "multi-part". Checks it and returns the member without it, and how many
    # bytes were taken out; raises a Zlib error for a bad or cut header.
    def self.strip_fhcrc(member)
      return [member, 0] unless member.bytesize >= 4 && member.getbyte(0) == 0x1f && member.getbyte(1) == 0x8b
      return [member, 0] if (member.getbyte(3) & 0x02).zero?

      flags = member.getbyte(3)
      cut = Zlib::GzipFile::Error.new("cut gzip header")
      pos = 10
      raise cut if member.bytesize < pos
      if flags & 0x04 != 0
        raise cut if member.bytesize < pos + 2

        pos += 2 + member.byteslice(pos, 2).unpack1("v")
      end
      [0x08, 0x10].each do |flag|
        next if (flags & flag).zero?

        nul = member.index("\0".b, pos) or raise cut
        pos = nul + 1
      end
      raise cut if member.bytesize < pos + 2

      want = member.byteslice(pos, 2).unpack1("v")
      raise Zlib::GzipFile::Error, "header CRC mismatch" unless want == (Zlib.crc32(member.byteslice(0, pos)) & 0xffff)

      stripped = member.byteslice(0, pos) + member.byteslice((pos + 2)..)
      stripped.setbyte(3, flags & ~0x02)
      [stripped, 2]
    end

    # Zlib::GzipReader on each member in turn, as GzipReader.zcat does, with
    # the two deliberate differences (zero padding, FHCRC) handled here.
    def self.ref_gunzip(data)
      out = +"".b
      pos = 0
      members = 0
      header = nil
      loop do
        if members.positive?
          pos += 1 while pos < data.bytesize && data.getbyte(pos).zero?
          break if pos == data.bytesize
        end
        member, taken = strip_fhcrc(data.byteslice(pos..))
        io = StringIO.new(member)
        gz = Zlib::GzipReader.new(io)
        out << gz.read.b
        header ||= { orig_name: gz.orig_name, comment: gz.comment, mtime: gz.mtime.to_i }
        unused = gz.unused
        gz.finish
        pos += io.pos - (unused ? unused.bytesize : 0) + taken
        members += 1
      end
      [:ok, out, header]
    rescue Zlib::Error => e
      [:error, e]
    end

    def self.ref_inflate(data)
      [:ok, Zlib::Inflate.inflate(data).b]
    rescue Zlib::Error => e
      [:error, e]
    end

    # A name or comment as the binding keeps it: nil when absent or empty,
    # cut to NAME_MAX bytes.
    def self.kept_header_string(str)
      return nil if str.nil? || str.empty?

      str.b.byteslice(0, NAME_MAX)
    end

    # A gzip stream whose output fills both of the binding's output blocks
    # when it goes to a descriptor: gunzipping it first leaves blocks in the
    # pool that hold no zero byte, as a busy server's would.
    PRIMER = Zlib.gzip("A" * 300_000)

    # The binding keeps a header's name and comment in pool blocks; decode
    # the primer first so what it finds there is not fresh zeroed memory,
    # or a missing terminator goes unnoticed.
    def self.dirty_the_pool
      File.open(File::NULL, "wb") { |null| IO.gunzip(PRIMER, null) }
    end

    # Whether the first member's header has a name or comment that fills
    # the binding's buffer (what open finding gzip-header-nul is about).
    def self.fills_header_buffer?(data)
      return false unless data.bytesize > NAME_MAX && data.getbyte(0) == 0x1f && data.getbyte(1) == 0x8b

      flags = data.getbyte(3).to_i
      pos = 10
      pos += 2 + data.byteslice(pos, 2).to_s.unpack1("v").to_i if flags & 0x04 != 0
      [0x08, 0x10].any? do |flag|
        next false if (flags & flag).zero?

        nul = data.index("\0".b, pos) || data.bytesize
        long = nul - pos >= NAME_MAX
        pos = nul + 1
        long
      end
    end

    def self.check_zlib(family, data, rng)
      method = family == "gzip" ? :gunzip : :inflate
      if family == "gzip" && fills_header_buffer?(data)
        verdict = triggers("gzip-header-nul", "a gzip name or comment of #{NAME_MAX} bytes or more")
        return verdict unless verdict == :run
      end

      dirty_the_pool if family == "gzip" && data.bytesize > NAME_MAX
      how = %i[string file trickle].sample(random: rng)
      ours = ours_zlib(method, data, how, rng)
      ref = family == "gzip" ? ref_gunzip(data) : ref_inflate(data)
      where = "IO.#{method} from a #{how}"
      if ref[0] == :ok && ours[0] == :ok
        unless ours[1].b == ref[1].b
          at = (0...[ours[1].bytesize, ref[1].bytesize].min).find { |i| ours[1].getbyte(i) != ref[1].getbyte(i) }
          return "#{where}: #{ours[1].bytesize} bytes, the reference #{ref[1].bytesize}, first difference at #{at.inspect}"
        end
        return nil unless family == "gzip" && ref[2]

        info = ours[2]
        %i[orig_name comment].each do |key|
          want = kept_header_string(ref[2][key])
          got = info[key]&.b
          next if got == want
          # Open finding gzip-header-nul, only when FUZZ_ALLOW names it: a field
          # that fills the buffer has no terminator, and what follows is read too.
          next if allowed?("gzip-header-nul") && want&.bytesize == NAME_MAX && got&.start_with?(want)

          return "#{where}: header #{key} #{got&.bytesize.inspect} bytes #{got.inspect[0, 80]}, " \
                 "the reference #{want&.bytesize.inspect} bytes #{want.inspect[0, 80]}"
        end
        return "#{where}: mtime #{info[:mtime].to_i}, the reference #{ref[2][:mtime]}" unless info[:mtime].to_i == ref[2][:mtime]

        nil
      elsif ref[0] == :error && ours[0] == :error
        return nil if ours[1].is_a?(Zlib::Error)

        "#{where} raised #{ours[1].class}: #{ours[1].message} (not a Zlib::Error); the reference #{ref[1].class}"
      elsif ours[0] == :error
        "#{where} raised #{ours[1].class}: #{ours[1].message}; the reference decoded #{ref[1].bytesize} bytes"
      else
        "#{where} decoded #{ours[1].bytesize} bytes; the reference raised #{ref[1].class}: #{ref[1].message}"
      end
    end

    # ---- chunked ---------------------------------------------------------------------

    # A writer thread on the other end of a pipe or socket; on reap, the
    # reading end is closed (the writer may be stuck on a body we stopped
    # reading) and the thread joined.
    def self.writer(io, data, close: :close)
      Thread.new do
        io.write(data)
      rescue Errno::EPIPE, Errno::ECONNRESET, IOError
        nil
      ensure
        close == :shutdown ? (io.close_write rescue nil) : (io.close rescue nil)
      end
    end

    # Yields a readable IO holding data, of the kind asked for, and a lambda
    # that reads what is left in it; cleans up after.
    def self.with_stream(data, kind)
      case kind
      when :file, :buffered_file
        with_source_file(data) do |f|
          # Ruby's own read buffer then holds the start of the input.
          (b = f.getbyte) && f.ungetbyte(b) if kind == :buffered_file
          yield f, -> { f.read.to_s.b }
        end
      when :pipe
        r, w = IO.pipe
        r.binmode
        t = writer(w, data)
        begin
          yield r, -> { r.read.to_s.b }
        ensure
          r.close unless r.closed?
          t.join
          w.close unless w.closed?
        end
      else # :socket
        a, b = UNIXSocket.pair
        t = writer(b, data, close: :shutdown)
        begin
          yield a, -> { a.read.to_s.b }
        ensure
          a.close unless a.closed?
          t.join
          b.close unless b.closed?
        end
      end
    end

    def self.ours_unchunk(data, src_kind, dst_kind)
      with_stream(data, src_kind) do |src, rest|
        dst = dst_kind == :string ? +"".b : Tempfile.new("ringspun-diff-out").tap(&:binmode)
        payload = -> { dst_kind == :string ? dst : (dst.flush; dst.rewind; dst.read.to_s.b) }
        begin
          n = IO.http1_splice_unchunked(src, dst)
          { status: :ok, returned: n, payload: payload.call, rest: rest.call }
        rescue StandardError => e
          { status: :error, error: e, payload: payload.call }
        ensure
          dst.close! unless dst_kind == :string
        end
      end
    end

    def self.check_chunked(data, rng)
      src = %i[file buffered_file pipe socket].sample(random: rng)
      dst = %i[string string file].sample(random: rng)
      where = "IO.http1_splice_unchunked from a #{src} into a #{dst}"
      ours = ours_unchunk(data, src, dst)
      ref = ChunkedReference.decode(data)
      same_payload = ours[:payload] == ref.payload
      case ref.status
      when :ok
        return "#{where} raised #{ours[:error].class}: #{ours[:error].message}; the reference decoded #{ref.payload.bytesize} bytes" unless ours[:status] == :ok
        return "#{where}: payload #{ours[:payload].bytesize} bytes, the reference #{ref.payload.bytesize}" unless same_payload
        return "#{where} returned #{ours[:returned].inspect} for #{ref.payload.bytesize} payload bytes" unless ours[:returned] == ref.payload.bytesize

        rest = data.byteslice(ref.consumed..)
        return "#{where} left #{ours[:rest].bytesize} bytes after the body, not #{rest.bytesize}" unless ours[:rest] == rest
      when :invalid
        e = ours[:error]
        unless e.is_a?(Ringspun::HTTP1::ParseError)
          return "#{where}: #{ours[:status] == :ok ? 'decoded it' : "raised #{e.class}: #{e.message}"}; " \
                 "the reference finds it invalid at byte #{ref.offset}"
        end
        offset = e.message[/at byte offset (\d+)/, 1].to_i
        return "#{where}: ParseError at byte #{offset} (#{e.message}), the reference at #{ref.offset}" unless offset == ref.offset
        return "#{where}: #{ours[:payload].bytesize} payload bytes before the error, the reference #{ref.payload.bytesize}" unless same_payload
      else # :truncated
        e = ours[:error]
        unless e.is_a?(EOFError)
          return "#{where}: #{ours[:status] == :ok ? 'decoded it' : "raised #{e.class}: #{e.message}"}; " \
                 "the reference finds it truncated"
        end
        return "#{where}: #{ours[:payload].bytesize} payload bytes before EOFError, the reference #{ref.payload.bytesize}" unless same_payload
      end
      nil
    end

    # ---- MessagePack -----------------------------------------------------------------

    FACTORY = MessagePack::Factory.new

    # Objects as comparable data: String encodings, Float bits (NaN too) and
    # both ExtensionValue classes made explicit.
    def self.norm(obj, bin_keys_as_symbols: false)
      case obj
      when nil, true, false, Integer then obj
      when Float then [:float, [obj].pack("G")]
      when Symbol then [:symbol, obj.to_s.b]
      when String then [:string, obj.encoding.name, obj.b]
      when Array then [:array, *obj.map { |o| norm(o, bin_keys_as_symbols: bin_keys_as_symbols) }]
      when Hash
        [:hash, *obj.map do |k, v|
          key = if bin_keys_as_symbols && k.is_a?(String) && k.encoding == Encoding::BINARY
                  [:symbol, k.b]
                else
                  norm(k, bin_keys_as_symbols: bin_keys_as_symbols)
                end
          [key, norm(v, bin_keys_as_symbols: bin_keys_as_symbols)]
        end]
      when Ringspun::MessagePack::ExtensionValue, MessagePack::ExtensionValue then [:ext, obj.type, obj.payload.b]
      else [:other, obj.class.name, obj.inspect]
      end
    end

    # Ringspun::MessagePack::StackError is newer than MalformedFormatError.
    def self.ours_stack_error?(error)
      Ringspun::MessagePack.const_defined?(:StackError) && error.is_a?(Ringspun::MessagePack.const_get(:StackError))
    end

    # The error classes that mean the same thing, as one name.
    def self.error_kind(error)
      case error
      when nil then :none
      when Ringspun::MessagePack::MalformedFormatError, MessagePack::MalformedFormatError, MessagePack::StackError
        :malformed
      when EOFError then :eof
      when Ringspun::MessagePack::UnknownExtTypeError, MessagePack::UnknownExtTypeError then :unknown_ext
      else ours_stack_error?(error) ? :malformed : error.class
      end
    end

    # The gem's MessagePack.unpack: one object, the whole string.
    def self.ref_unpack(data, opts)
      u = FACTORY.unpacker(**opts)
      u.feed(data)
      obj = u.read
      raise MessagePack::MalformedFormatError, "#{u.buffer.size} extra bytes" unless u.buffer.size.zero?

      [:ok, obj]
    rescue StandardError => e
      [:error, e]
    end

    def self.ours_unpack(data, opts)
      [:ok, Ringspun::MessagePack.unpack(data, **opts)]
    rescue StandardError, NoMemoryError => e
      [:error, e]
    end

    # The gem reading a stream object by object: the objects, then nil at a
    # clean end or the error.
    def self.ref_stream(data, opts)
      u = FACTORY.unpacker(**opts)
      u.feed(data)
      objs = []
      loop do
        return [objs, nil] if u.buffer.size.zero?

        objs << u.read
      end
    rescue StandardError => e
      [objs, e]
    end

    def self.ours_stream(data, kind, opts)
      objs = []
      with_stream(data, kind) do |io, _rest|
        io.msgpack_each(**opts) { |o| objs << o }
      end
      [objs, nil]
    rescue StandardError, NoMemoryError => e
      [objs, e]
    end

    # msgpack-c's parse stack (MSGPACK_EMBED_STACK_SIZE): containers open at once.
    MSGPACK_C_DEPTH = 32

    # What a stream of MessagePack looks like to msgpack-c, up to where it
    # ends or breaks: where a container first opens deeper than msgpack-c's
    # stack (the offset of its first byte, or nil) and the biggest element
    # table an array32 or map32 declares. Used only to recognise the
    # differences below.
    def self.scan_msgpack(data)
      pos = 0
      depth = 0
      too_deep_at = nil
      ext32_max = nil
      pending = [] # elements left in each open container
      big = 0
      fixed = { 0xc4 => 1, 0xc5 => 2, 0xc6 => 4, 0xd9 => 1, 0xda => 2, 0xdb => 4, 0xc7 => 1, 0xc8 => 2, 0xc9 => 4 }
      while pos < data.bytesize
        start = pos
        b = data.getbyte(pos)
        pos += 1
        children = 0
        container = (0x80..0x9f).cover?(b) || (0xdc..0xdf).cover?(b)
        case b
        when 0x00..0x7f, 0xe0..0xff, 0xc0, 0xc2, 0xc3 then nil
        when 0x80..0x8f then children = (b & 0x0f) * 2
        when 0x90..0x9f then children = b & 0x0f
        when 0xa0..0xbf then pos += b & 0x1f
        when 0xca then pos += 4
        when 0xcb then pos += 8
        when 0xcc, 0xd0 then pos += 1
        when 0xcd, 0xd1 then pos += 2
        when 0xce, 0xd2 then pos += 4
        when 0xcf, 0xd3 then pos += 8
        when 0xd4 then pos += 2
        when 0xd5 then pos += 3
        when 0xd6 then pos += 5
        when 0xd7 then pos += 9
        when 0xd8 then pos += 17
        when 0xdc, 0xde
          n = data.byteslice(pos, 2)&.unpack1("n") or break
          pos += 2
          children = b == 0xde ? n * 2 : n
        when 0xdd, 0xdf
          n = data.byteslice(pos, 4)&.unpack1("N") or break
          pos += 4
          big = [big, n * (b == 0xdf ? 48 : 24)].max
          children = b == 0xdf ? n * 2 : n
        when *fixed.keys
          width = fixed[b]
          n = data.byteslice(pos, width)
          break if n.nil? || n.bytesize < width

          len = width == 1 ? n.unpack1("C") : width == 2 ? n.unpack1("n") : n.unpack1("N")
          pos += width + len + (b >= 0xc7 && b <= 0xc9 ? 1 : 0)
        else break # 0xc1
        end
        # msgpack-c checks its stack before it looks at the count: an empty
        # array or map cannot open there either.
        too_deep_at ||= start if container && depth >= MSGPACK_C_DEPTH
        ext32_max ||= b == 0xc9 && data.byteslice(start + 1, 4) == "\xff\xff\xff\xff".b
        if children.positive?
          pending << children
          depth += 1
        else
          while (last = pending.last)
            pending[-1] = last - 1
            break unless pending.last.zero?

            pending.pop
            depth -= 1
          end
        end
      end
      { too_deep_at: too_deep_at, biggest_alloc: big, ext32_max: ext32_max || false }
    end

    # Where ours may say "malformed" (or StackError) and the gem not:
    # - deliberate: nesting deeper than msgpack-c's fixed parse stack (32
    #   containers open; the gem allows 128). Ours must fail at the header of
    #   the container that would be the 33rd (the offset in its message is
    #   inside that header: msgpack-c counts the bytes of it already read),
    #   having yielded what came before.
    # - open findings, only when FUZZ_ALLOW names them:
    #   msgpack-huge-alloc  an array32/map32 whose element table (24 or 48
    #                       bytes an element) msgpack-c allocates in full
    #                       before any element has arrived; past 2 GiB that
    #                       allocation may fail, and the failure surfaces as
    #                       an error (StackError, "nested deeper").
    #   msgpack-ext32-max   an ext32 of 0xffffffff bytes: msgpack-c adds one
    #                       for the type byte in 32 bits, gets 0 and calls it
    #                       malformed; the gem waits for the bytes.
    def self.allowed_malformed?(data, ours_error)
      return false unless error_kind(ours_error) == :malformed

      scan = scan_msgpack(data)
      offset = ours_error.message[/byte offset (\d+)/, 1]&.to_i
      return true if scan[:too_deep_at] && offset && (scan[:too_deep_at]..scan[:too_deep_at] + 5).cover?(offset)

      (allowed?("msgpack-huge-alloc") && scan[:biggest_alloc] >= 2**31) ||
        (allowed?("msgpack-ext32-max") && scan[:ext32_max])
    end

    # Open finding msgpack-kv-order, only when FUZZ_ALLOW names it: to_ruby
    # converts a map's key and value as the two arguments of one call, in an
    # order C leaves open; GCC converts the value first. So with a bad key
    # (invalid UTF-8 under symbolize_keys) and a bad value (an unknown ext),
    # ours raises for the value and the gem, which goes in stream order, for
    # the key.
    def self.allowed_order?(ours_error, ref_error)
      kinds = [error_kind(ours_error), error_kind(ref_error)].sort_by(&:to_s)
      allowed?("msgpack-kv-order") && kinds == [EncodingError, :unknown_ext].sort_by(&:to_s)
    end

    def self.describe(result)
      result[0] == :ok ? "#{norm(result[1]).inspect[0, 120]}" : "#{result[1].class}: #{result[1].message[0, 120]}"
    end

    # Returns the problem (or nil), and whether both decoded the input.
    def self.compare_unpack(data, opts, bin_keys)
      ours = ours_unpack(data, opts)
      ref = ref_unpack(data, opts)
      both_ok = ours[0] == :ok && ref[0] == :ok
      if both_ok
        return [nil, true] if norm(ours[1]) == norm(ref[1]) ||
                              (bin_keys && norm(ours[1], bin_keys_as_symbols: true) == norm(ref[1]))
      elsif ours[0] == :error && ref[0] == :error
        return [nil, false] if error_kind(ours[1]) == error_kind(ref[1]) || allowed_order?(ours[1], ref[1])
      end
      return [nil, false] if ours[0] == :error && allowed_malformed?(data, ours[1])

      ["MessagePack.unpack(#{opts.inspect}): ours #{describe(ours)}; the gem #{describe(ref)}", both_ok]
    end

    # Every combination of the options, for seeds and regressions: an input
    # kept for one of them must not depend on the dice.
    ALL_OPTIONS = [true, false].product([true, false], [true, false]).map do |ext, sym, frz|
      { allow_unknown_ext: ext, symbolize_keys: sym, freeze: frz }
    end.freeze

    def self.check_msgpack(data, rng, every_option: false)
      if scan_msgpack(data)[:biggest_alloc] >= 2**31
        verdict = triggers("msgpack-huge-alloc", "an array32/map32 whose element table is 2 GiB or more")
        return verdict unless verdict == :run
      end

      # Structure first, with options that cannot raise in the conversion;
      # the gem converts as it parses and msgpack-c parses a whole object
      # first, so with both a conversion error and a structural one in the
      # input each would report a different one first.
      # Then the options, only on what both decode: with an error in the
      # structure too, which error comes first is a matter of that order.
      plain = { allow_unknown_ext: true }
      problem, both_ok = compare_unpack(data, plain, false)
      return problem if problem

      if both_ok
        choices = every_option ? ALL_OPTIONS : [{ allow_unknown_ext: rng.rand(4) != 0, symbolize_keys: rng.rand(3).zero?,
                                                  freeze: rng.rand(2).zero? }]
        choices.each do |opts|
          # msgpack-symbolize-bin: the gem symbolizes bin map keys too; ours keeps them as Strings.
          problem, = compare_unpack(data, opts, opts[:symbolize_keys] && allowed?("msgpack-symbolize-bin"))
          return problem if problem
        end
      end

      kind = %i[pipe socket file buffered_file].sample(random: rng)
      ours = ours_stream(data, kind, plain)
      ref = ref_stream(data, plain)
      same_objs = ours[0].map { |o| norm(o) } == ref[0].map { |o| norm(o) }
      return nil if same_objs && error_kind(ours[1]) == error_kind(ref[1])
      return nil if ours[1] && ours[0].size <= ref[0].size && allowed_malformed?(data, ours[1]) &&
                    ours[0].map { |o| norm(o) } == ref[0].first(ours[0].size).map { |o| norm(o) }

      "IO#msgpack_each from a #{kind}: ours #{ours[0].size} objects then #{ours[1] ? "#{ours[1].class}: #{ours[1].message}" : 'the end'}; " \
        "the gem #{ref[0].size} objects then #{ref[1] ? "#{ref[1].class}: #{ref[1].message}" : 'the end'}" \
        "#{same_objs ? '' : ' (the objects differ)'}"
    end

    # ---- the run ---------------------------------------------------------------------

    def self.check(family, data, rng, thorough: false)
      Timeout.timeout(CHECK_TIMEOUT) do
        case family
        when "gzip", "zlib" then check_zlib(family, data, rng)
        when "chunked" then check_chunked(data, rng)
        else check_msgpack(data, rng, every_option: thorough)
        end
      end
    rescue Timeout::Error
      "no answer in #{CHECK_TIMEOUT} s: a hang"
    end

    def self.report(d, out)
      FileUtils.mkdir_p(OUT_DIR)
      path = File.join(OUT_DIR, "#{d.family}-#{Digest::SHA1.hexdigest(d.input)[0, 16]}.bin")
      File.binwrite(path, d.input)
      hex = d.input.unpack1("H*")
      hex = "#{hex[0, 2048]}... (#{d.input.bytesize} bytes in all)" if hex.size > 2048
      out.puts "DISAGREEMENT #{d.family} (#{d.how}): #{d.what}"
      out.puts "  input (#{d.input.bytesize} bytes, saved as #{path.delete_prefix("#{ROOT}/")}): #{hex}"
    end

    # Checks every family; half the inputs inside Ringspun.run (the native
    # strategy where io_uring is there), half with no scheduler. Returns
    # { family => [inputs checked, disagreements] } and prints one line per
    # family. families: a subset, for a quick look at one.
    def self.run(mutations:, seed:, out: $stdout, families: FAMILIES)
      rng = Random.new(seed)
      results = {}
      families.each do |family|
        seeds = seed_inputs(family)
        inputs = seeds + regression_inputs(family) + mutants(family, seeds, mutations / families.size, rng)
        started = Time.now
        found = []
        half = inputs.size / 2
        go = lambda do |slice, how|
          slice.each do |label, data|
            problem = check(family, data, rng, thorough: !label.start_with?("mutation"))
            found << Disagreement.new(family, data, "#{label}, #{how}", problem) if problem
          end
        end
        go.call(inputs[0, half], "no scheduler")
        Ringspun.run { go.call(inputs[half..], "in Ringspun.run") }
        found.each { |d| report(d, out) }
        results[family] = [inputs.size, found.size]
        out.puts format("differential %-8s %6d inputs (%d seeds, %d mutations), %d disagreements, %.1f s",
                        family, inputs.size, seeds.size, mutations / families.size, found.size, Time.now - started)
      end
      results
    end
  end
end

if $PROGRAM_NAME == __FILE__
  $LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
  require "ringspun"
  mutations = Integer(ENV.fetch("FUZZ_MUTATIONS", "4000"))
  seed = Integer(ENV.fetch("FUZZ_SEED", "1"))
  families = ARGV.empty? ? RingspunFuzz::Differential::FAMILIES : ARGV
  results = RingspunFuzz::Differential.run(mutations: mutations, seed: seed, families: families)
  exit(results.values.sum(&:last).zero? ? 0 : 1)
end
