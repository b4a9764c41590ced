# frozen_string_literal: true

require "etc"
require "fileutils"
require "net/http"
require "open3"
require "bench/peers"
require "rbconfig"
require "socket"
require "tmpdir"

# wrk against a static file server started for the round, serving one
# 64 KiB file over keep-alive connections on loopback.
module Bench
  module FileServerWrk
    ROOT_DIR = File.expand_path("../out/data/www", __dir__)
    EXAMPLES = File.expand_path("../../examples", __dir__)
    FILE_NAME = "64k.bin"
    FILE_SIZE = 64 * 1024
    SEED = 64
    START_TIMEOUT = 30 # seconds for a server to start listening
    STOP_TIMEOUT = 10  # seconds for a server to go after TERM

    module_function

    # The served folder: one file of 64 KiB random bytes.
    # @return [String] the folder
    def root
      path = File.join(ROOT_DIR, FILE_NAME)
      return ROOT_DIR if File.exist?(path) && File.size(path) == FILE_SIZE

      FileUtils.mkdir_p(ROOT_DIR)
      partial = "#{path}.#{Process.pid}.tmp"
      File.binwrite(partial, Random.new(SEED).bytes(FILE_SIZE))
      File.rename(partial, path)
      ROOT_DIR
    end

    # Starts the server, checks one response (GET `path` answers 200 with
    # `body`, by default the 64 KiB file), runs wrk against `path` in the
    # timed window and reports the server's CPU seconds, peak RSS and peak
    # threads as the contender's (this process only drives wrk).
    def measure(params, meter, path: "/#{FILE_NAME}", body: nil)
      wrk = wrk_path or raise Skip, "wrk is not installed here"
      server = yield root
      body ||= File.binread(File.join(ROOT_DIR, FILE_NAME))
      begin
        check_response(server.port, path, body)
        sampler = ThreadSampler.new(server)
        cpu_before = server.cpu_s
        report = nil
        meter.measure do
          report = run_wrk(wrk, server.port, path, params)
          report.requests
        end
        sampler.stop
        adopt(meter, cpu_s: server.cpu_s - cpu_before, rss_kib: server.rss_peak_kib, threads: sampler.peak)
      ensure
        server.stop
      end
      report.check!(body.bytesize)
    end

    def wrk_path
      ENV.fetch("PATH", "").split(File::PATH_SEPARATOR).map { |d| File.join(d, "wrk") }.find { |f| File.executable?(f) }
    end

    # One GET outside the timed window: the server answers with the body, whole.
    def check_response(port, path, body)
      response = Net::HTTP.start("127.0.0.1", port) { |http| http.get(path) }
      raise "GET #{path}: #{response.code}" unless response.code == "200"
      raise "GET #{path}: the body differs from the #{body.bytesize} bytes expected" unless response.body == body
    end

    def run_wrk(wrk, port, path, params)
      argv = [wrk, "-t#{params[:wrk_threads]}", "-c#{params[:connections]}", "-d#{params[:seconds]}s", "--timeout", "10s",
              "http://127.0.0.1:#{port}#{path}"]
      out, status = Open3.capture2e(*argv)
      raise "wrk failed (#{status.inspect}):\n#{out}" unless status.success?

      WrkReport.new(out)
    end

    def adopt(meter, cpu_s:, rss_kib:, threads:)
      meter.define_singleton_method(:result) do
        super().merge(cpu_s: cpu_s, rss_peak_kib: rss_kib, threads_at_end: threads)
      end
    end

    # What wrk printed, and whether the run was clean: every response 2xx,
    # no socket error, and at least the file's bytes read per request.
    class WrkReport
      UNITS = { "B" => 1, "KB" => 1024, "MB" => 1024**2, "GB" => 1024**3, "TB" => 1024**4 }.freeze

      attr_reader :requests

      def initialize(text)
        @text = text
        m = text.match(/(\d+) requests in [\d.]+\w+, ([\d.]+)([KMGT]?B) read/) or raise "no totals in wrk's output:\n#{text}"
        @requests = Integer(m[1])
        @bytes = Float(m[2]) * UNITS.fetch(m[3])
      end

      # @param body_size [Integer] the bytes each response must at least carry
      def check!(body_size = FILE_SIZE)
        non2xx = @text[/Non-2xx or 3xx responses: (\d+)/, 1].to_i
        errors = @text[/Socket errors: (.*)$/, 1]
        raise "#{non2xx} responses were not 2xx:\n#{@text}" if non2xx.positive?
        raise "wrk saw socket errors (#{errors}):\n#{@text}" if errors
        raise "wrk made no request:\n#{@text}" if @requests.zero?
        # wrk rounds the total to two decimals of its unit.
        return if @bytes >= @requests * body_size * 0.99

        raise "wrk read #{@bytes.round} bytes for #{@requests} requests of #{body_size}:\n#{@text}"
      end
    end

    # Samples the server's thread count (all its processes) while wrk runs.
    class ThreadSampler
      EVERY = 0.005 # seconds, as the runner samples a contender

      attr_reader :peak

      def initialize(server)
        @server = server
        @peak = server.threads
        @stop = false
        @thread = Thread.new do
          until @stop
            @peak = [@peak, @server.threads].max
            sleep EVERY
          end
        end
      end

      def stop
        @stop = true
        @thread.join
      end
    end

    # A server process started for one round. Its figures are read from
    # /proc for it and every process under it (nginx's workers).
    #
    # It runs under coreutils' timeout(1), which passes our TERM on: should
    # this contender be killed (the runner's time limit), the server still
    # goes when its lifetime is up instead of serving on forever.
    class Server
      TICK = Etc.sysconf(Etc::SC_CLK_TCK).to_f
      LIFETIME = 300 # seconds; a round lasts `seconds` plus a few

      # @return [Integer] the pid of the watchdog, whose child is the server
      def self.launch(argv, env: {}, **opts)
        Process.spawn(env, "timeout", "-k", "5", LIFETIME.to_s, *argv, in: File::NULL, **opts)
      end

      # A Ruby example server: `ruby -I LIB examples/NAME ROOT 0`, which
      # prints "listening on 127.0.0.1:PORT ..." once it listens.
      # @param backend [String, nil] RINGSPUN_BACKEND for the server
      def self.example(name, root, backend: nil)
        out_r, out_w = IO.pipe
        argv = [RbConfig.ruby, "-I", ringspun_lib, File.join(EXAMPLES, name), root, "0"]
        pid = launch(argv, env: { "RINGSPUN_BACKEND" => backend }, out: out_w)
        out_w.close
        server = new(pid, out_r)
        server.await_banner(backend)
        server
      rescue StandardError
        server&.stop
        raise
      end

      # Falcon (the peers' bundle, Ruby 3.2+) serving the folder with
      # Rack::Files, a process per CPU (its forked container).
      def self.falcon(root)
        env = Bench::Peers.program_env(:falcon)
        prefix = Dir.mktmpdir("bench-falcon")
        config = File.join(prefix, "config.ru")
        File.write(config, "run Rack::Files.new(#{root.inspect})\n")
        port = free_port
        argv = [*Bench::Peers.bundle_command, "exec", "falcon", "serve", "--bind", "http://127.0.0.1:#{port}",
                "--count", Etc.nprocessors.to_s, "--config", config]
        listening_on(port, argv, prefix: prefix, env: env, chdir: Bench::Peers::DIR, out: File::NULL, err: File::NULL)
      end

      # nginx with as many workers as event loops the Ringspun server runs
      # (one per CPU), sendfile, keep-alive without a request limit, no log.
      def self.nginx(root)
        binary = %w[/usr/sbin/nginx /usr/local/sbin/nginx /usr/local/nginx/sbin/nginx].find { |f| File.executable?(f) }
        raise Skip, "nginx is not installed here" unless binary

        prefix = Dir.mktmpdir("bench-nginx")
        port = free_port
        File.write(File.join(prefix, "nginx.conf"), nginx_conf(prefix, root, port))
        listening_on(port, [binary, "-p", prefix, "-c", File.join(prefix, "nginx.conf")], prefix: prefix)
      end

      # Launches argv (opts as for .launch) and waits until something
      # accepts on `port`; the server is stopped if it never does.
      def self.listening_on(port, argv, prefix:, **opts)
        server = new(launch(argv, **opts), nil, prefix: prefix)
        server.await_port(port)
        server
      rescue StandardError
        server&.stop
        raise
      end

      def self.ringspun_lib
        dir = $LOAD_PATH.find { |d| File.exist?(File.join(d, "ringspun.rb")) }
        dir or raise "ringspun is not on the load path (the contender runs with -I LIB)"
      end

      def self.free_port
        probe = TCPServer.new("127.0.0.1", 0)
        probe.local_address.ip_port
      ensure
        probe&.close
      end

      def self.nginx_conf(prefix, root, port)
        temp = %w[client_body proxy fastcgi uwsgi scgi].map { |t| "#{t}_temp_path #{prefix}/#{t};" }.join(" ")
        <<~CONF
          daemon off;
          master_process on;
          worker_processes #{Etc.nprocessors};
          pid #{prefix}/nginx.pid;
          error_log stderr warn;
          events { worker_connections 4096; }
          http {
            access_log off;
            sendfile on;
            tcp_nopush on;
            keepalive_requests 1000000;
            default_type application/octet-stream;
            #{temp}
            server { listen 127.0.0.1:#{port}; root #{root}; }
          }
        CONF
      end

      attr_reader :port

      def initialize(pid, out, prefix: nil)
        @pid = pid
        @out = out
        @prefix = prefix
      end

      # Waits for the "listening on 127.0.0.1:PORT (BACKEND, ...)" line.
      def await_banner(backend)
        ready = IO.select([@out], nil, nil, START_TIMEOUT) or raise "no banner from the server in #{START_TIMEOUT} s"
        line = ready.first.first.gets.to_s
        @port = Integer(line[/listening on 127\.0\.0\.1:(\d+)/, 1] || raise("unexpected banner #{line.inspect}"))
        return unless backend && !line.include?("(#{backend},")

        raise "the server runs on another backend than #{backend}: #{line.inspect}"
      end

      # Waits until the port accepts a connection.
      def await_port(port)
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + START_TIMEOUT
        begin
          TCPSocket.new("127.0.0.1", port).close
          @port = port
        rescue SystemCallError
          raise "nothing listens on port #{port} after #{START_TIMEOUT} s" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

          sleep 0.05
          retry
        end
      end

      # The server's process and every process under it, as they were once
      # it listened (nginx's workers; the Ruby servers are one process);
      # not the watchdog.
      def pids
        @pids ||= process_tree - [@pid]
      end

      def process_tree
        children = Hash.new { |h, k| h[k] = [] }
        Dir.glob("/proc/[0-9]*/stat").each do |path|
          fields = File.read(path).split(") ", 2).last.split
          children[Integer(fields[1])] << Integer(path.split("/")[2])
        rescue SystemCallError
          next # gone meanwhile
        end
        all = [@pid]
        all.each { |pid| all.concat(children[pid]) }
        all
      end

      # User + system CPU seconds of all its processes so far.
      def cpu_s
        pids.sum do |pid|
          fields = File.read("/proc/#{pid}/stat").split(") ", 2).last.split
          (Integer(fields[11]) + Integer(fields[12])) / TICK # utime, stime
        rescue SystemCallError
          0
        end
      end

      def rss_peak_kib = status_sum("VmHWM")

      def threads = status_sum("Threads")

      def status_sum(field)
        pids.sum do |pid|
          line = File.foreach("/proc/#{pid}/status").find { |l| l.start_with?("#{field}:") }
          line ? Integer(line.split[1]) : 0
        rescue SystemCallError
          0
        end
      end

      # TERM, then KILL if it lingers; always reaped.
      def stop
        return unless @pid

        Process.kill(:TERM, @pid)
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + STOP_TIMEOUT
        until Process.wait(@pid, Process::WNOHANG)
          if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
            Process.kill(:KILL, @pid)
            Process.wait(@pid)
            break
          end
          sleep 0.02
        end
      rescue Errno::ESRCH, Errno::ECHILD
        nil
      ensure
        @pid = nil
        @out&.close
        FileUtils.rm_rf(@prefix) if @prefix
      end
    end
  end
end

Bench.define(:file_server_wrk) do
  title "HTTP/1.1 static file server, 64 KiB file, wrk with 100 keep-alive connections"
  about <<~MD
    Each round starts the server under test as its own process, checks one response (status
    and body), then runs Debian's `wrk` with `wrk_threads` threads and `connections`
    keep-alive connections for `seconds` s against one 64 KiB file on 127.0.0.1, and stops the
    server with TERM. The timed window is the wrk run; requests/s is wrk's completed requests
    over it, and a round fails on any non-2xx response, any socket error, or fewer bytes read
    than 64 KiB per request. `examples/file_server.rb` (Ringspun: one worker process per CPU,
    forked after listen, each with its own `Ringspun.run` loop; `IO.double_splice` for the body) runs with
    `RINGSPUN_BACKEND` forced to one backend; the reference is
    `examples/threaded_file_server.rb` (the same server, a thread per connection,
    `IO.copy_stream`). Falcon (latest, from the peers' bundle, on Ruby 3.2 and later) serves the
    folder with `Rack::Files`, a process per CPU. nginx (sendfile, one worker per CPU, logs off)
    is the C server at the physical limit. wrk and the server share the machine's CPUs. *CPU s*, *peak RSS* and *peak
    threads* are the server's (all its processes; threads sampled every 5 ms during the wrk
    run); *objects* are the driving process's, not the server's.
  MD
  metric "requests/s"
  sizes quick: { seconds: 2, connections: 100, wrk_threads: 2 },
        full: { seconds: 10, connections: 100, wrk_threads: 2 }
  reference :threaded

  contender(:falcon, "Falcon with Rack::Files, a process per CPU (Ruby 3.2+)") do |params, meter|
    Bench::FileServerWrk.measure(params, meter) { |root| Bench::FileServerWrk::Server.falcon(root) }
  end
  contender(:threaded, "examples/threaded_file_server.rb (a thread per connection)") do |params, meter|
    Bench::FileServerWrk.measure(params, meter) do |root|
      Bench::FileServerWrk::Server.example("threaded_file_server.rb", root)
    end
  end
  contender(:ringspun_io_uring, "examples/file_server.rb, Ringspun io_uring") do |params, meter|
    Bench::FileServerWrk.measure(params, meter) do |root|
      Bench::FileServerWrk::Server.example("file_server.rb", root, backend: "io_uring")
    end
  end
  contender(:ringspun_epoll, "examples/file_server.rb, Ringspun epoll") do |params, meter|
    Bench::FileServerWrk.measure(params, meter) do |root|
      Bench::FileServerWrk::Server.example("file_server.rb", root, backend: "epoll")
    end
  end
  contender(:nginx, "nginx (sendfile, a worker per CPU)") do |params, meter|
    Bench::FileServerWrk.measure(params, meter) { |root| Bench::FileServerWrk::Server.nginx(root) }
  end
end
