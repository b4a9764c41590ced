# frozen_string_literal: true

require_relative "test_helper"
require_relative "support/primitive_modes"
require_relative "support/stream_peers"
require "zlib"

# HTTP/1.1 chunked transfer encoding both ways (issue 6, "Tests"):
# IO.http1_splice_chunked and IO.http1_splice_unchunked, written once and
# run in the four modes of RingspunTest::PrimitiveModes (TestHttp1IoUring,
# ...Epoll, ...Blocking, ...Async), against curl, Python's http.client and
# Debian's nginx. The 100 MiB transfer runs in TestHttp1IoUring only.
module Http1Contract
  include RingspunTest

  SP = RingspunTest::StreamPeers
  ParseError = Ringspun::HTTP1::ParseError

  MAXLEN = 16_384
  CHUNKED_HEAD = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
  GZIP_HEAD = "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"

  # Payload sizes: nothing, one byte, exactly maxlen, maxlen + 1, several
  # chunks and a short last one.
  SIZES = [0, 1, MAXLEN, MAXLEN + 1, (5 * MAXLEN) + 3].freeze

  # ---- helpers -------------------------------------------------------------------

  # Compressible but not trivial: text lines with numbers and some noise.
  def text_payload(size, seed)
    rnd = Random.new(seed)
    out = +"".b
    out << "line #{out.bytesize} #{rnd.rand(10**9)} #{'abcdefgh' * rnd.rand(1..8)} #{rnd.bytes(rnd.rand(0..8)).unpack1('H*')}\n" while out.bytesize < size
    out.byteslice(0, size)
  end

  def with_tmpdir(&block)
    Dir.mktmpdir("ringspun-http1", &block)
  end

  # A file holding data; returns its path.
  def data_file(dir, name, data)
    path = File.join(dir, name)
    File.binwrite(path, data)
    path
  end

  def fd_links
    Dir.children("/proc/self/fd").map do |fd|
      "#{fd} -> #{File.readlink("/proc/self/fd/#{fd}")}"
    rescue SystemCallError
      nil
    end.compact.sort
  end

  # A one-request server on a free loopback port: reads the request head,
  # writes `head`, then yields the client socket (the body is the block's),
  # and closes everything. Returns [port, task]; task.value is the
  # block's value (or raises what it raised).
  def serve_once(head)
    server = TCPServer.new("127.0.0.1", 0)
    port = server.local_address.ip_port
    task = go do
      client = server.accept
      begin
        client.binmode
        client.gets("\r\n\r\n")
        client.write(head)
        yield client
      ensure
        client.close
      end
    ensure
      server.close
    end
    [port, task]
  end

  def curl(*args)
    skip "curl is not installed" unless SP.which("curl")

    out, err, status = SP.run_child(["curl", "-sS", "--max-time", "20", *args])
    assert_predicate status, :success?, "curl #{args.join(' ')}: #{err}"
    out.b
  end

  def assert_same_bytes(want, got, what = "bytes")
    return pass if want.b == got.b

    n = [want.bytesize, got.bytesize].min
    i = (0...n).find { |k| want.getbyte(k) != got.getbyte(k) } || n
    flunk "#{what}: expected #{want.bytesize} bytes, got #{got.bytesize}; first difference at byte #{i}"
  end

  # ---- the encoder, seen by curl ----------------------------------------------------

  SIZES.each do |size|
    define_method("test_curl_raw_shows_the_exact_framing_of_#{size}_bytes_with_maxlen_#{MAXLEN}") do
      data = SP.bytes(size, 100 + size)
      with_tmpdir do |dir|
        path = data_file(dir, "body", data)
        in_mode do
          port, task = serve_once(CHUNKED_HEAD) { |c| File.open(path, "rb") { |f| IO.http1_splice_chunked(f, c, MAXLEN) } }
          raw = curl("--raw", "http://127.0.0.1:#{port}/")
          assert_equal size, task.value, "http1_splice_chunked returns the payload byte count"
          assert_same_bytes SP.chunked(SP.pieces(data, MAXLEN)), raw, "framing as curl --raw shows it"
          assert_no_pending_operations
        end
      end
    end
  end

  def test_curl_raw_shows_the_exact_framing_with_the_default_maxlen
    data = SP.bytes(200_000, 7)
    with_tmpdir do |dir|
      path = data_file(dir, "body", data)
      in_mode do
        port, task = serve_once(CHUNKED_HEAD) { |c| File.open(path, "rb") { |f| IO.http1_splice_chunked(f, c) } }
        raw = curl("--raw", "http://127.0.0.1:#{port}/")
        assert_equal 200_000, task.value
        assert_same_bytes SP.chunked(SP.pieces(data, 65_536)), raw
      end
    end
  end

  # From a pipe or a socket the pieces are whatever each splice takes: the
  # framing must still be exact, with every chunk within maxlen.
  SP::KINDS.each do |kind|
    define_method("test_from_a_trickling_#{kind}_every_chunk_is_well_formed_and_within_maxlen") do
      data = SP.bytes(300_000, 8)
      in_mode do
        SP.with_pair(kind) do |r, w|
          writer = go { SP.trickle(w, data, [1, 5000, 40_000, 3], pause: 0.002) }
          port, task = serve_once(CHUNKED_HEAD) { |c| IO.http1_splice_chunked(r, c, 10_000) }
          raw = curl("--raw", "http://127.0.0.1:#{port}/")
          writer.value
          assert_equal 300_000, task.value
          payload, sizes = SP.strict_unchunk(raw)
          assert_same_bytes data, payload
          assert sizes.all? { |s| s.between?(1, 10_000) }, "chunk sizes #{sizes.uniq.sort.inspect} not within 1..10000"
        end
      end
    end
  end

  # ---- from a regular file (sendfile(2) to a non-blocking socket) -------------------

  # Sends from the file at `path` (opened, then prepared by the block) into
  # one end of a UNIX socket pair whose reader waits for `hold` before it
  # reads; returns [the call's value or error, what the reader got].
  def send_file_while(path, maxlen: 65_536, hold: nil)
    SP.with_pair(:unix) do |r, w|
      File.open(path, "rb") do |f|
        yield f, w if block_given? && hold.nil?
        sender = go do
          IO.http1_splice_chunked(f, w, maxlen)
        rescue StandardError => e
          e
        ensure
          w.close_write
        end
        hold&.call(f)
        reader = go { r.read.b }
        [sender.value, reader.value]
      end
    end
  end

  def test_from_a_file_after_a_seek_and_a_gets_every_byte_from_there_on
    data = SP.bytes(300_000, 21)
    with_tmpdir do |dir|
      path = data_file(dir, "body", "head line\n#{data}".b)
      in_mode do
        n, raw = send_file_while(path, maxlen: 70_000) do |f, _|
          f.seek(5)
          assert_equal "line\n", f.gets
        end
        payload, sizes = SP.strict_unchunk(raw)
        assert_equal data.bytesize, n
        assert_same_bytes data, payload
        assert sizes.all? { |s| s.between?(1, 70_000) }, sizes.inspect
      end
    end
  end

  # The destination is full while the file grows: the bytes appended go out
  # too, in chunks of their own.
  def test_from_a_file_that_grows_while_it_is_sent
    data = SP.bytes(4 * 1024 * 1024, 22)
    more = SP.bytes(10_000, 23)
    with_tmpdir do |dir|
      path = data_file(dir, "body", data)
      in_mode do
        grow = ->(_) { sleep 0.05; File.open(path, "ab") { |a| a.write(more) } }
        n, raw = send_file_while(path, hold: grow)
        payload, = SP.strict_unchunk(raw)
        assert_equal data.bytesize + more.bytesize, n
        assert_same_bytes data + more, payload
      end
    end
  end

  # Truncated while a chunk it announced is being sent: EOFError, never a
  # short chunk passed off as whole.
  def test_from_a_file_truncated_while_it_is_sent_raises_eof_error
    data = SP.bytes(4 * 1024 * 1024, 24)
    with_tmpdir do |dir|
      path = data_file(dir, "body", data)
      in_mode do
        cut = ->(_) { sleep 0.05; File.truncate(path, 0) }
        error, raw = send_file_while(path, hold: cut)
        assert_instance_of EOFError, error
        assert_match(/src ended \d+ bytes into a chunk it had announced/, error.message)
        assert_operator raw.bytesize, :<, data.bytesize
      end
    end
  end

  # Chunks of 3 MiB are bigger than the 1 MiB pipe the framing is staged
  # in: each is flushed to dest in parts, and the framing stays exact.
  def test_from_a_file_chunks_larger_than_the_staging_pipe
    data = SP.bytes((7 * 1024 * 1024) + 5, 29)
    with_tmpdir do |dir|
      path = data_file(dir, "body", data)
      in_mode do
        n, raw = send_file_while(path, maxlen: 3 * 1024 * 1024)
        assert_equal data.bytesize, n
        assert_same_bytes SP.chunked(SP.pieces(data, 3 * 1024 * 1024)), raw
      end
    end
  end

  # A blocking socket as dest takes the pipe path (sendfile would block with
  # the GVL held): the same framing.
  def test_from_a_file_to_a_blocking_socket
    require "io/nonblock"
    data = SP.bytes(200_001, 25)
    with_tmpdir do |dir|
      path = data_file(dir, "body", data)
      in_mode do
        n, raw = send_file_while(path) { |_, w| w.nonblock = false }
        assert_equal data.bytesize, n
        assert_same_bytes SP.chunked(SP.pieces(data, 65_536)), raw
      end
    end
  end

  # From a file to TCP the body goes out corked (whole segments), and the
  # cork comes off on every way out, or the tail would wait up to 200 ms.
  def corked?(sock)
    sock.getsockopt(Socket::IPPROTO_TCP, Socket::TCP_CORK).int == 1
  end

  # Sends `data` from a file into a TCP connection (prepared by the
  # block) and reads it at the other end; returns [the call's value,
  # whether dest was corked afterwards, what the reader got]. The reader
  # finishes before any assertion can raise: a fiber parked on an IO that
  # gets closed under it would wait forever.
  def send_file_over_tcp(data)
    with_tmpdir do |dir|
      path = data_file(dir, "body", data)
      SP.with_pair(:tcp) do |r, w|
        yield w if block_given?
        reader = go { r.read.b }
        n = File.open(path, "rb") { |f| IO.http1_splice_chunked(f, w) }
        corked = corked?(w)
        w.close
        [n, corked, reader.value]
      end
    end
  end

  # 50,000 bytes are one corked chunk; 150,003 are staged in a pipe.
  def test_from_a_file_to_tcp_the_socket_is_uncorked_after_the_body
    [50_000, 150_003].each do |size|
      data = SP.bytes(size, 26)
      in_mode do
        n, corked, got = send_file_over_tcp(data)
        refute corked, "TCP_CORK left on (#{size} bytes)"
        assert_equal data.bytesize, n
        assert_same_bytes SP.chunked(SP.pieces(data, 65_536)), got
      end
    end
  end

  def test_from_a_file_to_tcp_a_cork_the_caller_set_stays
    data = SP.bytes(70_000, 27)
    in_mode do
      _, corked, got = send_file_over_tcp(data) { |w| w.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_CORK, 1) }
      assert corked, "the caller's TCP_CORK was cleared"
      assert_same_bytes SP.chunked(SP.pieces(data, 65_536)), got
    end
  end

  # With the default maxlen the body is staged in a pipe; with a maxlen
  # bigger than the file it is one corked chunk of header and sendfile.
  # Either way a timeout leaves no cork and no fd behind.
  def test_from_a_file_to_tcp_a_timeout_mid_body_uncorks_the_socket_and_closes_the_pipe
    data = SP.bytes(16 * 1024 * 1024, 28)
    with_tmpdir do |dir|
      path = data_file(dir, "body", data)
      in_mode do
        [65_536, 32 * 1024 * 1024].each do |maxlen|
          SP.with_pair(:tcp) do |_r, w|
            # Nobody reads: the body cannot finish before the timeout.
            before = fd_links
            assert_raises(Timeout::Error) do
              File.open(path, "rb") { |f| Timeout.timeout(0.2) { IO.http1_splice_chunked(f, w, maxlen) } }
            end
            refute corked?(w), "TCP_CORK left on after the timeout (maxlen #{maxlen})"
            assert_equal before, fd_links, "an fd was left open (maxlen #{maxlen})"
          end
        end
      end
    end
  end

  # A proxy reads the upstream's head with gets, then sends the rest on:
  # the body bytes Ruby already buffered are part of src.
  def test_bytes_ruby_already_buffered_from_src_go_out_first
    data = SP.bytes(50_000, 9)
    in_mode do
      SP.with_pair(:unix) do |r, w|
        writer = go do
          w.write("upstream head\n#{data}".b)
          w.close
        end
        assert_equal "upstream head\n", r.gets
        SP.with_pair(:pipe) do |out_r, out_w|
          reader = go { out_r.read.b }
          n = IO.http1_splice_chunked(r, out_w, 20_000)
          out_w.close
          writer.value
          payload, sizes = SP.strict_unchunk(reader.value)
          assert_equal data.bytesize, n, "payload bytes sent"
          assert_same_bytes data, payload
          assert sizes.all? { |s| s.between?(1, 20_000) }
        end
      end
    end
  end

  def test_maxlen_must_be_positive
    in_mode do
      SP.with_pair(:pipe) do |r, w|
        [0, -1, -65_536].each do |bad|
          e = assert_raises(ArgumentError) { IO.http1_splice_chunked(r, w, bad) }
          assert_match(/maxlen/, e.message)
        end
      end
    end
  end

  # ---- gzip into a pipe while the pipe goes out chunked (the article's combination) ----

  # Serves `data` gzipped: one task gzips the file into a Ringspun::Pipe and
  # closes it while http1_splice_chunked(pipe, socket) sends.
  def serve_gzipped(path)
    serve_once(GZIP_HEAD) do |client|
      pipe = Ringspun::Pipe.new
      begin
        gz = go do
          File.open(path, "rb") { |f| IO.gzip(f, pipe) }
        ensure
          pipe.close
        end
        sent = IO.http1_splice_chunked(pipe, client)
        gz.value
        sent
      ensure
        pipe.close
        pipe.close_read
      end
    end
  end

  def test_curl_compressed_decodes_our_gzipped_chunked_response
    data = text_payload(1_500_000, 31)
    with_tmpdir do |dir|
      path = data_file(dir, "page.txt", data)
      in_mode do
        port, task = serve_gzipped(path)
        got = curl("--compressed", "http://127.0.0.1:#{port}/page.txt")
        assert_operator task.value, :<, data.bytesize / 2, "gzip did compress"
        assert_same_bytes data, got, "curl --compressed"
      end
    end
  end

  def test_the_raw_gzipped_chunked_response_is_well_framed_and_gunzips
    data = text_payload(700_000, 32)
    with_tmpdir do |dir|
      path = data_file(dir, "page.txt", data)
      in_mode do
        port, task = serve_gzipped(path)
        raw = curl("--raw", "http://127.0.0.1:#{port}/page.txt")
        payload, sizes = SP.strict_unchunk(raw)
        assert_equal payload.bytesize, task.value, "the byte count is the gzip stream's length"
        assert sizes.all? { |s| s.between?(1, 65_536) }, "chunk sizes within the default maxlen"
        assert_same_bytes data, zlib_gunzip(payload)
      end
    end
  end

  PY_CLIENT = <<~PY
    import gzip, http.client, sys
    c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=20)
    c.request("GET", "/page.txt", headers={"Accept-Encoding": "gzip"})
    r = c.getresponse()
    if r.status != 200 or not r.chunked or r.getheader("Content-Encoding") != "gzip":
        sys.exit("status %d chunked %r encoding %r" % (r.status, r.chunked, r.getheader("Content-Encoding")))
    sys.stdout.buffer.write(gzip.decompress(r.read()))
  PY

  def test_python_http_client_decodes_our_gzipped_chunked_response
    skip "#{SP::PYTHON} is not installed" unless File.executable?(SP::PYTHON)

    data = text_payload(1_000_000, 33)
    with_tmpdir do |dir|
      path = data_file(dir, "page.txt", data)
      in_mode do
        port, task = serve_gzipped(path)
        out, err, status = SP.run_child([SP::PYTHON, "-c", PY_CLIENT, port.to_s])
        assert_predicate status, :success?, "python http.client: #{err}"
        task.value
        assert_same_bytes data, out, "python http.client + gzip.decompress"
      end
    end
  end

  # ---- the client side: our unchunker --------------------------------------------------

  # Every size through our encoder and back, over TCP and a pipe, into each
  # kind of destination; bytes after the body stay in src.
  %i[tcp pipe].each do |kind|
    %i[string file pipe fd].each do |dest_kind|
      define_method("test_our_unchunker_reads_our_encoder_over_#{kind}_into_a_#{dest_kind}") do
        with_tmpdir do |dir|
          in_mode do
            SIZES.each do |size|
              data = SP.bytes(size, 200 + size)
              path = data_file(dir, "src#{size}", data)
              SP.with_pair(kind) do |r, w|
                writer = go do
                  n = File.open(path, "rb") { |f| IO.http1_splice_chunked(f, w, MAXLEN) }
                  w.write("NEXT")
                  w.close
                  n
                end
                got, count = unchunk_into(dest_kind, r, dir)
                assert_equal size, count, "#{size}: unchunked byte count"
                assert_equal size, writer.value, "#{size}: chunked byte count"
                assert_same_bytes data, got, "#{size} bytes"
                assert_equal "NEXT", r.read, "#{size}: the bytes after the body stay in src"
              end
            end
            assert_no_pending_operations
          end
        end
      end
    end
  end

  # Runs http1_splice_unchunked(src, <a destination of the kind>); returns
  # [bytes the destination got, the returned count].
  def unchunk_into(dest_kind, src, dir)
    case dest_kind
    when :string
      dest = +"".b
      count = IO.http1_splice_unchunked(src, dest)
      [dest, count]
    when :file, :fd
      path = File.join(dir, "dest")
      count = File.open(path, "wb") { |f| IO.http1_splice_unchunked(src, dest_kind == :fd ? f.fileno : f) }
      [File.binread(path), count]
    when :pipe
      pipe = Ringspun::Pipe.new
      begin
        reader = go { pipe.read_io.read.b }
        count = IO.http1_splice_unchunked(src, pipe)
        pipe.close
        [reader.value, count]
      ensure
        pipe.close
        pipe.close_read
      end
    end
  end

  # A response head read with gets leaves the start of the body (or all of
  # it, and what follows) in Ruby's buffer: the unchunker takes it from
  # there and leaves the rest.
  %i[tcp pipe unix].each do |kind|
    define_method("test_unchunked_after_gets_takes_the_body_from_rubys_buffer_over_#{kind}") do
      data = SP.bytes(150_000, 41)
      body = SP.chunked(SP.pieces(data, 10_000))
      in_mode do
        # (a) head, all of the body and what follows in one write
        SP.with_pair(kind) do |r, w|
          writer = go do
            w.write(CHUNKED_HEAD + body + "NEXT")
            w.close
          end
          assert_equal CHUNKED_HEAD, r.gets("\r\n\r\n")
          dest = +"".b
          assert_equal data.bytesize, IO.http1_splice_unchunked(r, dest)
          writer.value
          assert_same_bytes data, dest
          assert_equal "NEXT", r.read
        end
        # (b) the head and part of the body first, the rest after a pause
        SP.with_pair(kind) do |r, w|
          cut = CHUNKED_HEAD.bytesize + 7_777
          first = (CHUNKED_HEAD + body).byteslice(0, cut)
          rest = (CHUNKED_HEAD + body).byteslice(cut..) + "NEXT"
          writer = go do
            w.write(first)
            sleep 0.02
            SP.trickle(w, rest, [3, 20_000], pause: 0.002)
          end
          assert_equal CHUNKED_HEAD, r.gets("\r\n\r\n")
          dest = +"".b
          assert_equal data.bytesize, IO.http1_splice_unchunked(r, dest)
          assert_same_bytes data, dest
          assert_equal "NEXT", r.read
          writer.value
        end
      end
    end
  end

  def test_extensions_are_ignored_trailers_consumed_and_any_hex_case_and_leading_zeros_accepted
    body = "5;name=value;flag\r\nhello\r\n" \
           "A ; spaced = x\r\n0123456789\r\n" \
           "00000000000000001\r\n!\r\n" \
           "a\r\nabcdefghij\r\n" \
           "0;last=yes\r\nExpires: never\r\nX-Trailer: 1\r\n\r\n"
    in_mode do
      %i[pipe unix].each do |kind|
        SP.with_pair(kind) do |r, w|
          writer = go { SP.trickle(w, "#{body}HTTP/1.1 200 OK\r\n", [1, 2, 7, 40], pause: 0.001) }
          dest = +"".b
          assert_equal 26, IO.http1_splice_unchunked(r, dest), kind.to_s
          writer.value
          assert_equal "hello0123456789!abcdefghij", dest
          assert_equal "HTTP/1.1 200 OK\r\n", r.read, "#{kind}: what follows the body"
        end
      end
    end
  end

  # ---- from nginx ---------------------------------------------------------------------

  NGINX_FILES = { "empty" => 0, "one" => 1, "exact" => 65_536, "over" => 65_537, "big.txt" => 1_200_000 }.freeze

  def test_our_unchunker_reads_nginxs_gzipped_chunked_bodies
    with_tmpdir do |root|
      files = NGINX_FILES.to_h { |name, size| [name, text_payload(size, size)] }
      files.each { |name, data| data_file(root, name, data) }
      File.chmod(0o755, root)
      begin
        SP.with_nginx(root) do |port|
          in_mode do
            sock = TCPSocket.new("127.0.0.1", port)
            begin
              sock.binmode
              names = files.keys
              request = ->(name) { "GET /#{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: gzip\r\n\r\n" }
              # One request on its own, then the rest pipelined in one write.
              sock.write(request.call(names[0]))
              pipelined = false
              names.each_with_index do |name, i|
                head = sock.gets("\r\n\r\n")
                refute_nil head, "#{name}: no response head"
                assert_match(%r{\AHTTP/1\.1 200 }, head, name)
                assert_match(/^Transfer-Encoding: chunked\r$/i, head, name)
                assert_match(/^Content-Encoding: gzip\r$/i, head, name)
                unless pipelined
                  sock.write(names.drop(1).map(&request).join)
                  pipelined = true
                end
                with_tmpdir do |dir|
                  got, count = unchunk_into(i.even? ? :string : :file, sock, dir)
                  assert_equal got.bytesize, count, "#{name}: count"
                  assert_same_bytes files[name], zlib_gunzip(got), "#{name} (#{files[name].bytesize} bytes)"
                end
              end
            ensure
              sock.close
            end
          end
        end
      rescue SP::NginxUnavailable => e
        skip "nginx could not be started: #{e.message}"
      end
    end
  end

  # ---- a client that goes away ---------------------------------------------------------

  def test_a_client_disconnecting_mid_body_raises_in_the_server_and_leaves_no_fd_open
    with_tmpdir do |dir|
      path = File.join(dir, "sparse")
      File.open(path, "wb") { |f| f.truncate(256 * 1024 * 1024) } # zeros, no disk
      in_mode do
        before = fd_links
        port, task = serve_once(CHUNKED_HEAD) do |client|
          error = assert_raises(Errno::EPIPE, Errno::ECONNRESET) do
            File.open(path, "rb") { |f| IO.http1_splice_chunked(f, client) }
          end
          assert_includes error.message, "http1_splice_chunked"
          :raised
        end
        sock = TCPSocket.new("127.0.0.1", port)
        sock.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        got = 0
        got += sock.readpartial(65_536).bytesize while got < 100_000
        sock.close # unread data: the kernel answers the next segment with RST
        assert_equal :raised, task.value
        assert_equal before, fd_links, "fds open after the server gave up"
        assert_no_pending_operations
      end
    end
  end

  # ---- malformed input ---------------------------------------------------------------------

  # [body, the byte offset the ParseError names]
  MALFORMED = [
    ["zz\r\n", 0], ["\r\n", 0], ["-1\r\n", 0], [" 1\r\n", 0], [";x\r\n", 0], # bad hex
    ["1g\r\nx\r\n0\r\n\r\n", 1], ["0x10\r\n", 1], ["4\r\nabcd\r\nq\r\n", 9],
    ["3\r\nabcX\r\n0\r\n\r\n", 6], ["3\r\nabc\rX", 7], ["3\r\nabc0\r\n\r\n", 6], # missing CRLF after data
    ["3\nabc\r\n0\r\n\r\n", 1], ["3;ext\nabc", 5], ["3\r\nabc\n0\r\n\r\n", 6], # bare LF
    ["0\r\n\n", 3], ["0\r\nX: y\n\r\n", 7], ["3\rabc", 2], ["0\r\n\rX", 4],
    ["8000000000000000\r\n", 15], ["ffffffffffffffff\r\n", 15], ["10000000000000000\r\n", 16], # over 63 bits
    ["1;#{'e' * 9000}\r\nx\r\n0\r\n\r\n", 8194] # an extension line past 8 KiB
  ].freeze

  # The valid body every truncation is cut from.
  VALID = "5;e=1\r\nhello\r\n1a\r\n#{'z' * 26}\r\n0\r\nTrailer: x\r\n\r\n".b

  # src kinds: a pipe (no peeking), a UNIX socket (peeking), and a Ruby IO
  # whose buffer holds the body after gets read a head.
  def each_src(body)
    %i[pipe unix buffered].each do |how|
      SP.with_pair(how == :buffered ? :unix : how) do |r, w|
        writer = go do
          w.write(how == :buffered ? "HEAD\r\n\r\n#{body}" : body)
          w.close
        rescue Errno::EPIPE, Errno::ECONNRESET, IOError
          nil
        end
        r.gets("\r\n\r\n") if how == :buffered
        yield r, how
        r.close
        writer.value
      end
    end
  end

  def test_malformed_chunked_input_of_every_kind_raises_parse_error_naming_the_offset
    in_mode do
      MALFORMED.each do |body, offset|
        each_src(body.b) do |r, how|
          e = assert_raises(ParseError, "#{body.inspect[0, 40]} from #{how}") { IO.http1_splice_unchunked(r, +"".b) }
          assert_match(/byte offset #{offset}\b/, e.message, "#{body.inspect[0, 40]} from #{how}")
        end
      end
      assert_no_pending_operations
    end
  end

  def test_a_size_of_63_bits_is_accepted_and_the_missing_data_is_end_of_input
    in_mode do
      each_src("7fffffffffffffff\r\nonly this".b) do |r, how|
        assert_raises(EOFError, how.to_s) { IO.http1_splice_unchunked(r, +"".b) }
      end
    end
  end

  def test_every_truncation_raises_eof_error
    in_mode do
      (0...VALID.bytesize).each do |n|
        each_src(VALID.byteslice(0, n)) do |r, how|
          assert_raises(EOFError, "first #{n} bytes from #{how}") { IO.http1_splice_unchunked(r, +"".b) }
        end
      end
      each_src(VALID) do |r, how|
        dest = +"".b
        assert_equal 31, IO.http1_splice_unchunked(r, dest), how.to_s
        assert_equal "hello#{'z' * 26}", dest
      end
      assert_no_pending_operations
    end
  end

  def test_a_reset_connection_raises_econnreset_naming_src
    in_mode do
      SP.with_pair(:tcp) do |r, w|
        w.write("5\r\nhello\r\n3\r\nab")
        w.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii"))
        w.close
        e = assert_raises(Errno::ECONNRESET) { IO.http1_splice_unchunked(r, +"".b) }
        assert_includes e.message, "http1_splice_unchunked: src"
        assert_no_pending_operations
      end
    end
  end

  def test_a_frozen_string_destination_raises_frozen_error
    in_mode do
      SP.with_pair(:pipe) do |r, w|
        w.write("1\r\na\r\n0\r\n\r\n")
        w.close
        assert_raises(FrozenError) { IO.http1_splice_unchunked(r, "".b.freeze) }
      end
    end
  end

  # ---- GC -------------------------------------------------------------------------------

  def test_both_directions_under_gc_stress
    data = SP.bytes(40_000, 51)
    with_tmpdir do |dir|
      path = data_file(dir, "src", data)
      in_mode do
        SP.with_pair(:unix) do |r, w|
          writer = go do
            n = File.open(path, "rb") { |f| IO.http1_splice_chunked(f, w, 10_000) }
            w.close
            n
          end
          dest = +"".b
          begin
            GC.stress = true
            IO.http1_splice_unchunked(r, dest)
          ensure
            GC.stress = false
          end
          assert_equal 40_000, writer.value
          assert_same_bytes data, dest
        end
      end
    end
  end
end

# 100 MiB, file -> chunked -> TCP -> unchunked -> file: in one mode only, to
# stay fast.
module Http1Big
  SP = RingspunTest::StreamPeers

  def test_100_mib_through_our_encoder_and_unchunker_over_tcp
    mib = 1024 * 1024
    with_tmpdir do |dir|
      src = File.join(dir, "src")
      dst = File.join(dir, "dst")
      block = SP.bytes(mib, 61)
      File.open(src, "wb") { |f| 100.times { |i| f.write([i].pack("Q>") + block.byteslice(8..)) } }
      in_mode do
        SP.with_pair(:tcp) do |r, w|
          writer = go do
            n = File.open(src, "rb") { |f| IO.http1_splice_chunked(f, w) }
            w.write("END")
            w.close
            n
          end
          count = File.open(dst, "wb") { |f| IO.http1_splice_unchunked(r, f) }
          assert_equal 100 * mib, writer.value, "chunked byte count"
          assert_equal 100 * mib, count, "unchunked byte count"
          assert_equal "END", r.read
        end
        assert_no_pending_operations
      end
      assert_equal File.size(src), File.size(dst)
      assert_equal Digest::SHA256.file(src).hexdigest, Digest::SHA256.file(dst).hexdigest
    end
  end
end

RingspunTest::PrimitiveModes.define("TestHttp1", Http1Contract)
TestHttp1IoUring.include(Http1Big)
