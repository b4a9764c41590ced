# frozen_string_literal: true

require "fileutils"
require "open3"
require "openssl"
require "socket"
require "tmpdir"
require "zlib"

module RingspunTest
  # Helpers shared by test/test_splice.rb and test/test_zstream.rb (and only
  # by them: owned by the splice/zlib tests). Deterministic data generators,
  # checksums, socket pairs, sinks and sources with an IO-like face, a
  # throw-away TLS pair.
  #
  # Checksums are OpenSSL's SHA-256: Ruby's own Digest::SHA256 runs at
  # ~80 MB/s on CI machines without SHA extensions in its code path, OpenSSL's
  # at ~900 MB/s, which is what lets the bulk tests hash every byte.
  module SpliceZstreamSupport
    KIB = 1024
    MIB = 1024 * KIB
    GIB = 1024 * MIB

    WORDS = %w[
      the of and to in is it that for on was with as by at from this be are or an which
      ring fiber splice pipe socket kernel buffer zlib deflate inflate header trailer
      member crc length stream chunk block scheduler backend epoll uring queue mutex
      lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor
      incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud
    ].freeze

    DATA_CACHE = {} # [kind, seed, size] => frozen String
    private_constant :DATA_CACHE

    module_function

    # ---- data ---------------------------------------------------------------------------

    # Random, incompressible bytes; the same for the same seed and size.
    def random_bytes(seed, size)
      DATA_CACHE[[:random, seed, size]] ||= Random.new(seed).bytes(size).freeze
    end

    # Deterministic, compressible text (words and newlines) of exactly `size`
    # bytes. Beyond 1 MiB it is made of rotations of a 1 MiB text, each at a
    # seeded offset, so 100 MiB takes a fraction of a second to build.
    def text(seed, size)
      DATA_CACHE[[:text, seed, size]] ||= build_text(seed, size).freeze
    end

    def build_text(seed, size)
      rng = Random.new(seed)
      base_size = [size, MIB].min
      out = String.new(capacity: size + 64, encoding: Encoding::BINARY)
      line = 0
      while out.bytesize < base_size
        line += 1
        out << "#{line}: " << Array.new(4 + rng.rand(12)) { WORDS[rng.rand(WORDS.size)] }.join(" ") << "\n"
      end
      base = out.byteslice(0, base_size)
      return base if size == base_size

      whole = String.new(capacity: size, encoding: Encoding::BINARY)
      while whole.bytesize < size
        cut = rng.rand(base_size)
        whole << base.byteslice(cut, base_size - cut) << base.byteslice(0, cut)
      end
      whole.byteslice(0, size)
    end

    def sha256(data)
      OpenSSL::Digest::SHA256.hexdigest(data)
    end

    def file_sha256(path)
      OpenSSL::Digest::SHA256.file(path).hexdigest
    end

    # ---- files --------------------------------------------------------------------------

    # A directory for big sparse files: tmpfs when there is one, because
    # reading a hole there maps the zero page instead of filling the page
    # cache (4 GiB: 0.1 s instead of 1.5 s).
    def sparse_dir
      shm = "/dev/shm"
      File.directory?(shm) && File.writable?(shm) ? shm : Dir.tmpdir
    end

    # Creates a sparse file of `size` bytes (all zeros) and returns its path.
    def sparse_file(dir, name, size)
      path = File.join(dir, name)
      File.open(path, "wb") { |f| f.truncate(size) }
      path
    end

    # ---- sockets ------------------------------------------------------------------------

    # A connected loopback TCP pair: [client, server side].
    def tcp_pair
      server = TCPServer.new("127.0.0.1", 0)
      client = TCPSocket.new("127.0.0.1", server.addr[1])
      [client, server.accept]
    ensure
      server&.close
    end

    def unix_pair
      UNIXSocket.pair
    end

    # Reads `io` to end of input in chunks; returns [bytes, SHA-256 hex].
    def drain(io, chunk: 64 * KIB)
      digest = OpenSSL::Digest::SHA256.new
      count = 0
      buf = String.new(capacity: chunk)
      loop do
        io.readpartial(chunk, buf)
        count += buf.bytesize
        digest.update(buf)
      end
    rescue EOFError
      [count, digest.hexdigest]
    end

    # Shuts sockets down (which wakes any fiber or thread still waiting on
    # them) and closes every IO given, ignoring those already closed.
    def close_all(*ios)
      ios.flatten.compact.each do |io|
        next if io.closed?

        begin
          io.shutdown(Socket::SHUT_RDWR) if io.is_a?(BasicSocket)
        rescue SystemCallError
          nil
        end
        io.close
      end
    end

    def open_fd_count
      Dir.children("/proc/self/fd").size
    end

    def task_count
      Dir.children("/proc/self/task").size
    end

    # ---- sinks and sources with an IO-like face --------------------------------------------

    # An object with #write only: counts and hashes what it is given and
    # keeps the bytes when asked to.
    class DigestSink
      attr_reader :bytes, :writes, :data

      def initialize(keep: false)
        @digest = OpenSSL::Digest::SHA256.new
        @bytes = 0
        @writes = 0
        @data = keep ? String.new(encoding: Encoding::BINARY) : nil
      end

      def write(*strings)
        strings.sum do |s|
          @digest.update(s)
          @data&.<<(s)
          @writes += 1
          @bytes += s.bytesize
          s.bytesize
        end
      end

      def hexdigest
        @digest.hexdigest
      end
    end

    # An object with #readpartial only, handing out `data` in slices of the
    # given sizes (cycled). At the end it raises EOFError, or returns nil with
    # eof: :nil.
    class ChunkSource
      attr_reader :calls

      def initialize(data, sizes: [4096], eof: :raise)
        @data = data.b
        @sizes = sizes
        @eof = eof
        @pos = 0
        @calls = 0
      end

      def readpartial(maxlen, buf = nil)
        @calls += 1
        if @pos >= @data.bytesize
          raise EOFError, "end of file reached" if @eof == :raise

          return nil
        end
        n = [@sizes[(@calls - 1) % @sizes.size], maxlen].min
        chunk = @data.byteslice(@pos, n)
        @pos += chunk.bytesize
        buf ? buf.replace(chunk) : chunk
      end
    end

    # ---- TLS ---------------------------------------------------------------------------------

    # A self-signed certificate and its key, made once per process.
    def self_signed
      @self_signed ||= begin
        key = OpenSSL::PKey::EC.generate("prime256v1")
        name = OpenSSL::X509::Name.parse("/CN=ringspun-test")
        cert = OpenSSL::X509::Certificate.new
        cert.version = 2
        cert.serial = 1
        cert.subject = name
        cert.issuer = name
        cert.public_key = key
        cert.not_before = Time.now - 60
        cert.not_after = Time.now + 3600
        cert.sign(key, OpenSSL::Digest.new("SHA256"))
        [cert, key]
      end
    end

    # A connected TLS pair over a UNIX socket pair, handshake done:
    # [client SSLSocket, server SSLSocket, raw client socket, raw server
    # socket]. Blocking code only (the handshake takes a helper thread).
    def ssl_pair
      cert, key = self_signed
      raw_client, raw_server = UNIXSocket.pair
      sctx = OpenSSL::SSL::SSLContext.new
      sctx.cert = cert
      sctx.key = key
      cctx = OpenSSL::SSL::SSLContext.new
      cctx.verify_mode = OpenSSL::SSL::VERIFY_NONE
      server = OpenSSL::SSL::SSLSocket.new(raw_server, sctx)
      client = OpenSSL::SSL::SSLSocket.new(raw_client, cctx)
      server.sync_close = client.sync_close = true
      accepting = Thread.new { server.accept }
      client.connect
      accepting.join
      [client, server, raw_client, raw_server]
    end

    # ---- external programs -----------------------------------------------------------------

    # Debian's python, with its standard library: the `python3` on PATH may be
    # a pyenv build without zlib.
    PYTHON = "/usr/bin/python3"

    # Runs a command with binary stdin/stdout; returns [stdout, stderr,
    # Process::Status].
    def capture(*cmd, stdin_data: "")
      Open3.capture3(*cmd, stdin_data: stdin_data, binmode: true)
    end
  end
end
