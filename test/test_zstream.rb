# frozen_string_literal: true

require_relative "test_helper"
require_relative "support/primitive_modes"
require_relative "support/splice_zstream_support"
require "stringio"
require "tempfile"
require "zlib"

# Streaming compression (issue 4, "Tests"): IO.gzip, IO.gunzip, IO.deflate,
# IO.inflate. ZstreamContract runs in all four modes (io_uring, epoll, no
# scheduler, Async); the 100 MiB round trip runs in one mode only; options,
# argument errors and TLS sinks do not depend on the mode.

# gzip files made by other programs (gzip -9, gzip -1, pigz, Python) and by
# hand (FEXTRA, FHCRC, FNAME, FCOMMENT per RFC 1952), built once per process.
module ZstreamFixtures
  extend RingspunTest::SpliceZstreamSupport

  MTIME = 1_700_000_000 # the source files' mtime, which gzip and pigz store

  # RFC 1952 member with every optional header field we ask for. `extra` is
  # the whole FEXTRA payload (its subfields), FHCRC is the low 16 bits of the
  # CRC-32 of the header bytes before it.
  def self.handmade(data, extra: nil, name: nil, comment: nil, hcrc: false, mtime: 0, xfl: 0, os: 3, level: 6)
    flg = 0
    flg |= 0x02 if hcrc
    flg |= 0x04 if extra
    flg |= 0x08 if name
    flg |= 0x10 if comment
    header = [0x1f, 0x8b, 8, flg, mtime, xfl, os].pack("CCCCVCC")
    header << [extra.bytesize].pack("v") << extra if extra
    header << name.b << "\0" if name
    header << comment.b << "\0" if comment
    header << [Zlib.crc32(header) & 0xffff].pack("v") if hcrc
    raw = Zlib::Deflate.new(level, -Zlib::MAX_WBITS)
    body = raw.deflate(data, Zlib::FINISH)
    raw.close
    header + body + [Zlib.crc32(data), data.bytesize & 0xffff_ffff].pack("VV")
  end

  # Two FEXTRA subfields, the second long enough to span many small reads.
  EXTRA = "AP".b + [4].pack("v") + "abcd" + "Rs".b + [600].pack("v") + ("x" * 600)

  class << self
    # name => { path:, data:, info: (what gunzip's info must hold) }
    def all
      @all ||= build
    end

    private

    def dir
      @dir ||= Dir.mktmpdir("ringspun-zstream-fixtures").tap do |d|
        owner = Process.pid
        at_exit { FileUtils.rm_rf(d) if Process.pid == owner }
      end
    end

    # A source file with a known name and mtime; the tool compresses it in
    # place (keeping it) and writes <name>.gz.
    def source(name, data)
      path = File.join(dir, name)
      File.binwrite(path, data)
      File.utime(MTIME, MTIME, path)
      path
    end

    def run!(*cmd)
      out, err, status = capture(*cmd)
      raise "#{cmd.join(' ')} failed: #{err}" unless status.success?

      out
    end

    def build
      fixtures = {}
      gz9 = text(101, 300 * KIB + 1)
      run!("gzip", "-9", "-k", "-f", source("gzip9.txt", gz9))
      fixtures["gzip -9"] = { path: File.join(dir, "gzip9.txt.gz"), data: gz9,
                              info: { mtime: Time.at(MTIME), orig_name: "gzip9.txt", comment: nil, os: 3, level: 9 } }

      gz1 = random_bytes(102, 100 * KIB + 3)
      run!("gzip", "-1", "-k", "-f", source("gzip1.bin", gz1))
      fixtures["gzip -1"] = { path: File.join(dir, "gzip1.bin.gz"), data: gz1,
                              info: { mtime: Time.at(MTIME), orig_name: "gzip1.bin", comment: nil, os: 3, level: 1 } }

      # -b 128: 128 KiB blocks compressed by 2 threads and joined.
      pz = text(103, MIB + 7)
      run!("pigz", "-9", "-k", "-f", "-p", "2", "-b", "128", source("pigz.txt", pz))
      fixtures["pigz"] = { path: File.join(dir, "pigz.txt.gz"), data: pz,
                           info: { mtime: Time.at(MTIME), orig_name: "pigz.txt", comment: nil, os: 3, level: 9 } }

      py = text(104, 200 * KIB + 5)
      py_src = source("python.txt", py)
      py_gz = File.join(dir, "python.txt.gz")
      run!(PYTHON, "-c", <<~PY, py_src, py_gz)
        import gzip, sys
        data = open(sys.argv[1], "rb").read()
        with open(sys.argv[2], "wb") as raw:
            with gzip.GzipFile(filename="python.txt", mode="wb", compresslevel=9, fileobj=raw, mtime=1500000000) as g:
                g.write(data)
      PY
      fixtures["python"] = { path: py_gz, data: py,
                             info: { mtime: Time.at(1_500_000_000), orig_name: "python.txt", comment: nil,
                                     os: File.binread(py_gz, 1, 9).ord, level: 9 } } # CPython writes OS 255

      # Members by three programs, then zero padding (as tape archives pad).
      multi = File.join(dir, "multi.gz")
      File.binwrite(multi, [fixtures["gzip -1"], fixtures["pigz"], fixtures["python"]].map { |f| File.binread(f[:path]) }.join + ("\0" * 1024))
      fixtures["multi-member"] = { path: multi, data: gz1 + pz + py, info: fixtures["gzip -1"][:info] }

      hand = text(105, 64 * KIB + 11)
      hand_path = File.join(dir, "hand.gz")
      File.binwrite(hand_path, handmade(hand, extra: EXTRA, name: "hand made.txt", comment: "FEXTRA, FNAME, FCOMMENT and FHCRC",
                                              hcrc: true, mtime: 1_234_567_890, xfl: 2, os: 11))
      fixtures["handmade FEXTRA+FHCRC"] = { path: hand_path, data: hand,
                                            info: { mtime: Time.at(1_234_567_890), orig_name: "hand made.txt",
                                                    comment: "FEXTRA, FNAME, FCOMMENT and FHCRC", os: 11, level: 9 } }

      extra_only = text(106, 5 * KIB)
      extra_path = File.join(dir, "extra.gz")
      File.binwrite(extra_path, handmade(extra_only, extra: EXTRA, mtime: 7, xfl: 4, os: 0, level: 1))
      fixtures["handmade FEXTRA only"] = { path: extra_path, data: extra_only,
                                           info: { mtime: Time.at(7), orig_name: nil, comment: nil, os: 0, level: 1 } }

      hcrc_only = random_bytes(107, 3 * KIB)
      hcrc_path = File.join(dir, "hcrc.gz")
      File.binwrite(hcrc_path, handmade(hcrc_only, hcrc: true, mtime: 0, xfl: 0, os: 3))
      fixtures["handmade FHCRC only"] = { path: hcrc_path, data: hcrc_only,
                                          info: { mtime: Time.at(0), orig_name: nil, comment: nil, os: 3, level: nil } }
      fixtures
    end
  end
end

module ZstreamContract
  include RingspunTest::SpliceZstreamSupport

  SIZES = [0, 1, (16 * KIB) - 1, 16 * KIB, MIB + 7].freeze

  def setup
    super
    @dir = Dir.mktmpdir("ringspun-zstream")
  end

  def teardown
    super
  ensure
    FileUtils.rm_rf(@dir) if @dir
  end

  def data_file(name, data)
    path = File.join(@dir, name)
    File.binwrite(path, data)
    path
  end

  def payload(kind, size)
    kind == :text ? text(size + 1, size) : random_bytes(size + 2, size)
  end

  # ---- round trips ------------------------------------------------------------------------------

  # gzip: file -> file; check with Zlib; gunzip: file -> socket, drained by
  # another task.
  def gzip_round_trip(kind, size)
    data = payload(kind, size)
    path = data_file("src.bin", data)
    gz = File.join(@dir, "src.bin.gz")
    in_mode do
      written = File.open(path, "rb") { |f| File.open(gz, "wb") { |o| IO.gzip(f, o) } }
      assert_equal File.size(gz), written
      assert_equal sha256(data), sha256(zlib_gunzip(File.binread(gz)))

      a, b = unix_pair
      reader = go { drain(b) }
      out = File.open(gz, "rb") { |f| IO.gunzip(f, a) }
      a.close_write
      assert_equal data.bytesize, out
      assert_equal [data.bytesize, sha256(data)], reader.value
      assert_no_pending_operations
    ensure
      close_all(a, b)
    end
  end

  # deflate: pipe (written by another task) -> String; inflate: String ->
  # pipe, drained by another task.
  def deflate_round_trip(kind, size)
    data = payload(kind, size)
    in_mode do
      r, w = IO.pipe
      writer = go { w.write(data).tap { w.close } }
      z = String.new
      written = IO.deflate(r, z)
      assert_equal z.bytesize, written
      writer.value
      assert_equal sha256(data), sha256(zlib_inflate(z))

      r2, w2 = IO.pipe
      reader = go { drain(r2) }
      assert_equal data.bytesize, IO.inflate(z, w2)
      w2.close
      assert_equal [data.bytesize, sha256(data)], reader.value
      assert_no_pending_operations
    ensure
      close_all(r, w, r2, w2)
    end
  end

  SIZES.each do |size|
    %i[text random].each do |kind|
      define_method("test_gzip_round_trip_#{kind}_#{size}_bytes") { gzip_round_trip(kind, size) }
      define_method("test_deflate_round_trip_#{kind}_#{size}_bytes") { deflate_round_trip(kind, size) }
    end
  end

  # ---- interoperability ----------------------------------------------------------------------------

  # Our gzip read by gzip(1), CPython's gzip module and Zlib::GzipReader.
  def test_our_gzip_is_read_by_gzip_python_and_zlib
    cases = {
      "empty" => "",
      "one" => "x",
      "text" => text(111, MIB + 7),
      "random" => random_bytes(112, (16 * KIB) - 1)
    }
    files = {}
    in_mode do
      cases.each_with_index do |(name, data), i|
        src = data_file("#{name}.bin", data)
        files[name] = File.join(@dir, "#{name}.gz")
        File.open(src, "rb") do |f|
          File.open(files[name], "wb") do |o|
            IO.gzip(f, o, level: 9, orig_name: "#{name}.bin", comment: "case #{i}", mtime: 1_600_000_000 + i)
          end
        end
      end
      assert_no_pending_operations
    end

    py_out, py_err, py_status = capture(PYTHON, "-c", <<~PY, *files.values)
      import gzip, hashlib, sys
      for path in sys.argv[1:]:
          with gzip.GzipFile(path, "rb") as g:
              data = g.read()
              print(hashlib.sha256(data).hexdigest(), len(data), g.mtime)
    PY
    assert py_status.success?, py_err
    py_lines = py_out.lines.map(&:split)

    cases.each_with_index do |(name, data), i|
      out, err, status = capture("gzip", "-d", "-c", files[name])
      assert status.success?, "gzip -d #{name}: #{err}"
      assert_equal sha256(data), sha256(out), "gzip -d #{name}"
      listing, = capture("gzip", "-l", "-N", files[name])
      assert_match(/#{Regexp.escape(name)}\.bin$/, listing, "gzip -lN sees the stored name")

      assert_equal [sha256(data), data.bytesize.to_s, (1_600_000_000 + i).to_s], py_lines[i], "python #{name}"

      Zlib::GzipReader.open(files[name]) do |gzr|
        assert_equal sha256(data), sha256(gzr.read), "GzipReader #{name}"
        assert_equal "#{name}.bin", gzr.orig_name
        assert_equal "case #{i}", gzr.comment
        assert_equal Time.at(1_600_000_000 + i), gzr.mtime
        assert_equal Zlib::BEST_COMPRESSION, gzr.level
        assert_equal Zlib::OS_UNIX, gzr.os_code
      end
    end
  end

  # Files by gzip -9, gzip -1, pigz, Python, multi-member and handmade
  # headers, each read by our gunzip from a file, with its info hash.
  def test_gunzip_reads_files_made_by_other_programs
    fixtures = ZstreamFixtures.all
    in_mode do
      fixtures.each do |name, fx|
        info = {}
        out = File.join(@dir, "out.bin")
        n = File.open(fx[:path], "rb") { |f| File.open(out, "wb") { |o| IO.gunzip(f, o, info) } }
        assert_equal fx[:data].bytesize, n, name
        assert_equal sha256(fx[:data]), file_sha256(out), name
        assert_equal fx[:info], info, name
      end
      assert_no_pending_operations
    end
  end

  # Header fields split across reads: the bytes come one by one from an
  # object with readpartial, and from a pipe written a byte at a time.
  def test_gunzip_parses_headers_whatever_the_read_boundaries
    fx = ZstreamFixtures.all["handmade FEXTRA+FHCRC"]
    gz = File.binread(fx[:path])
    in_mode do
      [[1], [3, 7], [2, 5000]].each do |sizes|
        info = {}
        out = String.new
        assert_equal fx[:data].bytesize, IO.gunzip(ChunkSource.new(gz, sizes: sizes), out, info), sizes.inspect
        assert_equal sha256(fx[:data]), sha256(out), sizes.inspect
        assert_equal fx[:info], info, sizes.inspect
      end

      r, w = IO.pipe
      header_end = 700 # FEXTRA is ~610 bytes: the whole header and then some
      writer = go do
        gz.byteslice(0, header_end).each_char do |c|
          w.write(c)
          sleep 0.0005 if c.ord.odd? # now and then, let the reader see a partial header
        end
        w.write(gz.byteslice(header_end..))
        w.close
      end
      info = {}
      out = String.new
      assert_equal fx[:data].bytesize, IO.gunzip(r, out, info)
      writer.value
      assert_equal sha256(fx[:data]), sha256(out)
      assert_equal fx[:info], info
      assert_no_pending_operations
    ensure
      close_all(r, w)
    end
  end

  # Concatenated members arriving through a socket in uneven pieces, so
  # member boundaries fall inside reads.
  def test_gunzip_decodes_every_member_from_a_socket
    fx = ZstreamFixtures.all["multi-member"]
    gz = File.binread(fx[:path])
    in_mode do
      a, b = unix_pair
      writer = go do
        rng = Random.new(7)
        pos = 0
        while pos < gz.bytesize
          n = 1 + rng.rand(40_000)
          a.write(gz.byteslice(pos, n))
          pos += n
        end
        a.close_write
      end
      sink = DigestSink.new
      info = {}
      assert_equal fx[:data].bytesize, IO.gunzip(b, sink, info)
      writer.value
      assert_equal fx[:data].bytesize, sink.bytes
      assert_equal sha256(fx[:data]), sink.hexdigest
      assert_equal fx[:info], info # the first member's header
      assert_no_pending_operations
    ensure
      close_all(a, b)
    end
  end

  # Our gzip, our gunzip: the info hash for each level hint and option.
  def test_gunzip_info_hash_of_our_own_gzip
    data = text(121, 50 * KIB)
    in_mode do
      [[9, 9], [1, 1], [6, nil]].each do |level, hint|
        r, w = IO.pipe
        zipper = go { IO.gzip(data, w, level: level, mtime: Time.at(1_111_111_111), orig_name: "n#{level}", comment: "c#{level}").tap { w.close } }
        info = { untouched: true }
        out = String.new
        assert_equal data.bytesize, IO.gunzip(r, out, info)
        zipper.value
        assert_equal data, out
        assert_equal({ untouched: true, mtime: Time.at(1_111_111_111), orig_name: "n#{level}", comment: "c#{level}", os: 3, level: hint }, info)
        assert_kind_of Time, info[:mtime]
      ensure
        close_all(r, w)
      end
      assert_no_pending_operations
    end
  end

  # ---- slow sources --------------------------------------------------------------------------------

  TRICKLE = Array.new(25) { |i| "line #{i}: #{WORDS.rotate(i * 7).first(9).join(' ')}\n" }.freeze

  # End of input is a read of 0 bytes, never a short read.
  def test_slow_trickling_source_is_compressed_completely
    in_mode do
      r, w = IO.pipe
      writer = go do
        TRICKLE.each do |line|
          w.write(line)
          sleep 0.004
        end
        w.close
      end
      gz = String.new
      written = IO.gzip(r, gz)
      assert_equal gz.bytesize, written
      writer.value
      assert_equal TRICKLE.join, zlib_gunzip(gz)

      a, b = unix_pair
      writer = go do
        TRICKLE.each do |line|
          a.write(line)
          sleep 0.004
        end
        a.close_write
      end
      z = String.new
      written = IO.deflate(b, z)
      assert_equal z.bytesize, written
      writer.value
      assert_equal TRICKLE.join, zlib_inflate(z)
      assert_no_pending_operations
    ensure
      close_all(r, w, a, b)
    end
  end

  def test_slow_trickling_compressed_source_is_decompressed_completely
    data = TRICKLE.join * 40
    gz = Zlib.gzip(data)
    in_mode do
      r, w = IO.pipe
      writer = go do
        (0...gz.bytesize).step(97) do |pos|
          w.write(gz.byteslice(pos, 97))
          sleep 0.003
        end
        w.close
      end
      out = String.new
      assert_equal data.bytesize, IO.gunzip(r, out)
      writer.value
      assert_equal data, out
      assert_no_pending_operations
    ensure
      close_all(r, w)
    end
  end

  # ---- corrupt input ---------------------------------------------------------------------------------

  def corrupt_gzip
    @corrupt_gzip ||= Zlib.gzip(text(131, 64 * KIB), level: 6)
  end

  def with_byte(data, index)
    copy = data.b
    copy.setbyte(index, yield(copy.getbyte(index)))
    copy
  end

  # Feeds `bytes` to gunzip (or inflate) from a file, in this mode.
  def gunzip_file(bytes, method = :gunzip)
    path = data_file("in.gz", bytes)
    File.open(path, "rb") do |f|
      File.open(File::NULL, "wb") { |null| IO.public_send(method, f, null) }
    end
  end

  # The error is raised, and nothing is left in flight once it has been.
  def assert_decoding_raises(klass, what = nil, &block)
    # The message only when there is one: minitest 6 takes every argument but a last
    # String as an exception class, and raises TypeError for a nil.
    error = assert_raises(klass, *what, &block)
    assert_no_pending_operations("#{what || klass} (#{error.message}): operations still handed out")
    error
  end

  def test_truncated_input_raises_buf_error
    gz = corrupt_gzip
    z = Zlib::Deflate.deflate(text(132, 64 * KIB))
    in_mode do
      [5, 10, 11, gz.bytesize / 2, gz.bytesize - 8, gz.bytesize - 4, gz.bytesize - 1].each do |len|
        assert_decoding_raises(Zlib::BufError, "gzip cut at #{len}") { gunzip_file(gz.byteslice(0, len)) }
      end
      [1, 2, z.bytesize / 2, z.bytesize - 1].each do |len|
        assert_decoding_raises(Zlib::BufError, "zlib cut at #{len}") { gunzip_file(z.byteslice(0, len), :inflate) }
      end
      assert_decoding_raises(Zlib::BufError) { gunzip_file("", :inflate) }
      assert_no_pending_operations
    end
  end

  def test_flipped_bytes_raise_their_zlib_error_class
    gz = corrupt_gzip
    len = gz.bytesize
    z = Zlib::Deflate.deflate(text(133, 64 * KIB))
    hand = File.binread(ZstreamFixtures.all["handmade FHCRC only"][:path])
    in_mode do
      # Data: the first deflate block header gets BTYPE 11, which is reserved.
      assert_decoding_raises(Zlib::DataError) { gunzip_file(with_byte(gz, 10) { |b| b | 0x06 }) }
      assert_decoding_raises(Zlib::GzipFile::CRCError) { gunzip_file(with_byte(gz, len - 8) { |b| b ^ 0x01 }) }
      assert_decoding_raises(Zlib::GzipFile::CRCError) { gunzip_file(with_byte(gz, len - 5) { |b| b ^ 0x80 }) }
      assert_decoding_raises(Zlib::GzipFile::LengthError) { gunzip_file(with_byte(gz, len - 4) { |b| b ^ 0x01 }) }
      assert_decoding_raises(Zlib::GzipFile::LengthError) { gunzip_file(with_byte(gz, len - 1) { |b| b ^ 0x10 }) }
      # Header: magic, method, reserved flag bits.
      assert_decoding_raises(Zlib::GzipFile::Error) { gunzip_file(with_byte(gz, 0) { |b| b ^ 0x40 }) }
      assert_decoding_raises(Zlib::GzipFile::Error) { gunzip_file(with_byte(gz, 1) { |b| b ^ 0x01 }) }
      assert_decoding_raises(Zlib::GzipFile::Error) { gunzip_file(with_byte(gz, 2) { 7 }) }
      assert_decoding_raises(Zlib::GzipFile::Error) { gunzip_file(with_byte(gz, 3) { |b| b | 0x20 }) }
      # Header CRC (FHCRC) that does not match the header.
      assert_decoding_raises(Zlib::GzipFile::Error) { gunzip_file(with_byte(hand, 4) { |b| b ^ 0x01 }) } # mtime, under the CRC
      # Not gzip at all, empty input, garbage after a member.
      assert_decoding_raises(Zlib::GzipFile::Error) { gunzip_file("plain text, not gzip") }
      assert_decoding_raises(Zlib::GzipFile::Error) { gunzip_file("") }
      assert_decoding_raises(Zlib::GzipFile::Error) { gunzip_file(gz + "garbage") }
      # A good member, then a bad one: the second is checked too.
      assert_decoding_raises(Zlib::GzipFile::CRCError) { gunzip_file(gz + with_byte(gz, len - 7) { |b| b ^ 0x04 }) }
      # zlib format: header check, data, Adler-32.
      assert_decoding_raises(Zlib::DataError) { gunzip_file(with_byte(z, 0) { |b| b ^ 0x01 }, :inflate) }
      assert_decoding_raises(Zlib::DataError) { gunzip_file(with_byte(z, 2) { |b| b | 0x06 }, :inflate) }
      assert_decoding_raises(Zlib::DataError) { gunzip_file(with_byte(z, z.bytesize - 1) { |b| b ^ 0x01 }, :inflate) }
      assert_no_pending_operations
    end
  end

  def test_zero_padding_after_the_last_member_is_accepted
    gz = corrupt_gzip
    data = text(131, 64 * KIB)
    in_mode do
      out = String.new
      assert_equal data.bytesize, IO.gunzip(gz + ("\0" * 5000), out)
      assert_equal data, out
      out = String.new
      assert_equal data.bytesize * 2, IO.gunzip(gz + ("\0" * 3) + gz, out)
      assert_equal data * 2, out
    end
  end

  # ---- syscall errors --------------------------------------------------------------------------------

  def test_destination_peer_gone_raises_epipe_naming_dest
    data = random_bytes(141, 4 * MIB)
    path = data_file("src.bin", data)
    in_mode do
      a, b = unix_pair
      closer = go do
        b.readpartial(64 * KIB)
        b.close
      end
      error = nil
      elapsed = self.elapsed do
        error = assert_raises(Errno::EPIPE, Errno::ECONNRESET) { File.open(path, "rb") { |f| IO.gzip(f, a, level: 1) } }
      end
      closer.value
      assert_operator elapsed, :<, 2.0
      assert_match(/gzip: dest/, error.message)
      assert_no_pending_operations
    ensure
      close_all(a, b)
    end
  end

  def test_wrong_direction_fds_raise_ebadf_naming_the_side
    in_mode do
      r, w = IO.pipe
      error = assert_raises(Errno::EBADF) { IO.gunzip(w, String.new) }
      assert_match(/gunzip: src/, error.message)
      error = assert_raises(Errno::EBADF) { IO.deflate(w.fileno, String.new) }
      assert_match(/deflate: src/, error.message)
      error = assert_raises(Errno::EBADF) { IO.gzip(text(142, 100 * KIB), r) }
      assert_match(/gzip: dest/, error.message)
      error = assert_raises(Errno::EBADF) { IO.inflate(Zlib::Deflate.deflate("abc"), r.fileno) }
      assert_match(/inflate: dest/, error.message)
      assert_no_pending_operations
    ensure
      close_all(r, w)
    end
  end

  # ---- Strings, readers, writers ----------------------------------------------------------------------

  def test_string_sources_and_destinations
    data = "Grüße, ✓ — #{text(151, 20 * KIB)}".encode("UTF-8")
    in_mode do
      gz = String.new("prefix:")
      n = IO.gzip(data, gz, mtime: 0)
      assert_equal gz.bytesize - 7, n, "appended, not replaced"
      assert gz.start_with?("prefix:")
      assert_equal data.b, zlib_gunzip(gz.byteslice(7..))
      out = String.new("head|")
      assert_equal data.bytesize, IO.gunzip(gz.byteslice(7..), out)
      assert_equal "head|".b + data.b, out.b

      z = String.new
      written = IO.deflate(data, z, level: 9)
      assert_equal z.bytesize, written
      back = String.new
      assert_equal data.bytesize, IO.inflate(z, back)
      assert_equal data.b, back.b
      empty = String.new
      assert_equal 0, IO.inflate(Zlib::Deflate.deflate(""), empty)
      assert_equal "", empty
    end
  end

  def test_objects_with_readpartial_and_write
    data = text(152, 300 * KIB + 1)
    in_mode do
      [[[1, 2, 3, 5000]], [[65_536]], [[100], :nil]].each do |sizes, eof|
        src = ChunkSource.new(data, sizes: sizes, eof: eof || :raise)
        sink = DigestSink.new(keep: true)
        n = IO.gzip(src, sink)
        assert_equal sink.bytes, n
        assert_equal data, zlib_gunzip(sink.data)

        back = DigestSink.new
        assert_equal data.bytesize, IO.gunzip(ChunkSource.new(sink.data, sizes: sizes, eof: eof || :raise), back)
        assert_equal sha256(data), back.hexdigest
      end

      z = DigestSink.new(keep: true)
      IO.deflate(ChunkSource.new(data, sizes: [777]), z)
      back = DigestSink.new
      assert_equal data.bytesize, IO.inflate(ChunkSource.new(z.data, sizes: [13]), back)
      assert_equal sha256(data), back.hexdigest
      assert_no_pending_operations
    end
  end

  def test_errors_raised_by_readers_and_writers_propagate
    data = text(153, 200 * KIB)
    failing_reader = Class.new(ChunkSource) do
      def readpartial(maxlen, buf = nil)
        raise RingspunTest::MyError, "reader failed" if calls >= 3

        super
      end
    end
    failing_writer = Class.new(DigestSink) do
      def write(*strings)
        raise RingspunTest::MyError, "writer failed" if writes >= 1

        super
      end
    end
    in_mode do
      assert_raises(RingspunTest::MyError) { IO.gzip(failing_reader.new(data, sizes: [1000]), String.new) }
      assert_raises(RingspunTest::MyError) { IO.gzip(random_bytes(154, 300 * KIB), failing_writer.new) }
      gz = Zlib.gzip(data)
      assert_raises(RingspunTest::MyError) { IO.gunzip(failing_reader.new(gz, sizes: [100]), String.new) }
      assert_raises(RingspunTest::MyError) { IO.gunzip(gz, failing_writer.new) }
      # Nothing lost: the next call works.
      out = String.new
      assert_equal data.bytesize, IO.gunzip(gz, out)
      assert_equal data, out
      assert_no_pending_operations
    end
  end

  # The article's shape: gzip into a Ringspun::Pipe in one task while
  # another decompresses from it.
  def test_gzip_into_a_ringspun_pipe_while_another_task_gunzips_it
    data = text(161, MIB + 7)
    path = data_file("src.txt", data)
    in_mode do
      pipe = Ringspun::Pipe.new
      zipper = go do
        File.open(path, "rb") { |f| IO.gzip(f, pipe) }
      ensure
        pipe.close
      end
      a, b = unix_pair
      reader = go { drain(b) }
      info = {}
      assert_equal data.bytesize, IO.gunzip(pipe, a, info)
      a.close_write
      assert_operator zipper.value, :>, 0
      assert_equal [data.bytesize, sha256(data)], reader.value
      assert_equal 3, info[:os]
      assert_no_pending_operations
    ensure
      pipe&.close
      pipe&.close_read
      close_all(a, b)
    end
  end

  # ---- interruption ------------------------------------------------------------------------------------

  def test_timeout_mid_stream_leaves_no_fd_and_no_operation
    part = Zlib.gzip(text(171, 200 * KIB)).byteslice(0, 50 * KIB)
    big = data_file("big.bin", random_bytes(172, 4 * MIB))
    in_mode do
      fds = open_fd_count
      r, w = IO.pipe # a stalled source: some data, then nothing
      w.write(text(173, 10 * KIB))
      out = File.open(File.join(@dir, "out.gz"), "wb")
      assert_raises(Timeout::Error) { Timeout.timeout(0.2) { IO.gzip(r, out) } }
      assert_no_pending_operations
      close_all(r, w)

      r, w = IO.pipe # a stalled compressed source, cut mid-stream
      writer = go { w.write(part) }
      assert_raises(Timeout::Error) { Timeout.timeout(0.2) { IO.gunzip(r, out) } }
      writer.value
      assert_no_pending_operations

      a, b = unix_pair # a stalled destination: the peer never reads
      assert_raises(Timeout::Error) { Timeout.timeout(0.2) { File.open(big, "rb") { |f| IO.gzip(f, a, level: 1) } } }
      assert_no_pending_operations
      close_all(r, w, a, b, out)
      assert_equal fds, open_fd_count

      # The pool is sound afterwards.
      again = String.new
      IO.gzip(text(174, 300 * KIB), again)
      assert_equal text(174, 300 * KIB), zlib_gunzip(again)
    ensure
      close_all(r, w, a, b, out)
    end
  end

  # ---- GC --------------------------------------------------------------------------------------------

  # Two rounds of small jobs under GC.stress (slow: a full GC at every
  # allocation, so keep them small), with GC.compact before, between and
  # after them while other tasks hold their IOs and Strings.
  def test_under_gc_stress_and_compaction
    data = text(181, 4 * KIB + 1)
    path = data_file("src.txt", data)
    good = Zlib.gzip(data)
    bad_crc = with_byte(good, good.bytesize - 8) { |b| b ^ 1 }
    deflated = Zlib::Deflate.deflate(data)
    in_mode do
      2.times do |round|
        GC.compact
        r, w = IO.pipe
        reader = go { r.read }
        # Everything the stressed part needs is made before it: only the
        # primitives run with a GC at every allocation.
        src = File.open(path, "rb")
        gz = String.new
        chunks = ChunkSource.new(deflated, sizes: [4096])
        sink = DigestSink.new
        sunk = String.new
        error = nil
        begin
          GC.stress = true
          IO.gzip(src, gz, mtime: 0)
          IO.gunzip(gz, w)
          IO.inflate(chunks, sink)
          # An error path too, in the first round (raising under GC.stress
          # is slow).
          begin
            IO.gunzip(bad_crc, sunk) if round.zero?
          rescue Zlib::Error => e
            error = e
          end
        ensure
          GC.stress = false
        end
        w.close
        GC.compact
        assert_equal data, reader.value, "round #{round}"
        assert_equal data, zlib_gunzip(gz), "round #{round}"
        assert_equal sha256(data), sink.hexdigest, "round #{round}"
        assert_kind_of Zlib::GzipFile::CRCError, error if round.zero?
      ensure
        GC.stress = false
        close_all(r, w, src)
      end
      assert_no_pending_operations
    end
  end
end

RingspunTest::PrimitiveModes.define("TestZstream", ZstreamContract)

# 100 MiB round trip. SLOW (~3 s): ONE mode only, io_uring, where read-ahead
# and write-behind are in play. Level 1: this test is about a long stream
# going through intact, levels are covered elsewhere, and level 6 on this
# small-vocabulary text would take 10 s.
module ZstreamHugeContract
  include RingspunTest::SpliceZstreamSupport

  def test_100_mib_round_trip_through_a_ringspun_pipe__one_mode_only
    data = text(191, 100 * MIB)
    dir = Dir.mktmpdir("ringspun-zstream-huge", sparse_dir)
    path = File.join(dir, "huge.txt")
    File.binwrite(path, data)
    in_mode do
      pipe = Ringspun::Pipe.new(size: MIB)
      zipper = go do
        File.open(path, "rb") { |f| IO.gzip(f, pipe, level: 1) }
      ensure
        pipe.close
      end
      a, b = unix_pair
      reader = go { drain(b, chunk: MIB) }
      assert_equal data.bytesize, IO.gunzip(pipe, a)
      a.close_write
      assert_operator zipper.value, :<, data.bytesize / 2
      assert_equal [data.bytesize, sha256(data)], reader.value
      assert_no_pending_operations
    ensure
      pipe&.close
      pipe&.close_read
      close_all(a, b)
    end
  ensure
    FileUtils.rm_rf(dir) if dir
  end
end

TestZstreamIoUring.include(ZstreamHugeContract)

# Options, the header they produce and argument errors: the mode plays no
# part, so no scheduler.
class TestZstreamOptions < RingspunTest::Case
  include RingspunTest::SpliceZstreamSupport

  SAMPLE = RingspunTest::SpliceZstreamSupport.text(201, 200 * 1024)

  def gzip(data = SAMPLE, **opts)
    out = String.new
    written = IO.gzip(data, out, **opts)
    assert_equal out.bytesize, written
    out
  end

  # The raw deflate stream inside a gzip member.
  def body(gz)
    gz.byteslice(10...-8)
  end

  def test_every_level_round_trips_and_sets_the_xfl_hint
    (-1..9).each do |level|
      gz = gzip(level: level, mtime: 0)
      assert_equal SAMPLE, zlib_gunzip(gz), "level #{level}"
      xfl = gz.getbyte(8)
      expected = { 9 => 2, 1 => 4, 0 => 4 }.fetch(level, 0)
      assert_equal expected, xfl, "XFL for level #{level}"
      next if level.zero? # stored blocks depend on how input arrives

      ref = Zlib::Deflate.new(level, -Zlib::MAX_WBITS)
      assert_equal ref.deflate(SAMPLE, Zlib::FINISH), body(gz), "level #{level}: the bytes zlib makes"
      ref.close
    end
    assert_operator gzip(level: 0).bytesize, :>, SAMPLE.bytesize
    assert_operator gzip(level: 9).bytesize, :<, gzip(level: 1).bytesize
    assert_equal gzip(mtime: 0), gzip(level: 6, mtime: 0), "level 6 is the default"
  end

  def test_every_strategy_round_trips_with_zlibs_bytes
    [Zlib::DEFAULT_STRATEGY, Zlib::FILTERED, Zlib::HUFFMAN_ONLY, Zlib::RLE, Zlib::FIXED].each do |strategy|
      gz = gzip(strategy: strategy, mtime: 0)
      assert_equal SAMPLE, zlib_gunzip(gz), "strategy #{strategy}"
      ref = Zlib::Deflate.new(6, -Zlib::MAX_WBITS, Zlib::DEF_MEM_LEVEL, strategy)
      assert_equal ref.deflate(SAMPLE, Zlib::FINISH), body(gz), "strategy #{strategy}"
      ref.close
    end
    refute_equal gzip(mtime: 0), gzip(strategy: Zlib::HUFFMAN_ONLY, mtime: 0)
  end

  def test_deflate_level_gives_zlibs_bytes
    [1, 6, 9].each do |level|
      out = String.new
      written = IO.deflate(SAMPLE, out, level: level)
      assert_equal out.bytesize, written
      assert_equal Zlib::Deflate.deflate(SAMPLE, level), out, "level #{level}"
    end
    out = String.new
    IO.deflate(SAMPLE, out)
    assert_equal Zlib::Deflate.deflate(SAMPLE, 6), out
  end

  def test_mtime_option
    t0 = Time.now.to_i
    now = gzip("x").byteslice(4, 4).unpack1("V")
    t1 = Time.now.to_i
    assert_includes t0..t1, now, "nil means now"
    assert_equal 0, gzip("x", mtime: false).byteslice(4, 4).unpack1("V")
    assert_equal 0, gzip("x", mtime: 0).byteslice(4, 4).unpack1("V")
    assert_equal 1_234_567_890, gzip("x", mtime: 1_234_567_890).byteslice(4, 4).unpack1("V")
    assert_equal 1_500_000_000, gzip("x", mtime: Time.at(1_500_000_000, 999, :millisecond)).byteslice(4, 4).unpack1("V")
    assert_equal 0xffff_ffff, gzip("x", mtime: 0xffff_ffff).byteslice(4, 4).unpack1("V")
    Zlib::GzipReader.wrap(StringIO.new(gzip("x", mtime: Time.at(1_600_000_000)))) do |gzr|
      gzr.read
      assert_equal Time.at(1_600_000_000), gzr.mtime
    end
    assert_raises(ArgumentError) { gzip("x", mtime: -1) }
    assert_raises(ArgumentError) { gzip("x", mtime: 2**32) }
    assert_raises(TypeError) { gzip("x", mtime: "yesterday") }
  end

  def test_orig_name_and_comment
    gz = gzip("payload", orig_name: "name.txt", comment: "a comment", mtime: 0)
    assert_equal 0x18, gz.getbyte(3) & 0x18, "FNAME and FCOMMENT set"
    assert_equal 3, gz.getbyte(9), "OS: Unix"
    Zlib::GzipReader.wrap(StringIO.new(gz)) do |gzr|
      assert_equal "payload", gzr.read
      assert_equal "name.txt", gzr.orig_name
      assert_equal "a comment", gzr.comment
    end
    info = {}
    assert_equal 7, IO.gunzip(gz, String.new, info)
    assert_equal({ mtime: Time.at(0), orig_name: "name.txt", comment: "a comment", os: 3, level: nil }, info)
    plain = gzip("payload", mtime: 0)
    assert_equal 0, plain.getbyte(3), "no optional fields unless asked"
    assert_raises(ArgumentError) { gzip("x", orig_name: "a\0b") }
    assert_raises(ArgumentError) { gzip("x", comment: "a\0b") }
    assert_raises(TypeError) { gzip("x", orig_name: 42) }
    assert_raises(TypeError) { gzip("x", comment: :sym) }
  end

  def test_bad_levels_and_strategies
    [10, -2, 100].each do |level|
      assert_raises(ArgumentError, "level #{level}") { gzip("x", level: level) }
      assert_raises(ArgumentError, "level #{level}") { IO.deflate("x", String.new, level: level) }
    end
    assert_raises(TypeError) { gzip("x", level: "6") }
    [99, -1].each { |s| assert_raises(ArgumentError, "strategy #{s}") { gzip("x", strategy: s) } }
  end

  def test_unknown_keywords_and_arity
    assert_raises(ArgumentError) { IO.gzip("x", String.new, lvl: 1) }
    assert_raises(ArgumentError) { IO.deflate("x", String.new, mtime: 0) }
    assert_raises(ArgumentError) { IO.deflate("x", String.new, strategy: Zlib::RLE) }
    assert_raises(ArgumentError) { IO.gzip("x") }
    assert_raises(ArgumentError) { IO.inflate("x") }
  end

  def test_frozen_string_destination
    gz = Zlib.gzip("data")
    z = Zlib::Deflate.deflate("data")
    frozen = "frozen"
    assert_raises(FrozenError) { IO.gzip("data", frozen) }
    assert_raises(FrozenError) { IO.gunzip(gz, frozen) }
    assert_raises(FrozenError) { IO.deflate("data", frozen) }
    assert_raises(FrozenError) { IO.inflate(z, frozen) }
    assert_equal "frozen", frozen
  end

  def test_bad_sources_and_destinations
    closed = File.open(File::NULL)
    closed.close
    [Object.new, 1.5, nil, :sym].each do |bad|
      assert_raises(TypeError, bad.inspect) { IO.gzip(bad, String.new) }
      assert_raises(TypeError, bad.inspect) { IO.gunzip(Zlib.gzip("x"), bad) }
      assert_raises(TypeError, bad.inspect) { IO.inflate(bad, String.new) }
    end
    assert_raises(IOError) { IO.gzip(closed, String.new) }
    assert_raises(IOError) { IO.gzip("x", closed) }
    assert_raises(IOError) { IO.gunzip(closed, String.new) }
    assert_raises(TypeError) { IO.gunzip(Zlib.gzip("x"), String.new, []) }
    assert_raises(TypeError) { IO.gunzip(Zlib.gzip("x"), String.new, "info") }
  end

  # zlib reads a String source with the GVL released: several threads may
  # compress the same String at once, and it stays the caller's to change.
  def test_one_string_source_in_four_threads_at_once
    data = SAMPLE.dup
    outs = Array.new(4) { String.new }
    outs.map { |out| Thread.new { IO.gzip(data, out, level: 9) } }.each(&:join)
    outs.each { |out| assert_equal SAMPLE, zlib_gunzip(out) }
    data << "tail"
    assert_equal "#{SAMPLE}tail", data
  end

  # A source String is bytes whatever its encoding, even where the gzip
  # header holds a valid UTF-8 character (here the mtime: C2 93), which
  # trips Ruby 3.1's own Zlib.gunzip.
  def test_a_utf8_source_string_is_read_as_bytes
    gz = gzip(SAMPLE, mtime: 0x6B0293C2)
    assert_equal "\xC2\x93".b, gz.byteslice(4, 2)
    out = String.new
    assert_equal SAMPLE.bytesize, IO.gunzip(gz.dup.force_encoding(Encoding::UTF_8), out)
    assert_equal SAMPLE, out
  end

  def test_integer_fds_and_a_tempfile
    r, w = IO.pipe
    t = Thread.new { r.read }
    assert_operator IO.gzip(SAMPLE, w.fileno), :>, 0
    w.close
    assert_equal SAMPLE, zlib_gunzip(t.value)

    tmp = Tempfile.new("ringspun-zstream")
    tmp.binmode
    tmp.write(Zlib.gzip(SAMPLE))
    tmp.flush
    tmp.rewind
    out = String.new
    assert_equal SAMPLE.bytesize, IO.gunzip(tmp, out)
    assert_equal SAMPLE, out
  ensure
    r&.close
    w&.close unless w&.closed?
    tmp&.close!
  end
end

# TLS: a destination that is an OpenSSL::SSL::SSLSocket is written through
# its own #write, so the bytes on the wire are TLS records; a TLS source is
# read through its #readpartial.
class TestZstreamTls < RingspunTest::Case
  include RingspunTest::SpliceZstreamSupport

  def test_gzip_into_an_ssl_socket_and_gunzip_out_of_one
    data = text(211, 100 * KIB + 1)
    client, server, raw_client, raw_server = ssl_pair
    reader = Thread.new do
      got = String.new
      loop { got << server.readpartial(65_536) }
    rescue EOFError
      got
    end
    written = IO.gzip(data, client)
    client.close
    got = reader.value
    assert_equal got.bytesize, written
    assert_equal data, zlib_gunzip(got)

    client, server, raw_client2, raw_server2 = ssl_pair
    writer = Thread.new do
      server.write(Zlib.gzip(data))
      server.close
    end
    out = String.new
    assert_equal data.bytesize, IO.gunzip(client, out)
    writer.join
    assert_equal data, out
  ensure
    close_all(client, server, raw_client, raw_server, raw_client2, raw_server2)
  end
end

# Bytes an IO holds in Ruby's own buffers belong to the stream, as they do
# for IO.copy_stream: what a #gets read ahead of the line it returned must
# still be compressed, and what a #write left unflushed must come first.
class TestZstreamRubyBuffers < RingspunTest::Case
  def setup
    super
    @dir = Dir.mktmpdir("ringspun-zstream-buffers")
    @path = File.join(@dir, "src.txt")
    File.binwrite(@path, "first line\n#{'rest ' * 10}")
  end

  def teardown
    super
  ensure
    FileUtils.rm_rf(@dir)
  end

  def test_gzip_after_gets_compresses_what_ruby_read_ahead
    out = String.new
    File.open(@path, "rb") do |f|
      assert_equal "first line\n", f.gets
      IO.gzip(f, out)
    end
    assert_equal "rest " * 10, zlib_gunzip(out)
  end

  def test_gzip_after_an_unflushed_write_keeps_the_order
    out = File.join(@dir, "out.bin")
    File.open(out, "wb") do |o|
      o.write("HEAD:")
      IO.gzip("body", o, mtime: 0)
    end
    bytes = File.binread(out)
    assert_equal "HEAD:", bytes.byteslice(0, 5)
    assert_equal "body", zlib_gunzip(bytes.byteslice(5..))
  end
end
