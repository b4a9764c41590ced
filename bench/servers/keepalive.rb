# frozen_string_literal: true

# The keep-alive HTTP/1.1 server of the keepalive_wrk case: the same code
# under each runtime, one process on one core.
#
#   ruby bench/servers/keepalive.rb RUNTIME BODY
#
# RUNTIME: ringspun_io_uring, ringspun_epoll, async (IO_EVENT_SELECTOR picks
# io-event's selector), carbon_fiber, threads. BODY: "hello" (a 12-byte
# body) or the path of a file sent whole (IO.double_splice under Ringspun,
# IO.copy_stream elsewhere). Prints "listening on 127.0.0.1:PORT (RUNTIME)"
# once it listens; TERM ends it.
require "socket"

runtime, body = ARGV
HELLO = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\nHello world!"
FILE = body == "hello" ? nil : body
FILE_HEAD = FILE && "HTTP/1.1 200 OK\r\nContent-Length: #{File.size(FILE)}\r\nConnection: keep-alive\r\n\r\n"
NATIVE = runtime.start_with?("ringspun")

def respond(client)
  return client.write(HELLO) unless FILE

  client.write(FILE_HEAD)
  File.open(FILE, "rb") { |f| NATIVE ? IO.double_splice(f, client) : IO.copy_stream(f, client) }
end

def serve(client)
  respond(client) while client.gets("\r\n\r\n")
rescue Errno::ECONNRESET, Errno::EPIPE, IOError
  nil # wrk hung up
ensure
  client.close
end

# Accepts forever; `spawn` starts a connection's task the runtime's way.
def accept_loop(server, spawn)
  loop do
    client = server.accept
    spawn.call(-> { serve(client) })
  end
end

server = TCPServer.new("127.0.0.1", 0)
server.listen(1024)
Signal.trap("TERM") { exit!(0) }
$stdout.puts "listening on 127.0.0.1:#{server.local_address.ip_port} (#{runtime})"
$stdout.flush
case runtime
when "ringspun_io_uring", "ringspun_epoll"
  require "ringspun"
  Ringspun.run(backend: runtime.delete_prefix("ringspun_").to_sym) do
    accept_loop(server, ->(task) { Ringspun.spin(&task) })
  end
when "async"
  # Async 2.24 (Ruby 3.1's) calls IO#timeout, which Ruby 3.2 added.
  IO.class_eval { def timeout = nil } unless IO.method_defined?(:timeout)
  require "async"
  Async { |top| accept_loop(server, ->(task) { top.async { task.call } }) }
when "carbon_fiber"
  require "carbon_fiber"
  Fiber.set_scheduler(CarbonFiber::Scheduler.new)
  Fiber.schedule { accept_loop(server, ->(task) { Fiber.schedule { task.call } }) }
when "threads"
  accept_loop(server, ->(task) { Thread.new { task.call } })
else abort("unknown runtime #{runtime}")
end
