# frozen_string_literal: true

# Seed inputs for the fuzzers and the differential checks, made at fuzz time by
# Ringspun's own encoders (IO.gzip, IO.deflate, IO.http1_splice_chunked,
# Ringspun::MessagePack.pack), plus hand-made edge cases the encoders never
# write: FEXTRA and FHCRC headers, several members, zero padding, trailing
# bytes, chunk extensions and trailers, every MessagePack type.
#
# Nothing here is committed as binary: `ruby fuzz/seeds.rb DIR` writes
# DIR/gunzip, DIR/chunked and DIR/msgpack in the harness layout (two control
# bytes, then the payload; see fuzz/fuzz_input.h). The differential check
# takes the payloads from RingspunFuzz::Seeds directly.
#
# Needs the extension loaded (require "ringspun").

require "tempfile"
require "zlib"

module RingspunFuzz
  module Seeds
    # Deterministic text and binary to compress or frame.
    def self.samples
      rng = Random.new(20_261_122)
      {
        "empty" => "".b,
        "byte" => "x".b,
        "text" => ("The quick brown fox jumps over the lazy dog. " * 40).b,
        "random" => rng.bytes(3000),
        "zeros" => ("\0" * 70_000).b,
        "mixed" => (Array.new(200) { |i| "line #{i} #{rng.bytes(i % 13)}\n" }.join).b,
        "block_plus" => rng.bytes(65_537)
      }
    end

    # ---- gzip and zlib ---------------------------------------------------------------

    def self.ours_gzip(data, **opts)
      out = +"".b
      IO.gzip(data, out, **opts)
      out
    end

    def self.ours_deflate(data, **opts)
      out = +"".b
      IO.deflate(data, out, **opts)
      out
    end

    # A gzip member with the header written by hand; the body and trailer come
    # from a raw deflate.
    def self.gzip_member(data, flags: 0, extra: nil, name: nil, comment: nil, hcrc: false, mtime: 0, xfl: 0, os: 3)
      flg = flags
      flg |= 0x04 if extra
      flg |= 0x08 if name
      flg |= 0x10 if comment
      flg |= 0x02 if hcrc
      header = [0x1f, 0x8b, 8, flg, mtime, xfl, os].pack("CCCCVCC")
      header << [extra.bytesize].pack("v") << extra if extra
      header << name << "\0" if name
      header << comment << "\0" if comment
      header << [Zlib.crc32(header) & 0xffff].pack("v") if hcrc
      raw = Zlib::Deflate.new(6, -Zlib::MAX_WBITS)
      body = raw.deflate(data, Zlib::FINISH)
      raw.close
      (header + body + [Zlib.crc32(data), data.bytesize & 0xffff_ffff].pack("VV")).b
    end

    def self.gzip
      s = samples
      seeds = {}
      s.each { |name, data| seeds["gzip-#{name}"] = ours_gzip(data, mtime: 0) }
      # Every level and strategy the encoder takes, on text that compresses.
      (0..9).each { |level| seeds["gzip-level#{level}"] = ours_gzip(s["mixed"], level: level, mtime: 0) }
      [Zlib::FILTERED, Zlib::HUFFMAN_ONLY, Zlib::RLE, Zlib::FIXED].each do |strategy|
        seeds["gzip-strategy#{strategy}"] = ours_gzip(s["text"], strategy: strategy, mtime: 0)
      end
      seeds["gzip-name-comment"] = ours_gzip(s["text"], orig_name: "report.txt", comment: "made by seeds.rb", mtime: 1_700_000_000)
      seeds["gzip-long-name"] = ours_gzip(s["byte"], orig_name: "n" * 200, mtime: 0)
      # Hand-made headers.
      text = s["text"]
      seeds["hand-fextra"] = gzip_member(text, extra: "AP\x04\x00abcd".b)
      seeds["hand-fhcrc"] = gzip_member(text, hcrc: true)
      seeds["hand-all-flags"] = gzip_member(text, extra: "xy\x00\x00".b, name: "a.txt", comment: "c", hcrc: true)
      seeds["hand-ftext"] = gzip_member(text, flags: 0x01)
      seeds["hand-empty-member"] = gzip_member("".b)
      seeds["hand-empty-name"] = gzip_member(text, name: "".b, comment: "".b)
      # Longer than the binding's 64 KiB header buffers.
      seeds["hand-huge-name"] = gzip_member("x", name: "n" * 70_000)
      seeds["hand-huge-comment"] = gzip_member("x", comment: "c" * 65_535)
      # Several members, padding and what follows.
      one = ours_gzip("first member\n", mtime: 0)
      two = ours_gzip("second member\n", mtime: 0)
      seeds["multi-member"] = one + two + gzip_member("third\n", name: "3")
      seeds["multi-empty"] = ours_gzip("", mtime: 0) * 3
      seeds["zero-padding"] = one + ("\0" * 512) + two + ("\0" * 3)
      seeds["zero-padding-only"] = one + "\0".b
      seeds["trailing-garbage"] = one + "garbage".b
      seeds["trailing-magic"] = one + "\x1f".b
      # Broken ones, so the error paths are in the corpus from the start.
      good = ours_gzip(text, mtime: 0)
      seeds["bad-crc"] = good.dup.tap { |g| g.setbyte(g.bytesize - 8, g.getbyte(g.bytesize - 8) ^ 1) }
      seeds["bad-isize"] = good.dup.tap { |g| g.setbyte(g.bytesize - 1, g.getbyte(g.bytesize - 1) ^ 1) }
      seeds["bad-method"] = good.dup.tap { |g| g.setbyte(2, 7) }
      seeds["bad-flags"] = good.dup.tap { |g| g.setbyte(3, 0x20) }
      seeds["bad-fhcrc"] = gzip_member(text, hcrc: true).tap { |g| g.setbyte(10, g.getbyte(10) ^ 0xff) }
      seeds["truncated-header"] = good.byteslice(0, 7)
      seeds["truncated-body"] = good.byteslice(0, good.bytesize / 2)
      seeds["truncated-trailer"] = good.byteslice(0, good.bytesize - 3)
      seeds["not-gzip"] = "hello, not gzip".b
      seeds
    end

    def self.zlib
      s = samples
      seeds = {}
      s.each { |name, data| seeds["zlib-#{name}"] = ours_deflate(data) }
      [0, 1, 9].each { |level| seeds["zlib-level#{level}"] = ours_deflate(s["mixed"], level: level) }
      good = ours_deflate(s["text"])
      seeds["zlib-trailing"] = good + "after the stream".b
      dict = Zlib::Deflate.new
      dict.set_dictionary("The quick brown fox")
      seeds["zlib-fdict"] = dict.deflate(s["text"], Zlib::FINISH).b
      seeds["zlib-bad-adler"] = good.dup.tap { |g| g.setbyte(g.bytesize - 1, g.getbyte(g.bytesize - 1) ^ 1) }
      seeds["zlib-bad-header"] = good.dup.tap { |g| g.setbyte(1, g.getbyte(1) ^ 1) }
      seeds["zlib-truncated"] = good.byteslice(0, good.bytesize - 2)
      seeds
    end

    # ---- chunked ---------------------------------------------------------------------

    # The body IO.http1_splice_chunked writes for payload, at most maxlen per chunk.
    def self.ours_chunked(payload, maxlen)
      Tempfile.create("ringspun-seed-src") do |src|
        src.binmode
        src.write(payload)
        src.flush
        src.rewind
        Tempfile.create("ringspun-seed-dst") do |dst|
          dst.binmode
          IO.http1_splice_chunked(src, dst, maxlen)
          dst.rewind
          dst.read
        end
      end
    end

    def self.chunked
      s = samples
      seeds = {}
      { "byte" => [1], "text" => [1, 7, 100, 65_536], "random" => [1000], "empty" => [16] }.each do |name, maxlens|
        maxlens.each { |m| seeds["ours-#{name}-#{m}"] = ours_chunked(s[name], m) }
      end
      seeds["ours-block-plus"] = ours_chunked(s["block_plus"].byteslice(0, 20_000), 4096)
      hand = {
        "extensions" => "5;name=value\r\nhello\r\n6 ; quoted=\"a b\"\r\n world\r\n0;last\r\n\r\n",
        "ext-tab" => "3\t;x\r\nabc\r\n0\r\n\r\n",
        "trailers" => "4\r\nwiki\r\n0\r\nExpires: never\r\nX-Sum: 5\r\n\r\n",
        "uppercase-hex" => "A\r\n0123456789\r\n0\r\n\r\n",
        "leading-zeros" => "0000000000000000003\r\nabc\r\n000\r\n\r\n",
        "after-body" => "3\r\nabc\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n",
        "only-last" => "0\r\n\r\n",
        "max-size" => "7fffffffffffffff\r\nabc",
        "overflow" => "8000000000000000\r\n",
        "long-ext" => "1;#{'e' * 8190}\r\nx\r\n0\r\n\r\n",
        "too-long-ext" => "1;#{'e' * 8193}\r\nx\r\n0\r\n\r\n",
        "long-trailer" => "0\r\nT: #{'v' * 8189}\r\n\r\n",
        "bare-lf-size" => "3\nabc\r\n0\r\n\r\n",
        "bare-lf-data" => "3\r\nabc\n0\r\n\r\n",
        "bare-lf-end" => "0\r\n\n",
        "no-crlf-after-data" => "3\r\nabcd\r\n0\r\n\r\n",
        "bad-hex" => "3g\r\nabc\r\n0\r\n\r\n",
        "space-before-size" => " 3\r\nabc\r\n0\r\n\r\n",
        "cr-cr" => "3\r\rabc\r\n0\r\n\r\n",
        "empty" => "",
        "truncated-data" => "a\r\n01234",
        "truncated-end" => "3\r\nabc\r\n0\r\n\r"
      }
      hand.each { |name, body| seeds["hand-#{name}"] = body.b }
      seeds
    end

    # ---- MessagePack -----------------------------------------------------------------

    def self.ext(type, payload)
      Ringspun::MessagePack::ExtensionValue.new(type, payload)
    end

    def self.pack(obj)
      Ringspun::MessagePack.pack(obj)
    end

    def self.msgpack
      seeds = {}
      objects = {
        "nil" => nil, "true" => true, "false" => false,
        "ints" => [0, 1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1,
                   -1, -32, -33, -128, -129, -32_768, -32_769, -2**31, -2**31 - 1, -2**63],
        "floats" => [0.0, -0.0, 1.5, 1e300, Float::INFINITY, -Float::INFINITY, Float::NAN],
        "strings" => ["", "a", "é", "x" * 31, "x" * 32, "y" * 255, "z" * 256, "w" * 70_000],
        "bins" => ["".b, "\xff".b, ("\0" * 256).b, ("b" * 65_536).b],
        "symbols" => %i[a bc],
        "exts" => [1, 2, 4, 8, 16, 0, 3, 17, 255, 256, 70_000].map.with_index { |n, i| ext(i - 1, ("e" * n).b) },
        "timestamp" => ext(-1, [1_700_000_000].pack("N").b),
        "array16" => Array.new(16) { |i| i },
        "map" => { "a" => 1, "b" => [2, 3], 4 => { "c" => nil }, [1] => "array key", "\xfe".b => "bin key" },
        "map16" => (0...20).to_h { |i| ["k#{i}", i] },
        "mixed" => [{ "id" => 1, "tags" => %w[a b], "score" => 0.5, "blob" => "\x00\x01".b, "ext" => ext(7, "p".b) }] * 3
      }
      objects.each { |name, obj| seeds["pack-#{name}"] = pack(obj) }
      seeds["stream"] = Ringspun::MessagePack.pack_all(objects.values_at("ints", "map", "strings", "mixed"))
      seeds["stream-small"] = Ringspun::MessagePack.pack_all([1, "two", [3], { "4" => 5 }, nil])
      hand = {
        # Forms the encoder never writes.
        "float32" => "\xca\x3f\xc0\x00\x00", "float32-nan" => "\xca\x7f\xc0\x00\x01",
        "non-minimal" => "\xcd\x00\x01\xce\x00\x00\x00\x02\xd0\x7f\xd9\x01a\xda\x00\x01b\xdb\x00\x00\x00\x01c",
        "array32" => "\xdd\x00\x00\x00\x02\x01\x02", "map32" => "\xdf\x00\x00\x00\x01\xa1k\xc0",
        "ext8" => "\xc7\x03\x05abc", "ext16" => "\xc8\x00\x01\x05a", "ext32" => "\xc9\x00\x00\x00\x01\x05a",
        "fixexts" => "\xd4\x01a\xd5\x01ab\xd6\x01abcd\xd7\x01abcdefgh\xd8\x01abcdefghabcdefgh",
        "invalid-utf8" => "\xa2\xff\xfe", "invalid-utf8-key" => "\x81\xa1\xff\x01",
        "dup-keys" => "\x82\xa1a\x01\xa1a\x02", "bin-key" => "\x81\xc4\x03key\x01",
        # Broken ones.
        "never-used" => "\xc1", "truncated-str" => "\xa5abc", "truncated-array" => "\x93\x01\x02",
        "truncated-map" => "\x82\xa1a\x01", "truncated-uint64" => "\xcf\x00\x00", "empty" => "",
        "extra-bytes" => "\x01\x02"
      }
      hand.each { |name, bytes| seeds["hand-#{name}"] = bytes.b }
      # Nesting around msgpack-c's parse stack (32) and the gem's (128), by
      # hand: the encoder may refuse what msgpack-c cannot read back.
      [31, 32, 33, 100, 128, 129].each do |depth|
        seeds["hand-deep#{depth}"] = (("\x91" * depth) + "\xc0").b
        seeds["hand-deep#{depth}-maps"] = (("\x81\xa1k" * depth) + "\x01").b
      end
      seeds
    end

    # ---- writing the harness corpora -------------------------------------------------

    # Control bytes (cut seed, options) each payload is written with: one read
    # and the binding's defaults first, then a few cuts and options.
    HEADERS = {
      "gunzip" => [[0, 0], [3, 1 << 1], [0x45, 6 << 1], [0x13, 4 << 1 | 0x10]],
      "inflate" => [[0, 1], [3, 1 | 1 << 1], [0x45, 1 | 6 << 1]],
      "chunked" => [[0, 0], [1, 1], [0x26, 4], [0x17, 7]],
      "msgpack" => [[0, 0], [1, 0], [0x23, 1], [0x46, 1 << 1]]
    }.freeze

    # The payloads per harness; gunzip's covers IO.inflate's zlib streams too.
    def self.by_harness
      { "gunzip" => gzip.map { |n, d| [n, d, "gunzip"] } + zlib.map { |n, d| [n, d, "inflate"] },
        "chunked" => chunked.map { |n, d| [n, d, "chunked"] },
        "msgpack" => msgpack.map { |n, d| [n, d, "msgpack"] } }
    end

    def self.write(dir)
      counts = {}
      by_harness.each do |harness, seeds|
        out = File.join(dir, harness)
        FileUtils.rm_rf(out)
        FileUtils.mkdir_p(out)
        seeds.each do |name, data, kind|
          HEADERS.fetch(kind).each do |seed, opts|
            File.binwrite(File.join(out, format("%s-%02x%02x", name, seed, opts)), [seed, opts].pack("CC") + data)
          end
        end
        counts[harness] = Dir.children(out).size
      end
      counts
    end
  end
end

if $PROGRAM_NAME == __FILE__
  require "fileutils"
  $LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
  require "ringspun"
  dir = ARGV.fetch(0) { abort "usage: ruby fuzz/seeds.rb DIR" }
  RingspunFuzz::Seeds.write(dir).each { |harness, n| puts "#{harness}: #{n} seeds in #{File.join(dir, harness)}" }
end
