# frozen_string_literal: true

# A small HTTP/1.1 static file server on Ringspun: every connection is a fiber,
# and no byte of a file passes through a Ruby String.
#
# - GET (and HEAD) of a path under the root folder; keep-alive.
# - Plain responses: Content-Length, then IO.double_splice(file, socket).
# - With "Accept-Encoding: gzip": Content-Encoding: gzip and Transfer-Encoding:
#   chunked. One fiber gzips the file into a Ringspun::Pipe while
#   IO.http1_splice_chunked(pipe, socket) sends it (the article's recipe).
# - 400 for a malformed request, 404 for a missing file, 405 for another
#   method, 403 for a path that leaves the root.
#
# One event loop runs on one core, so the server runs one worker process per
# core, forked after listen(2), each with its own Ringspun.run accepting on
# the same listening socket (threads would share one GVL). TERM or INT to the
# server is passed to every worker, whose connections unwind (their ensure
# clauses close them); the server exits once it has reaped them all.
#
#   ruby -Ilib examples/file_server.rb ROOT [PORT [WORKERS]]
require "etc"
require "ringspun"
require "socket"
require "uri"

# The server; FileServer.new(root).serve(server_socket) inside Ringspun.run.
class FileServer
  MAX_HEADER_BYTES = 16 * 1024
  STATUS = { 200 => "OK", 400 => "Bad Request", 403 => "Forbidden", 404 => "Not Found",
             405 => "Method Not Allowed" }.freeze

  Request = Struct.new(:method, :path, :version, :headers) do
    def keep_alive?
      conn = headers["connection"].to_s.downcase
      version == "HTTP/1.1" ? conn != "close" : conn == "keep-alive"
    end

    def gzip?
      headers["accept-encoding"].to_s.split(",").any? { |e| e.strip.split(";").first == "gzip" }
    end
  end

  # @param root [String] the folder served
  def initialize(root)
    @root = File.realpath(root)
  end

  # Accepts connections until the server socket is closed.
  # @param server [TCPServer]
  def serve(server)
    loop do
      client = server.accept
      Ringspun.spin { handle(client) }
    end
  rescue IOError, Errno::EBADF
    nil # the server socket was closed: stop accepting
  end

  private

  def handle(client)
    while (request = read_request(client))
      respond(client, request)
      break unless request.keep_alive?
    end
  rescue Errno::EPIPE, Errno::ECONNRESET, EOFError, IOError
    nil # the client went away mid-response
  ensure
    client.close unless client.closed?
  end

  # @return [Request, nil] nil at end of input; a Request with method nil
  #   when the request is malformed
  def read_request(client)
    line = client.gets("\r\n", MAX_HEADER_BYTES)
    return nil unless line

    method, target, version = line.chomp("\r\n").split(" ", 3)
    headers = read_headers(client)
    return Request.new(nil, nil, "HTTP/1.0", {}) unless headers && version&.start_with?("HTTP/1.") && target

    Request.new(method, target, version, headers)
  end

  def read_headers(client)
    headers = {}
    while (line = client.gets("\r\n", MAX_HEADER_BYTES))
      return headers if line == "\r\n"

      name, value = line.chomp("\r\n").split(":", 2)
      return nil unless value

      headers[name.strip.downcase] = value.strip
    end
    nil
  end

  def respond(client, request)
    return error(client, 400, request) unless request.method
    return error(client, 405, request, "Allow: GET, HEAD\r\n") unless %w[GET HEAD].include?(request.method)

    path = resolve(request.path)
    return error(client, 403, request) if path == :outside
    return error(client, 404, request) unless path && File.file?(path)

    File.open(path, "rb") { |file| send_file(client, request, file) }
  end

  # The file a request path names, :outside when it leaves the root.
  def resolve(target)
    path = URI.decode_www_form_component(target.split("?", 2).first.to_s)
    return :outside unless path.start_with?("/")

    full = File.expand_path(".#{path}", @root)
    return :outside unless full == @root || full.start_with?("#{@root}/")

    File.exist?(full) && File.realpath(full).start_with?("#{@root}/") ? full : nil
  rescue ArgumentError
    nil
  end

  def send_file(client, request, file)
    if request.gzip?
      client.write(head(200, request, "Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"))
      send_gzipped(client, file) unless request.method == "HEAD"
    else
      client.write(head(200, request, "Content-Length: #{file.size}\r\n"))
      send_plain(client, file) unless request.method == "HEAD"
    end
  end

  def send_plain(client, file)
    IO.double_splice(file, client)
  end

  # Gzips in one fiber into a pipe while this one sends the pipe chunked.
  def send_gzipped(client, file)
    pipe = Ringspun::Pipe.new
    Ringspun.spin do
      IO.gzip(file, pipe)
    rescue Errno::EPIPE
      nil # the sender gave up: nobody reads the pipe any more
    ensure
      pipe.close
    end
    IO.http1_splice_chunked(pipe, client)
  ensure
    pipe&.close_read # a gzipper still writing gets EPIPE and ends
  end

  def head(status, request, extra)
    conn = request.keep_alive? ? "keep-alive" : "close"
    "HTTP/1.1 #{status} #{STATUS[status]}\r\nServer: ringspun-example\r\n" \
      "Content-Type: application/octet-stream\r\nConnection: #{conn}\r\n#{extra}\r\n"
  end

  def error(client, status, request, extra = "")
    body = "#{status} #{STATUS[status]}\n"
    client.write(head(status, request, "#{extra}Content-Length: #{body.bytesize}\r\n") +
                 (request.method == "HEAD" ? "" : body))
  end
end

# Worker processes for a listening socket: started by fork, each serving
# with its own Ringspun.run; stopped together, and reaped, on TERM or INT.
class Workers
  STOP_SIGNALS = %w[TERM INT].freeze

  # @param count [Integer] worker processes
  def initialize(count)
    @count = count
    @pids = []
  end

  # Forks the workers, each running the block.
  # @return [self]
  def start(&work)
    @work = work
    @stopping = false
    STOP_SIGNALS.each { |sig| Signal.trap(sig) { @stopping = true } }
    @pids = Array.new(@count) { spawn_worker }
    self
  end

  # Waits: a worker that dies is replaced until a stop signal arrives,
  # which is passed to every worker; returns once all are reaped.
  # @return [void]
  def wait
    until @pids.empty?
      stop_all if @stopping
      pid = Process.wait(-1, Process::WNOHANG)
      next sleep(0.05) unless pid

      @pids.delete(pid)
      @pids << spawn_worker unless @stopping
    end
  end

  private

  def spawn_worker
    fork do
      STOP_SIGNALS.each { |sig| Signal.trap(sig) { exit } } # the run unwinds its fibers
      @work.call
    end
  end

  # Once: TERM to every worker still running.
  def stop_all
    return if @stopped

    @stopped = true
    @pids.each do |pid|
      Process.kill(:TERM, pid)
    rescue Errno::ESRCH
      nil # it has just exited; the wait loop reaps it
    end
  end
end

if $PROGRAM_NAME == __FILE__
  root = ARGV[0] or abort("usage: #{$PROGRAM_NAME} ROOT [PORT [WORKERS]]")
  server = TCPServer.new("127.0.0.1", Integer(ARGV[1] || 0))
  server.listen(1024)
  workers = Integer(ARGV[2] || Etc.nprocessors)
  app = FileServer.new(root)
  backend = Ringspun.run { Fiber.scheduler.backend }
  pool = Workers.new(workers).start { Ringspun.run { app.serve(server) } }
  $stdout.puts "listening on 127.0.0.1:#{server.addr[1]} (#{backend}, #{workers} worker processes)"
  $stdout.flush
  pool.wait
  server.close
end
