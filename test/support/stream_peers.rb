# frozen_string_literal: true

require "socket"
require "tmpdir"
require "fileutils"

module RingspunTest
  # Shared by test_loops.rb, test_msgpack.rb and test_http1.rb: deterministic
  # data, the three kinds of byte stream (pipe, UNIX and TCP sockets), a
  # writer that trickles, and the outside programs the tests talk to (curl,
  # Debian's Python with its msgpack module, Debian's nginx).
  module StreamPeers
    # Debian's Python: the python3 on PATH may be a pyenv one without msgpack.
    PYTHON = "/usr/bin/python3"
    NGINX = "/usr/sbin/nginx"

    KINDS = %i[pipe unix tcp].freeze

    module_function

    # n bytes, the same on every run for the same seed.
    def bytes(count, seed = 1)
      Random.new(seed).bytes(count)
    end

    # [reader, writer] of the given kind, both binary. A TCP pair is a
    # connected loopback pair (the listener is closed at once).
    def pair(kind)
      ios =
        case kind
        when :pipe then IO.pipe
        when :unix then UNIXSocket.pair
        when :tcp then tcp_pair
        else raise ArgumentError, "no such stream kind: #{kind.inspect}"
        end
      ios.each(&:binmode)
    end

    def tcp_pair
      server = TCPServer.new("127.0.0.1", 0)
      client = TCPSocket.new("127.0.0.1", server.local_address.ip_port)
      [server.accept, client]
    ensure
      server&.close
    end

    # Yields a fresh [reader, writer] of the kind and closes both afterwards,
    # whatever happened (a peer blocked on the other end then sees EPIPE or
    # end of input instead of waiting forever).
    def with_pair(kind)
      r, w = pair(kind)
      yield r, w
    ensure
      [r, w].each { |io| io.close if io && !io.closed? }
    end

    # Writes data in pieces of the given sizes (cycled), sleeping `pause`
    # seconds after every `every`-th piece, then closes the writer if asked.
    def trickle(io, data, sizes, pause: 0.002, every: 3, close: true)
      off = 0
      i = 0
      while off < data.bytesize
        piece = data.byteslice(off, sizes[i % sizes.size])
        io.write(piece)
        off += piece.bytesize
        i += 1
        sleep pause if pause.positive? && (i % every).zero?
      end
      io.close if close
      off
    end

    # A free loopback TCP port (bound and released at once).
    def free_port
      s = TCPServer.new("127.0.0.1", 0)
      s.local_address.ip_port
    ensure
      s&.close
    end

    def executable?(path)
      File.executable?(path)
    end

    def which(cmd)
      ENV.fetch("PATH", "").split(File::PATH_SEPARATOR).map { |d| File.join(d, cmd) }.find { |p| File.executable?(p) }
    end

    # Why Debian's Python with msgpack cannot be used, or nil when it can.
    def python_msgpack_missing
      return @python_msgpack_missing if defined?(@python_msgpack_missing)

      @python_msgpack_missing =
        if !File.executable?(PYTHON)
          "#{PYTHON} is not installed"
        elsif system(PYTHON, "-c", "import msgpack", out: File::NULL, err: File::NULL)
          nil
        else
          "#{PYTHON} has no msgpack module (apt-get install python3-msgpack)"
        end
    end

    # Runs a command with stdin data, returns [stdout, stderr, status]. Its
    # stdout is read by the current fiber (through the scheduler, if any),
    # stdin and stderr by helper threads; the child is always reaped. Give
    # the command its own time limit (curl --max-time, say): the test
    # watchdog is the last resort.
    def run_child(cmd, stdin: nil)
      in_r, in_w = IO.pipe
      out_r, out_w = IO.pipe
      err_r, err_w = IO.pipe
      [in_w, out_r, err_r].each(&:binmode)
      pid = Process.spawn(*cmd, in: in_r, out: out_w, err: err_w)
      [in_r, out_w, err_w].each(&:close)
      feeder = Thread.new do
        in_w.write(stdin) if stdin
      rescue Errno::EPIPE
        nil
      ensure
        in_w.close
      end
      err_reader = Thread.new { err_r.read }
      out = out_r.read
      err = err_reader.value
      feeder.join
      _, status = Process.wait2(pid)
      pid = nil
      [out, err, status]
    ensure
      if pid
        begin
          Process.kill(:KILL, pid)
          Process.wait(pid)
        rescue SystemCallError
          nil
        end
      end
      [in_r, in_w, out_r, out_w, err_r, err_w].each { |io| io.close if io && !io.closed? }
    end

    def reap(pid, timeout)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      loop do
        _, status = Process.wait2(pid, Process::WNOHANG)
        return status if status
        raise "child #{pid} still running after #{timeout}s" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

        sleep 0.005
      end
    end

    # ---- HTTP/1.1 chunked framing, the reference ------------------------------

    # The exact chunked body for the given payload pieces.
    def chunked(pieces)
      pieces.map { |p| "#{p.bytesize.to_s(16)}\r\n#{p}\r\n".b }.join.b + "0\r\n\r\n".b
    end

    # The pieces a body of `data` is cut into when every chunk but the last
    # holds exactly maxlen bytes.
    def pieces(data, maxlen)
      return [] if data.empty?

      (0...data.bytesize).step(maxlen).map { |off| data.byteslice(off, maxlen) }
    end

    # Strict decoder of a chunked body, for checking our encoder's output:
    # lowercase hex without leading zeros, CRLF everywhere, no extensions, no
    # trailers, nothing after the end. Returns [payload, chunk sizes].
    def strict_unchunk(body)
      body = body.b
      payload = +"".b
      sizes = []
      off = 0
      loop do
        eol = body.index("\r\n", off) or raise ArgumentError, "no CRLF after a chunk size at #{off}"
        hex = body[off...eol]
        raise ArgumentError, "chunk size #{hex.inspect} at #{off} is not minimal lowercase hex" unless hex.match?(/\A(0|[1-9a-f][0-9a-f]*)\z/)

        size = hex.to_i(16)
        off = eol + 2
        if size.zero?
          raise ArgumentError, "last chunk not followed by exactly CRLF: #{body.byteslice(off, 16).inspect}" unless body.byteslice(off..) == "\r\n"

          return [payload, sizes]
        end
        sizes << size
        data = body.byteslice(off, size)
        raise ArgumentError, "chunk at #{off} truncated" unless data.bytesize == size
        raise ArgumentError, "no CRLF after chunk data at #{off + size}" unless body.byteslice(off + size, 2) == "\r\n"

        payload << data
        off += size + 2
      end
    end

    # ---- nginx ------------------------------------------------------------------------

    # Starts Debian's nginx on a free loopback port serving `root`, with
    # on-the-fly gzip (so it answers with chunked transfer encoding), and
    # yields the port. Raises NginxUnavailable when it cannot be started.
    class NginxUnavailable < StandardError; end

    def with_nginx(root)
      raise NginxUnavailable, "#{NGINX} is not installed" unless File.executable?(NGINX)

      dir = Dir.mktmpdir("ringspun-nginx")
      port = free_port
      conf = File.join(dir, "nginx.conf")
      log = File.join(dir, "error.log")
      File.write(conf, nginx_conf(dir, root, port, log))
      pid = Process.spawn(NGINX, "-p", dir, "-c", conf, "-e", log,
                          in: File::NULL, out: File.join(dir, "stdout.log"), err: File.join(dir, "stderr.log"))
      wait_listening(pid, port, dir)
      yield port
    ensure
      if pid
        begin
          Process.kill(:TERM, pid)
          reap(pid, 5)
        rescue RuntimeError
          Process.kill(:KILL, pid)
          Process.wait(pid)
        rescue SystemCallError
          nil
        end
      end
      FileUtils.rm_rf(dir) if dir
    end

    def nginx_conf(dir, root, port, log)
      user = Process.euid.zero? ? "user root;" : ""
      temps = %w[client_body proxy fastcgi uwsgi scgi].map { |t| "#{t}_temp_path #{dir}/#{t};" }.join(" ")
      <<~CONF
        daemon off; master_process off; #{user}
        pid #{dir}/nginx.pid;
        error_log #{log};
        events {}
        http {
          access_log off;
          gzip on; gzip_types *; gzip_min_length 0; gzip_http_version 1.0;
          chunked_transfer_encoding on;
          #{temps}
          server {
            listen 127.0.0.1:#{port};
            root #{root};
          }
        }
      CONF
    end

    def wait_listening(pid, port, dir)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
      loop do
        if Process.wait2(pid, Process::WNOHANG)
          logs = Dir[File.join(dir, "*.log")].map { |f| File.read(f) }.join.strip
          raise NginxUnavailable, "nginx exited at start: #{logs}"
        end
        begin
          Socket.tcp("127.0.0.1", port, connect_timeout: 0.5).close
          return
        rescue SystemCallError
          raise NginxUnavailable, "nginx not listening on #{port} after 5s" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

          sleep 0.02
        end
      end
    end
  end
end
