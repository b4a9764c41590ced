# frozen_string_literal: true

require_relative "test_helper"
require_relative "support/primitive_modes"
require_relative "support/stream_peers"
require "msgpack"

# Native MessagePack (issue 5, "Tests"): Ringspun::MessagePack.pack/unpack
# checked byte for byte against the msgpack gem (TestMsgpackCodec), and
# IO#msgpack_each / IO#msgpack_write over pipes and sockets in the four
# modes of RingspunTest::PrimitiveModes (TestMsgpackIoUring, ...Epoll,
# ...Blocking, ...Async), against the gem and Debian's Python msgpack.
module MsgpackTestData
  MP = Ringspun::MessagePack
  EV = Ringspun::MessagePack::ExtensionValue

  # A UTF-8 String of exactly n bytes (ASCII letters).
  def self.text(count)
    Array.new(count) { |i| (97 + (i % 26)).chr }.join.force_encoding(Encoding::UTF_8)
  end

  # A binary String of exactly n bytes, every byte value.
  def self.binary(count)
    Array.new(count) { |i| (i * 7 + 3) % 256 }.pack("C*")
  end

  # An Array of n fixints.
  def self.list(count)
    Array.new(count) { |i| i % 128 }
  end

  # A Hash of n entries, Integer keys.
  def self.map(count)
    Array.new(count) { |i| [i, i % 3 == 0 ? nil : i % 100] }.to_h
  end

  # [object, the exact leading bytes (hex) of its encoding]: every type and
  # every size boundary of the format.
  BOUNDARIES = [
    [nil, "c0"], [false, "c2"], [true, "c3"],
    # positive fixint, uint8, uint16, uint32, uint64 (and Ruby's fixnum edge)
    [0, "00"], [1, "01"], [127, "7f"], [128, "cc80"], [255, "ccff"], [256, "cd0100"], [65_535, "cdffff"],
    [65_536, "ce00010000"], [2**32 - 1, "ceffffffff"], [2**32, "cf0000000100000000"],
    [2**62 - 1, "cf3fffffffffffffff"], [2**62, "cf4000000000000000"], [2**63 - 1, "cf7fffffffffffffff"],
    [2**63, "cf8000000000000000"], [2**64 - 1, "cfffffffffffffffff"],
    # negative fixint, int8, int16, int32, int64
    [-1, "ff"], [-32, "e0"], [-33, "d0df"], [-128, "d080"], [-129, "d1ff7f"], [-32_768, "d18000"],
    [-32_769, "d2ffff7fff"], [-2**31, "d280000000"], [-2**31 - 1, "d3ffffffff7fffffff"],
    [-2**62, "d3c000000000000000"], [-2**62 - 1, "d3bfffffffffffffff"], [-2**63, "d38000000000000000"],
    # float64
    [0.0, "cb0000000000000000"], [-0.0, "cb8000000000000000"], [1.5, "cb3ff8000000000000"],
    [-2.25, "cbc002000000000000"], [Float::INFINITY, "cb7ff0000000000000"], [-Float::INFINITY, "cbfff0000000000000"],
    [Float::MAX, "cb7fefffffffffffff"], [5e-324, "cb0000000000000001"], [Float::NAN, "cb7ff8000000000000"],
    # fixstr, str8, str16, str32 (lengths in bytes: "é" is two)
    ["", "a0"], [text(1), "a161"], [text(31), "bf"], [text(32), "d920"], ["é" * 16, "d920c3a9"],
    [text(255), "d9ff"], [text(256), "da0100"], [text(65_535), "daffff"], [text(65_536), "db00010000"],
    [:sym, "a373796d"],
    # bin8, bin16, bin32
    ["".b, "c400"], [binary(1), "c40103"], [binary(255), "c4ff"], [binary(256), "c50100"],
    [binary(65_535), "c5ffff"], [binary(65_536), "c600010000"],
    # fixarray, array16, array32
    [[], "90"], [list(15), "9f"], [list(16), "dc0010"], [list(65_535), "dcffff"], [list(65_536), "dd00010000"],
    # fixmap, map16, map32
    [{}, "80"], [map(15), "8f"], [map(16), "de0010"], [map(65_535), "deffff"], [map(65_536), "df00010000"],
    # fixext 1/2/4/8/16, ext8, ext16, ext32
    [EV.new(1, binary(1)), "d40103"], [EV.new(-128, binary(2)), "d580"], [EV.new(127, binary(4)), "d67f"],
    [EV.new(-2, binary(8)), "d7fe"], [EV.new(42, binary(16)), "d82a"], [EV.new(5, "".b), "c70005"],
    [EV.new(6, binary(3)), "c70306"], [EV.new(7, binary(17)), "c71107"], [EV.new(8, binary(255)), "c7ff08"],
    [EV.new(9, binary(256)), "c8010009"], [EV.new(10, binary(65_535)), "c8ffff0a"],
    [EV.new(11, binary(65_536)), "c9000100000b"],
    # nesting
    [{ "a" => [1, { "b" => nil, 2 => [true, "x".b] }], "c" => -1.5, "d" => EV.new(3, "xy".b) }, "83a161"]
  ].freeze

  OBJECTS = BOUNDARIES.map(&:first).freeze

  # A small message with many types, for the byte-offset tests.
  SMALL = { "id" => 7, "name" => "ringspun", "bin" => "\x00\xff".b, "list" => [1, -1, 1.5, nil, true, false],
            "n" => -300, "big" => 2**40, "e" => EV.new(3, "xy".b), "s" => "é" }.freeze
end

# Helpers shared by the codec tests and the stream contract.
module MsgpackAssertions
  MP = MsgpackTestData::MP
  EV = MsgpackTestData::EV

  # What decoding `obj` gives back: Symbols become Strings (or stay
  # Symbols as map keys with symbolize_keys), ext stays ours.
  def decoded(obj, symbolize_keys: false, key: false)
    case obj
    when Symbol then key && symbolize_keys ? obj : obj.to_s.dup.force_encoding(Encoding::UTF_8)
    when String then key && symbolize_keys && obj.encoding != Encoding::BINARY ? obj.to_sym : obj
    when Array then obj.map { |o| decoded(o, symbolize_keys: symbolize_keys) }
    when Hash
      obj.to_h { |k, v| [decoded(k, symbolize_keys: symbolize_keys, key: true), decoded(v, symbolize_keys: symbolize_keys)] }
    else obj
    end
  end

  # Our objects in the gem's terms (its ExtensionValue) and back.
  def to_gem(obj)
    case obj
    when EV then MessagePack::ExtensionValue.new(obj.type, obj.payload)
    when Array then obj.map { |o| to_gem(o) }
    when Hash then obj.to_h { |k, v| [to_gem(k), to_gem(v)] }
    else obj
    end
  end

  def from_gem(obj)
    case obj
    when MessagePack::ExtensionValue then EV.new(obj.type, obj.payload)
    when Array then obj.map { |o| from_gem(o) }
    when Hash then obj.to_h { |k, v| [from_gem(k), from_gem(v)] }
    else obj
    end
  end

  # Values worked out once per process (the boundary objects are big).
  CACHE = {}

  def cached(name)
    CACHE.fetch(name) { CACHE[name] = yield }
  end

  # Every decoded object equal (assert_strict) to the decoded form of
  # the one in `want`, in order.
  def assert_objects(want, got, **opts)
    assert_equal want.size, got.size, "object count"
    # A frozen list (the boundary objects) is worked out once.
    key = want.frozen? && opts.empty? ? want.object_id : nil
    want_d = key ? cached([:decoded, key]) { decoded(want) } : decoded(want, **opts)
    dump = key ? cached([:dump, key]) { Marshal.dump(want_d) } : Marshal.dump(want_d)
    return pass if dump == Marshal.dump(got)

    want_d.each_with_index { |w, i| strict_walk(w, got[i], "object #{i}") }
  end

  # Equal as MessagePack sees it: same classes (1 is not 1.0, a str is
  # not a bin), same encodings, same bits for floats, same key order.
  def assert_strict(want, got, path = "object")
    return pass if strict_fast_equal?(want, got)

    strict_walk(want, got, path)
  end

  def strict_fast_equal?(want, got)
    Marshal.dump(want) == Marshal.dump(got)
  rescue TypeError
    false
  end

  def strict_walk(want, got, path)
    case want
    when EV
      assert_instance_of EV, got, path
      assert_equal want.type, got.type, "#{path}.type"
      strict_walk(want.payload.b, got.payload, "#{path}.payload")
    when String
      assert_instance_of String, got, path
      assert_equal want.encoding == Encoding::BINARY ? Encoding::BINARY : Encoding::UTF_8, got.encoding, "#{path}: encoding"
      assert want.b == got.b, "#{path}: #{want.bytesize} bytes expected, #{got.bytesize} bytes differ"
    when Float
      assert_instance_of Float, got, path
      assert_equal [want].pack("G").unpack1("H*"), [got].pack("G").unpack1("H*"), "#{path}: float bits"
    when Integer, Symbol
      assert_instance_of want.class, got, path
      assert_equal want, got, path
    when Array
      assert_instance_of Array, got, path
      assert_equal want.size, got.size, "#{path}: size"
      want.each_with_index { |w, i| strict_walk(w, got[i], "#{path}[#{i}]") }
    when Hash
      assert_instance_of Hash, got, path
      assert_equal want.size, got.size, "#{path}: size"
      want.to_a.zip(got.to_a).each_with_index do |((wk, wv), (gk, gv)), i|
        strict_walk(wk, gk, "#{path} key #{i}")
        strict_walk(wv, gv, "#{path}[#{wk.inspect[0, 40]}]")
      end
    when nil
      assert_nil got, path # minitest 6 refuses assert_same(nil, ...)
    else
      assert_same want, got, path
    end
  end

  def hex(str)
    str.unpack1("H*")
  end

  def unhex(hex)
    [hex].pack("H*")
  end
end

# ---- the codec, mode-independent -------------------------------------------------------

class TestMsgpackCodec < RingspunTest::Case
  include MsgpackAssertions

  # The boundary objects by family, one test per family and direction;
  # a failure lists every object of the family that went wrong.
  FAMILIES = MsgpackTestData::BOUNDARIES.group_by do |obj, _head|
    case obj
    when nil, true, false then "nil_and_booleans"
    when Integer then obj.negative? ? "negative_integers" : "positive_integers"
    when Float then "floats"
    when Symbol then "strs"
    when String then obj.encoding == Encoding::BINARY ? "bins" : "strs"
    when Array then "arrays"
    when Hash then obj.size > 20 ? "maps" : "nested_maps"
    else "exts"
    end
  end

  def describe(obj)
    obj.is_a?(Float) && obj.nan? ? "NaN" : "#{obj.class} #{obj.inspect[0, 40]}#{obj.respond_to?(:size) ? " (size #{obj.size})" : ''}"
  end

  # Runs the block for each object; collects the failures, fails with all.
  def each_checked(list)
    failures = list.filter_map do |obj, head|
      yield obj, head
      nil
    rescue Minitest::Assertion, StandardError => e
      "#{describe(obj)}: #{e.class}: #{e.message.lines.first(3).join.strip}"
    end
    assert_empty failures, failures.join("\n")
  end

  FAMILIES.each do |family, list|
    define_method("test_#{family}_pack_to_the_exact_bytes_of_the_gem") do
      each_checked(list) do |obj, head|
        ours = MP.pack(obj)
        assert_equal Encoding::BINARY, ours.encoding
        assert_equal head, hex(ours.byteslice(0, head.size / 2)), "leading bytes"
        gem = MessagePack.pack(to_gem(obj))
        assert ours == gem, "differs from the msgpack gem's encoding (#{ours.bytesize} vs #{gem.bytesize} bytes)"
      end
    end

    define_method("test_#{family}_round_trip_with_the_gem_both_ways") do
      each_checked(list) do |obj, _head|
        want = decoded(obj)
        gem_bytes = MessagePack.pack(to_gem(obj))
        assert_strict want, MP.unpack(gem_bytes, allow_unknown_ext: true), "ours decoding the gem's bytes"
        gem_obj = MessagePack.unpack(MP.pack(obj), allow_unknown_ext: true)
        assert_strict want, from_gem(gem_obj), "the gem decoding our bytes"
      end
    end
  end

  # Other encoders may use a wider format than needed; all must decode.
  NON_MINIMAL = {
    "cc05" => 5, "cd0005" => 5, "ce00000005" => 5, "cf0000000000000005" => 5,
    "d005" => 5, "d0ff" => -1, "d1fffe" => -2, "d2fffffffd" => -3, "d3fffffffffffffffc" => -4,
    "d37fffffffffffffff" => 2**63 - 1, "d9036162 63".delete(" ") => "abc", "da0000" => "", "db00000001 7a".delete(" ") => "z",
    "c50000" => "".b, "c60000000141".delete(" ") => "A".b, "dc000101" => [1], "dd0000000102" => [2],
    "de0001a16101" => { "a" => 1 }, "df00000000" => {}
  }.freeze

  def test_wider_than_needed_encodings_decode
    NON_MINIMAL.each do |bytes, want|
      assert_strict want, MP.unpack(unhex(bytes)), bytes
    end
  end

  def test_float32_decodes_to_the_same_value
    [1.5, -0.0, 0.1, 3.4028234663852886e+38, Float::INFINITY, 1.401298464324817e-45].each do |f|
      want = [f].pack("g").unpack1("g") # f rounded to single precision
      got = MP.unpack("\xca".b + [f].pack("g"))
      assert_strict want, got, "float32 #{f}"
    end
    assert_predicate MP.unpack(unhex("ca7fc00000")), :nan?
  end

  def test_integers_outside_64_bits_raise_range_error
    [2**64, 2**64 + 1, 2**100, -2**63 - 1, -2**64, -2**100].each do |n|
      assert_raises(RangeError, n.to_s) { MP.pack(n) }
      assert_raises(RangeError, "#{n} in an array") { MP.pack([1, n]) }
    end
  end

  def test_objects_messagepack_cannot_represent_raise_type_error
    [Object.new, 1r, 2i, 1..2, Time.at(0)].each do |o|
      assert_raises(TypeError, o.inspect) { MP.pack(o) }
    end
  end

  def test_symbols_pack_as_str
    assert_equal "a3616263", hex(MP.pack(:abc))
    assert_equal "81a16101", hex(MP.pack({ a: 1 }))
    assert_strict({ "a" => "b" }, MP.unpack(MP.pack({ a: :b })))
  end

  # "str" is UTF-8 by the format's definition: like the gem, a String in
  # another encoding goes out as its UTF-8 form.
  def test_a_string_in_another_encoding_packs_as_utf8_str
    latin1 = "caf\xe9".dup.force_encoding(Encoding::ISO_8859_1)
    assert_equal hex(MessagePack.pack(latin1)), hex(MP.pack(latin1))
    assert_strict "café", MP.unpack(MP.pack(latin1))
  end

  # msgpack-c parses with a fixed stack of 32 containers: up to that depth
  # ours round-trips like the gem; deeper, pack and unpack both raise
  # StackError (never "malformed", for valid data).
  def nest(levels)
    deep = 1
    (levels - 1).times { deep = [deep] }
    { "deep" => deep }
  end

  def test_nesting_round_trips_like_the_gem_up_to_msgpack_c_limit
    deep = nest(32)
    packed = MP.pack(deep)
    assert packed == MessagePack.pack(deep), "ours and the gem's bytes"
    assert_strict deep, MessagePack.unpack(packed), "the gem decoding ours"
    assert_strict deep, MP.unpack(packed), "ours decoding a 32-level nest"
  end

  def test_deeper_nesting_raises_stack_error_both_ways
    deep = nest(33)
    assert_raises(MP::StackError) { MP.pack(deep) }
    e = assert_raises(MP::StackError) { MP.unpack(MessagePack.pack(deep)) }
    assert_kind_of MP::UnpackError, e
    assert_match(/32 levels/, e.message)
  end

  # ---- unpack errors ----------------------------------------------------------------

  def assert_malformed_at(offset, bytes)
    e = assert_raises(MP::MalformedFormatError, hex(bytes)) { MP.unpack(bytes) }
    assert_match(/byte offset #{offset}\b/, e.message, hex(bytes))
    assert_kind_of MP::UnpackError, e
  end

  def test_unpack_malformed_names_the_byte_offset
    assert_malformed_at 0, unhex("c1")
    assert_malformed_at 2, unhex("9301c1")
    assert_malformed_at 3, unhex("81a161c1")
    assert_malformed_at 5, unhex("92a3616263c1")
    assert_malformed_at 5, unhex("95c0c2c3c0c1")
  end

  def test_unpack_with_extra_bytes_raises_malformed
    e = assert_raises(MP::MalformedFormatError) { MP.unpack(unhex("0102")) }
    assert_match(/extra bytes/, e.message)
  end

  def test_unpack_of_every_truncation_raises_eof_error
    full = MP.pack(MsgpackTestData::SMALL)
    (0...full.bytesize).each do |n|
      assert_raises(EOFError, "first #{n} of #{full.bytesize} bytes") { MP.unpack(full.byteslice(0, n), allow_unknown_ext: true) }
    end
    assert_strict decoded(MsgpackTestData::SMALL), MP.unpack(full, allow_unknown_ext: true)
  end

  def test_unpack_of_an_ext_without_allow_unknown_ext_raises
    [unhex("d40501"), MP.pack([1, EV.new(-5, "abc")])].each do |bytes|
      e = assert_raises(MP::UnknownExtTypeError) { MP.unpack(bytes) }
      assert_kind_of MP::UnpackError, e
    end
  end

  # ---- unpack options -----------------------------------------------------------------

  def test_symbolize_keys
    obj = { "a" => { "b" => 1, 2 => "c" }, "list" => [{ "d" => "e" }], 3 => nil }
    got = MP.unpack(MP.pack(obj), symbolize_keys: true)
    assert_strict({ a: { b: 1, 2 => "c" }, list: [{ d: "e" }], 3 => nil }, got)
  end

  def test_freeze_freezes_every_object
    obj = { "a" => ["x", "y".b, { "z" => "w" }, EV.new(1, "p")], "s" => "t" }
    got = MP.unpack(MP.pack(obj), freeze: true, allow_unknown_ext: true)
    walk = lambda do |o, path|
      assert_predicate o, :frozen?, path
      case o
      when Array then o.each_with_index { |v, i| walk.call(v, "#{path}[#{i}]") }
      when Hash then o.each { |k, v| walk.call(k, "#{path} key"); walk.call(v, "#{path}[#{k}]") }
      when EV then walk.call(o.payload, "#{path}.payload")
      end
    end
    walk.call(got, "root")
  end

  def test_without_freeze_values_are_mutable
    got = MP.unpack(MP.pack({ "k" => ["v", "b".b] }))
    refute_predicate got, :frozen?
    refute_predicate got["k"], :frozen?
    refute_predicate got["k"][0], :frozen?
    refute_predicate got["k"][1], :frozen?
    got["k"][0] << "!"
    assert_equal "v!", got["k"][0]
  end

  def test_allow_unknown_ext_gives_extension_values
    got = MP.unpack(unhex("92d40541c7020661 62".delete(" ")), allow_unknown_ext: true)
    assert_strict [EV.new(5, "A".b), EV.new(6, "ab".b)], got
  end

  # ---- GC -------------------------------------------------------------------------------

  def test_pack_and_unpack_under_gc_stress_and_compaction
    obj = MsgpackTestData::SMALL
    packed = MP.pack(obj)
    got = nil
    begin
      GC.stress = true
      got = MP.unpack(MP.pack(obj), allow_unknown_ext: true)
    ensure
      GC.stress = false
    end
    assert_strict decoded(obj), got
    5.times do
      GC.compact
      assert_strict decoded(obj), MP.unpack(packed, allow_unknown_ext: true, freeze: true)
    end
  end
end

# ---- streams, in every mode -------------------------------------------------------------

module MsgpackContract
  include RingspunTest
  include MsgpackAssertions

  SP = RingspunTest::StreamPeers
  D = MsgpackTestData

  # ---- helpers ------------------------------------------------------------------------

  def read_all(io, **opts)
    got = []
    ret = io.msgpack_each(**opts) { |o| got << o }
    assert_same io, ret, "msgpack_each returns the IO"
    got
  end

  # ---- against the gem ----------------------------------------------------------------

  def gem_stream
    cached(:gem_stream) { D::OBJECTS.map { |o| MessagePack.pack(to_gem(o)) }.join.b }
  end

  SP::KINDS.each do |kind|
    define_method("test_msgpack_each_over_#{kind}_decodes_the_gems_stream_of_every_boundary") do
      bytes = gem_stream
      in_mode do
        SP.with_pair(kind) do |r, w|
          writer = go { SP.trickle(w, bytes, [1, 3, 4096, 65_536, 100_000, 17]) }
          got = read_all(r, allow_unknown_ext: true)
          writer.value
          assert_objects D::OBJECTS, got
          assert_no_pending_operations
        end
      end
    end
  end

  def test_msgpack_write_of_every_boundary_is_read_by_the_gem
    in_mode do
      SP.with_pair(:unix) do |r, w|
        writer = go do
          n = w.msgpack_write(*D::OBJECTS)
          w.close
          n
        end
        got = []
        u = MessagePack::Unpacker.new(allow_unknown_ext: true)
        while (data = r.read(65_536))
          u.feed_each(data) { |o| got << from_gem(o) }
        end
        assert_equal gem_stream.bytesize, writer.value, "bytes written"
        assert_objects D::OBJECTS, got
      end
    end
  end

  def test_msgpack_write_writes_all_objects_in_one_stream_and_returns_the_byte_count
    in_mode do
      SP.with_pair(:pipe) do |r, w|
        n = w.msgpack_write(1, "two", [3], { "four" => 4.0 })
        w.close
        assert_equal "01a374776f9103" + "81a4666f7572cb4010000000000000", hex(r.read)
        assert_equal 22, n
        assert_equal 0, r.msgpack_each { flunk "nothing to read" }.read.size
      end
    end
  end

  # ---- against Debian's Python -------------------------------------------------------------

  PY_PEER = <<~PY
    import struct, sys
    import msgpack
    sys.path.insert(0, sys.argv[2])
    from expected import EXPECTED

    def fail(msg):
        sys.stderr.write(msg + "\\n")
        sys.exit(1)

    def same(a, b, path):
        if type(a) is not type(b):
            fail("%s: %s expected, got %s" % (path, type(a).__name__, type(b).__name__))
        if isinstance(a, float):
            if struct.pack(">d", a) != struct.pack(">d", b):
                fail("%s: float %r != %r" % (path, a, b))
        elif isinstance(a, list):
            if len(a) != len(b):
                fail("%s: %d elements expected, got %d" % (path, len(a), len(b)))
            for i, (x, y) in enumerate(zip(a, b)):
                same(x, y, "%s[%d]" % (path, i))
        elif isinstance(a, dict):
            if len(a) != len(b):
                fail("%s: %d entries expected, got %d" % (path, len(a), len(b)))
            for i, ((ka, va), (kb, vb)) in enumerate(zip(a.items(), b.items())):
                same(ka, kb, "%s key %d" % (path, i))
                same(va, vb, "%s[%r]" % (path, ka))
        elif isinstance(a, msgpack.ExtType):
            if a.code != b.code or a.data != b.data:
                fail("%s: %r != %r" % (path, a, b))
        elif a != b:
            fail("%s: %.80r != %.80r" % (path, a, b))

    mode = sys.argv[1]
    out = sys.stdout.buffer
    if mode == "check":
        n = 0
        for obj in msgpack.Unpacker(sys.stdin.buffer, raw=False, strict_map_key=False):
            if n >= len(EXPECTED):
                fail("more objects than the %d expected" % len(EXPECTED))
            same(EXPECTED[n], obj, "object %d" % n)
            n += 1
        if n != len(EXPECTED):
            fail("%d objects expected, got %d" % (len(EXPECTED), n))
        out.write(b"ok %d\\n" % n)
    elif mode == "emit":
        for obj in EXPECTED:
            out.write(msgpack.packb(obj, use_bin_type=True))
    elif mode == "emit32":
        for obj in EXPECTED:
            out.write(msgpack.packb(obj, use_single_float=True))
    out.flush()
  PY

  # A Python literal for a Ruby object (our ExtensionValue as ExtType).
  def py(obj)
    case obj
    when nil then "None"
    when true then "True"
    when false then "False"
    when Integer then obj.to_s
    when Float then "struct.unpack('>d', bytes.fromhex('#{hex([obj].pack('G'))}'))[0]"
    when Symbol then py(obj.to_s)
    when String
      obj.encoding == Encoding::BINARY ? "bytes.fromhex('#{hex(obj)}')" : "bytes.fromhex('#{hex(obj)}').decode('utf-8')"
    # The big boundary containers as comprehensions: Python compiles a
    # 65,536-entry literal slowly.
    when Array
      return "[i % 128 for i in range(#{obj.size})]" if obj.size > 1000 && obj == D.list(obj.size)

      "[#{obj.map { |o| py(o) }.join(', ')}]"
    when Hash
      return "{i: (None if i % 3 == 0 else i % 100) for i in range(#{obj.size})}" if obj.size > 1000 && obj == D.map(obj.size)

      "{#{obj.map { |k, v| "#{py(k)}: #{py(v)}" }.join(', ')}}"
    when D::EV then "msgpack.ExtType(#{obj.type}, #{py(obj.payload.b)})"
    else raise ArgumentError, "no Python literal for #{obj.class}"
    end
  end

  # Starts the Python peer with `objs` as EXPECTED; yields its stdin and
  # stdout; returns its stderr after checking it exited 0.
  def with_python(how, objs)
    reason = SP.python_msgpack_missing
    skip reason if reason

    Dir.mktmpdir("ringspun-py") do |dir|
      make = -> { objs.map { |o| py(o) }.join(",\n") }
      literal = objs.frozen? ? cached([:python, objs.object_id], &make) : make.call
      File.write(File.join(dir, "expected.py"), "import struct, msgpack\nEXPECTED = [#{literal}]\n")
      File.write(File.join(dir, "peer.py"), PY_PEER)
      in_r, in_w = IO.pipe
      out_r, out_w = IO.pipe
      err_r, err_w = IO.pipe
      begin
        [in_w, out_r].each(&:binmode)
        pid = Process.spawn(SP::PYTHON, File.join(dir, "peer.py"), how, dir, in: in_r, out: out_w, err: err_w)
        [in_r, out_w, err_w].each(&:close)
        yield in_w, out_r
        in_w.close unless in_w.closed?
        out_r.read
        err = err_r.read
        _, status = Process.wait2(pid)
        pid = nil
        assert_predicate status, :success?, "python #{how}: #{err}"
        err
      ensure
        [in_r, in_w, out_r, out_w, err_r, err_w].each { |io| io.close unless io.closed? }
        if pid
          Process.kill(:KILL, pid)
          Process.wait(pid)
        end
      end
    end
  end

  # Every boundary object, but with ext types 0..127: Python's ExtType
  # refuses the negative ones (reserved by the format; -1 is its Timestamp).
  def python_objects
    cached(:python_objects) { D::OBJECTS.map { |o| python_safe(o) }.freeze }
  end

  def python_safe(obj)
    case obj
    when D::EV then obj.type.negative? ? D::EV.new(obj.type + 128, obj.payload) : obj
    when Array then obj.map { |o| python_safe(o) }
    when Hash then obj.to_h { |k, v| [python_safe(k), python_safe(v)] }
    else obj
    end
  end

  def test_python_decodes_our_stream_of_every_boundary
    in_mode do
      report = nil
      with_python("check", python_objects) do |stdin, stdout|
        writer = go do
          n = stdin.msgpack_write(*python_objects)
          stdin.close
          n
        end
        report = stdout.read
        assert_operator writer.value, :>, 1_000_000
      end
      assert_equal "ok #{python_objects.size}\n", report
    end
  end

  def test_we_decode_pythons_stream_of_every_boundary
    in_mode do
      got = nil
      with_python("emit", python_objects) do |stdin, stdout|
        stdin.close
        got = read_all(stdout, allow_unknown_ext: true)
      end
      assert_objects python_objects, got
    end
  end

  def test_we_decode_pythons_float32
    floats = [1.5, -0.0, 0.1, -3.75, 3.4028234663852886e+38, 1e-40, Float::INFINITY, -Float::INFINITY]
    in_mode do
      raw = nil
      with_python("emit32", floats) do |stdin, stdout|
        stdin.close
        raw = stdout.read.b
      end
      assert_equal floats.size * 5, raw.bytesize
      assert_equal ["ca"] * floats.size, Array.new(floats.size) { |i| hex(raw.byteslice(i * 5, 1)) }, "Python packed float32"
      SP.with_pair(:unix) do |r, w|
        w.write(raw)
        w.close
        got = read_all(r)
        floats.each_with_index { |f, i| assert_strict [f].pack("g").unpack1("g"), got[i], "float32 #{f}" }
      end
    end
  end

  # ---- a message split at every byte offset ---------------------------------------------

  %i[unix pipe].each do |kind|
    define_method("test_a_message_split_at_every_byte_offset_over_#{kind}") do
      msg = MsgpackAssertions::MP.pack(D::SMALL)
      splits = (1...msg.bytesize).to_a
      in_mode do
        SP.with_pair(kind) do |r, w|
          writer = go do
            splits.each do |k|
              w.write(msg.byteslice(0, k))
              sleep 0.001
              w.write(msg.byteslice(k..))
              sleep 0.001
            end
            w.close
          end
          got = read_all(r, allow_unknown_ext: true)
          writer.value
          assert_equal splits.size, got.size
          got.each_with_index { |o, i| assert_strict decoded(D::SMALL), o, "split at byte #{splits[i]}" }
          assert_no_pending_operations
        end
      end
    end
  end

  # ---- malformed and truncated streams -------------------------------------------------------

  def assert_stream_malformed_at(offset, bytes, want_before, kind: :pipe, pieces: [65_536])
    in_mode do
      SP.with_pair(kind) do |r, w|
        writer = go do
          SP.trickle(w, bytes, pieces, pause: 0.001)
        rescue Errno::EPIPE, Errno::ECONNRESET, IOError
          :reader_gone
        end
        got = []
        e = assert_raises(MP::MalformedFormatError) { r.msgpack_each { |o| got << o } }
        assert_match(/byte offset #{offset}\b/, e.message)
        assert_objects want_before, got
        r.close
        writer.value
        assert_no_pending_operations
      end
    end
  end

  def test_malformed_byte_after_whole_objects_names_its_offset
    assert_stream_malformed_at 4, MP.pack(1) + MP.pack("ab") + "\xc1".b + MP.pack(2), [1, "ab"]
  end

  def test_malformed_byte_inside_an_object_names_its_offset_and_yields_no_part_of_it
    bytes = MP.pack(true) + unhex("930102") + unhex("c1")
    assert_stream_malformed_at 4, bytes, [true]
  end

  def test_malformed_byte_after_many_reads_names_its_absolute_offset
    objs = Array.new(2000) { |i| { "i" => i, "s" => D.text(i % 40) } }
    good = objs.map { |o| MP.pack(o) }.join.b
    bytes = good + unhex("9301") + unhex("c1")
    assert_stream_malformed_at good.bytesize + 2, bytes, objs, kind: :unix, pieces: [1000, 70_000, 3]
  end

  def test_every_truncation_raises_eof_error_after_the_whole_objects
    msg = MP.pack(D::SMALL)
    in_mode do
      (1...msg.bytesize).each do |n|
        SP.with_pair(:pipe) do |r, w|
          w.write(MP.pack(42) + MP.pack("x") + msg.byteslice(0, n))
          w.close
          got = []
          assert_raises(EOFError, "first #{n} bytes of #{msg.bytesize}") do
            r.msgpack_each(allow_unknown_ext: true) { |o| got << o }
          end
          assert_objects [42, "x"], got
        end
      end
      assert_no_pending_operations
    end
  end

  # The 33rd open container fails at its header, a fix one or one with a
  # 16- or 32-bit count, empty or not, split across reads or not.
  def test_nesting_past_msgpack_c_limit_raises_stack_error_at_the_header
    ["90", "dc0000", "dd00000001" + "01", "8f", "de0001" + "0101"].each do |deepest|
      bytes = MP.pack(7) + ("91" * 32).then { |h| unhex(h) } + unhex(deepest)
      in_mode do
        SP.with_pair(:unix) do |r, w|
          writer = go do
            SP.trickle(w, bytes, [5, 3], pause: 0.001)
          rescue Errno::EPIPE, Errno::ECONNRESET, IOError
            :reader_gone
          end
          got = []
          e = assert_raises(MP::StackError, deepest) { r.msgpack_each { |o| got << o } }
          assert_match(/byte offset 33\b/, e.message, deepest)
          assert_equal [7], got
          r.close
          writer.value
        end
      end
    end
  end

  # A header may declare 2**32 - 1 elements in 5 bytes: that must cost
  # nothing until they come, and end as a truncation, as in the gem.
  def test_a_huge_declared_count_waits_for_its_elements_and_ends_in_eof_error
    %w[dd55555556 dfffffffff].each do |header|
      bytes = MP.pack(1) + unhex(header) + unhex("01" * 10)
      in_mode do
        SP.with_pair(:pipe) do |r, w|
          w.write(bytes)
          w.close
          got = []
          assert_raises(EOFError, header) { r.msgpack_each { |o| got << o } }
          assert_equal [1], got
        end
      end
      assert_raises(EOFError) { MP.unpack(unhex(header) + unhex("01" * 10)) }
    end
  end

  # An ext32 of 0xffffffff bytes: msgpack-c's length wraps to 0; we wait
  # for the bytes as the gem does.
  def test_an_ext32_of_the_largest_length_waits_and_ends_in_eof_error
    bytes = MP.pack(1) + unhex("c9ffffffff05") + "abc".b
    in_mode do
      SP.with_pair(:pipe) do |r, w|
        w.write(bytes)
        w.close
        got = []
        assert_raises(EOFError) { r.msgpack_each(allow_unknown_ext: true) { |o| got << o } }
        assert_equal [1], got
      end
    end
    assert_raises(EOFError) { MP.unpack(unhex("c9ffffffff05abc")) }
  end

  # Objects are made as msgpack-c parses, so a message's Arrays and Hashes
  # are half built while the stream waits: they must survive GC runs and
  # compaction between reads (another fiber or thread runs them).
  def test_half_parsed_messages_survive_gc_and_compaction_between_reads
    objs = Array.new(12) { |i| { "k#{i}" => [i, "v" * i, { "n" => [nil, 1.5, [true]] }], "e" => [] } }
    bytes = objs.map { |o| MP.pack(o) }.join.b
    in_mode do
      SP.with_pair(:unix) do |r, w|
        writer = go do
          bytes.bytes.each_slice(9).with_index do |piece, i|
            w.write(piece.pack("C*"))
            i.even? ? GC.compact : GC.start
          end
          w.close
        end
        got = read_all(r, freeze: true)
        writer.value
        assert_objects objs, got
        assert(got.all? { |h| h.frozen? && h["e"].frozen? && h.values.first.frozen? })
      end
    end
  end

  # Conversion errors are raised as msgpack-c reaches them, in stream order;
  # the failed message's bytes stay unread, as for malformed data.
  def test_an_unknown_ext_inside_a_message_leaves_that_message_unread
    before = MP.pack([1])
    failed = MP.pack({ "a" => [1, D::EV.new(9, "zz"), 2] })
    after = MP.pack("next")
    in_mode do
      SP.with_pair(:unix) do |r, w|
        w.write(before + failed + after)
        w.close
        got = []
        assert_raises(MP::UnknownExtTypeError) { r.msgpack_each { |o| got << o } }
        assert_equal [[1]], got
        assert_equal hex(failed + after), hex(r.read)
      end
    end
  end

  def test_an_ext_without_allow_unknown_ext_raises_after_the_objects_before_it
    in_mode do
      SP.with_pair(:unix) do |r, w|
        w.msgpack_write(1, "a", D::EV.new(9, "zz"), 2)
        w.close
        got = []
        e = assert_raises(MP::UnknownExtTypeError) { r.msgpack_each { |o| got << o } }
        assert_match(/9/, e.message)
        assert_objects [1, "a"], got
        assert_no_pending_operations
      end
    end
  end

  def test_a_reset_connection_raises_econnreset_after_the_whole_objects
    in_mode do
      SP.with_pair(:tcp) do |r, w|
        w.write(MP.pack([1, 2]) + MP.pack("three") + MP.pack("four").byteslice(0, 2))
        w.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii"))
        w.close
        got = []
        e = assert_raises(Errno::ECONNRESET) { r.msgpack_each { |o| got << o } }
        assert_includes e.message, "msgpack_each"
        assert_objects [[1, 2], "three"], got
        assert_no_pending_operations
      end
    end
  end

  # ---- options, enumerator, buffered bytes -----------------------------------------------

  def test_stream_options_symbolize_keys_freeze_allow_unknown_ext
    objs = [{ "a" => { "b" => [1, "c"] }, 5 => "d" }, ["e", { "f" => D::EV.new(-3, "g") }]]
    in_mode do
      SP.with_pair(:unix) do |r, w|
        w.msgpack_write(*objs)
        w.close
        got = read_all(r, symbolize_keys: true, freeze: true, allow_unknown_ext: true)
        assert_objects objs, got, symbolize_keys: true
        assert_equal [:a], got[0].keys.first(1)
        all = lambda do |o, &blk|
          blk.call(o)
          case o
          when Array then o.each { |v| all.call(v, &blk) }
          when Hash then o.each { |k, v| all.call(k, &blk); all.call(v, &blk) }
          when D::EV then all.call(o.payload, &blk)
          end
        end
        got.each { |obj| all.call(obj) { |o| assert_predicate o, :frozen?, o.inspect } }
      end
      SP.with_pair(:unix) do |r, w|
        w.msgpack_write({ "k" => "v" })
        w.close
        got = read_all(r)
        refute_predicate got[0], :frozen?
        refute_predicate got[0]["k"], :frozen?
      end
    end
  end

  # msgpack_each caches map keys (256 slots by their bytes, keys up to 64
  # bytes): a hit must give what a miss makes, whatever collides or moves.
  def test_repeated_and_colliding_map_keys_decode_as_on_a_miss
    long = "k" * 65
    objs = Array.new(3000) do |i|
      { "id" => i, "k#{i % 700}" => i, long => true, "" => nil, "\u00e9t\u00e9" => "x", "k#{(i * 7) % 700}" => -i }
    end
    in_mode do
      SP.with_pair(:unix) do |r, w|
        writer = go { SP.trickle(w, objs.map { |o| MP.pack(o) }.join.b, [4000, 1]) }
        got = []
        r.msgpack_each do |o|
          GC.compact if (got.size % 1000).zero?
          got << o
        end
        writer.value
        assert_objects objs, got
        got.each_slice(37).map(&:first).each do |h|
          h.each_key do |k|
            assert_predicate k, :frozen?
            assert_equal Encoding::UTF_8, k.encoding
          end
          assert_same(-"id", h.keys.first)
        end
      end
      SP.with_pair(:unix) do |r, w|
        writer = go { SP.trickle(w, objs.map { |o| MP.pack(o) }.join.b, [4000, 1]) }
        got = read_all(r, symbolize_keys: true)
        writer.value
        assert_objects objs, got, symbolize_keys: true
        assert_equal [:id, :k699, long.to_sym, :"", :"\u00e9t\u00e9"], got[699].keys.first(5)
      end
    end
  end

  def test_a_key_of_invalid_utf8_under_symbolize_keys_raises_encoding_error_after_cached_keys
    bad = unhex("81a2ff00") + unhex("01") # {"\xff\x00" => 1}
    bytes = MP.pack({ "a" => 1 }) * 3 + bad
    in_mode do
      SP.with_pair(:unix) do |r, w|
        w.write(bytes)
        w.close
        got = []
        assert_raises(EncodingError) { r.msgpack_each(symbolize_keys: true) { |o| got << o } }
        assert_equal [{ a: 1 }] * 3, got
      end
    end
  end

  def test_without_a_block_msgpack_each_returns_an_enumerator
    in_mode do
      SP.with_pair(:pipe) do |r, w|
        w.msgpack_write({ "a" => 1 }, [2], "three")
        w.close
        enum = r.msgpack_each(symbolize_keys: true)
        assert_kind_of Enumerator, enum
        assert_objects [{ a: 1 }, [2], "three"], enum.to_a, symbolize_keys: true
      end
    end
  end

  def test_msgpack_each_starts_with_the_bytes_ruby_already_buffered
    objs = Array.new(500) { |i| [i, D.text(i % 50)] }
    bytes = "header\n".b + objs.map { |o| MP.pack(o) }.join.b
    in_mode do
      SP.with_pair(:unix) do |r, w|
        writer = go { SP.trickle(w, bytes, [3000, 5]) }
        assert_equal "header\n", r.gets
        got = read_all(r)
        writer.value
        assert_objects objs, got
      end
    end
  end

  def test_break_and_exception_in_the_block_leave_nothing_in_flight
    objs = Array.new(100) { |i| { "i" => i } }
    in_mode do
      SP.with_pair(:unix) do |r, w|
        w.msgpack_write(*objs)
        got = []
        ret = r.msgpack_each do |o|
          got << o
          break :enough if got.size == 10
        end
        assert_equal :enough, ret
        assert_objects objs.first(10), got
        assert_no_pending_operations
      end
      SP.with_pair(:pipe) do |r, w|
        w.msgpack_write(*objs)
        boom = MyError.new("object 3")
        raised = assert_raises(MyError) { r.msgpack_each { |o| raise boom if o["i"] == 3 } }
        assert_same boom, raised
        assert_no_pending_operations
      end
    end
  end

  def test_msgpack_each_under_gc_stress_and_compaction
    objs = [D::SMALL, [1, "two", { "three" => 3.0 }], "x" * 300]
    bytes = objs.map { |o| MP.pack(o) }.join.b
    in_mode do
      SP.with_pair(:unix) do |r, w|
        w.write(bytes)
        w.close
        got = []
        begin
          GC.stress = true
          r.msgpack_each(allow_unknown_ext: true) { |o| got << o }
        ensure
          GC.stress = false
        end
        assert_objects objs, got
      end
      SP.with_pair(:pipe) do |r, w|
        writer = go { SP.trickle(w, bytes * 3, [7, 100], pause: 0.001) }
        got = []
        r.msgpack_each(allow_unknown_ext: true) do |o|
          GC.compact
          got << o
        end
        writer.value
        assert_objects objs * 3, got
      end
    end
  end
end

RingspunTest::PrimitiveModes.define("TestMsgpack", MsgpackContract)
