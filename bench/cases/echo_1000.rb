# frozen_string_literal: true

require "socket"

# A loopback TCP echo server and many clients, all started together: each
# client sends a 1 KiB message, reads the echo back, checks it, and
# repeats. The timed window covers connecting, echoing and closing.
module Bench
  module LoopbackEcho
    MESSAGE = Random.new(1000).bytes(1024).freeze
    CHUNK = 16 * 1024

    module_function

    def measure(tasks, params, meter)
      tasks.check!
      meter.measure { run(tasks, params[:clients], params[:messages]) }
    end

    # @return [Integer] messages echoed
    def run(tasks, clients, messages)
      server = TCPServer.new("127.0.0.1", 0)
      server.listen(clients)
      port = server.local_address.ip_port
      tasks.run do |t|
        t.spawn { serve(t, server, clients) }
        clients.times { t.spawn { client(port, messages) } }
      end
      clients * messages
    ensure
      server&.close
    end

    # Accepts exactly `clients` connections, one task each, then stops: a
    # parked accept on a server closed under it would never wake.
    def serve(tasks, server, clients)
      clients.times do
        socket = server.accept
        tasks.spawn { echo(socket) }
      end
    end

    def echo(socket)
      socket.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
      buffer = String.new(capacity: CHUNK)
      loop { socket.write(socket.readpartial(CHUNK, buffer)) }
    rescue EOFError
      nil
    ensure
      socket.close
    end

    def client(port, messages)
      socket = TCPSocket.new("127.0.0.1", port)
      socket.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
      reply = String.new(capacity: MESSAGE.bytesize)
      messages.times do
        socket.write(MESSAGE)
        socket.read(MESSAGE.bytesize, reply)
        raise "echo differs from the message sent" unless reply == MESSAGE
      end
    ensure
      socket&.close
    end
  end
end

Bench.define(:echo_1000) do
  title "TCP echo, 1,000 concurrent clients on loopback"
  about <<~MD
    A loopback TCP echo server and 1,000 clients started together; each client sends
    `messages` messages of 1 KiB, one at a time, reads each echo back and checks it
    (`TCP_NODELAY` on both ends). The timed window covers connecting, echoing and closing.
    Ringspun runs the server's accept loop, one task per server connection and one per client
    as fibers under `Ringspun.run`, forced to one backend; the threads contender runs the same
    code with one Ruby thread per client and per server connection, blocking IO, no scheduler.
    The issue's target: io_uring at least 2x the threads.
  MD
  metric "messages/s"
  bytes_per_unit 1024
  sizes quick: { clients: 1000, messages: 30 }, full: { clients: 1000, messages: 500 }
  needs { |params| { fds: 2 * params[:clients] + 16, threads: 2 * params[:clients] + 2 } }
  reference :threads

  target issue: 2, text: "1,000-client echo: io_uring at least 2x one thread per client",
         contender: :ringspun_io_uring, rate_vs: :threads, at_least: 2.0

  contender(:ringspun_io_uring, "Ringspun io_uring") do |params, meter|
    Bench::LoopbackEcho.measure(Bench::Fibers.new(:io_uring), params, meter)
  end
  contender(:ringspun_epoll, "Ringspun epoll") do |params, meter|
    Bench::LoopbackEcho.measure(Bench::Fibers.new(:epoll), params, meter)
  end
  contender(:threads, "a thread per client and per connection") do |params, meter|
    Bench::LoopbackEcho.measure(Bench::Threads.new, params, meter)
  end
end
