# frozen_string_literal: true

require_relative "file_server_wrk"

# The same keep-alive HTTP/1.1 server code (bench/servers/keepalive.rb)
# under each runtime, one process, against wrk from another process: many
# small requests on keep-alive connections, the work the issue says users
# pick a scheduler by (#15).
module Bench
  module KeepaliveWrk
    SCRIPT = File.expand_path("../servers/keepalive.rb", __dir__)
    HELLO = "Hello world!" # the body bench/servers/keepalive.rb answers with

    # name => [server runtime, peer group (nil: none), extra environment]
    RUNTIMES = {
      ringspun_io_uring: ["ringspun_io_uring", nil, {}],
      ringspun_epoll: ["ringspun_epoll", nil, {}],
      async_uring: ["async", :async, { "IO_EVENT_SELECTOR" => "URing" }],
      async_epoll: ["async", :async, { "IO_EVENT_SELECTOR" => "EPoll" }],
      carbon_fiber: ["carbon_fiber", :carbon_fiber, {}],
      threads: ["threads", nil, {}]
    }.freeze

    module_function

    # Runs FileServerWrk's measurement against the server for `name`,
    # whose body is "hello" (HELLO) or the 64 KiB file.
    def measure(name, body, params, meter)
      hello = body == "hello"
      FileServerWrk.measure(params, meter, path: "/", body: hello ? HELLO : nil) do |root|
        start(name, hello ? "hello" : File.join(root, FileServerWrk::FILE_NAME))
      end
    end

    def start(name, target)
      runtime, group, extra = RUNTIMES.fetch(name)
      env = group ? Peers.program_env(group).merge(extra) : extra
      ruby = group ? [RbConfig.ruby, "-rbundler/setup"] : [RbConfig.ruby]
      out_r, out_w = IO.pipe
      argv = [*ruby, "-I", FileServerWrk::Server.ringspun_lib, SCRIPT, runtime, target]
      pid = FileServerWrk::Server.launch(argv, env: env, out: out_w, chdir: Peers::DIR)
      out_w.close
      server = FileServerWrk::Server.new(pid, out_r)
      server.await_banner(nil)
      server
    rescue StandardError
      server&.stop
      raise
    end

    LABELS = {
      ringspun_io_uring: "Ringspun io_uring", ringspun_epoll: "Ringspun epoll",
      async_uring: "Async on io-event's URing selector", async_epoll: "Async on io-event's EPoll selector",
      carbon_fiber: "Carbon Fiber", threads: "a thread per connection"
    }.freeze

    # The contenders and targets both bodies share.
    def define_common(kase, body)
      RUNTIMES.each_key do |name|
        kase.contender(name, LABELS.fetch(name)) { |params, meter| measure(name, body, params, meter) }
      end
      %i[async_uring carbon_fiber].each do |peer|
        kase.target issue: 15, text: "Ringspun io_uring at least 1.2x #{LABELS.fetch(peer)}",
                    contender: :ringspun_io_uring, rate_vs: peer, at_least: 1.2
      end
    end
  end
end

Bench.define(:keepalive_hello) do
  title "keep-alive HTTP/1.1 server, 12-byte body, wrk -t1 -c100 (one server process)"
  about <<~MD
    The same 20-line keep-alive HTTP/1.1 server (`bench/servers/keepalive.rb`: read a request's
    head with `gets`, write a response) runs under each runtime as one process, and Debian's
    `wrk` with one thread and `connections` keep-alive connections runs from another process
    for `seconds` s. Ringspun runs it under `Ringspun.run` forced to one backend, a task per
    connection; Async (the peers' bundle: 2.24 / io-event 1.11 on Ruby 3.1, the latest on 3.2+)
    under its URing and its EPoll selector (`IO_EVENT_SELECTOR`), a task per connection; Carbon
    Fiber (Ruby 3.2+) with `Fiber.schedule` per connection; and plain Ruby with a thread per
    connection. *CPU s*, *peak RSS* and *peak threads* are the server's. The issue's target
    (#15): Ringspun io_uring at least 1.2x the best other contender.
  MD
  metric "requests/s"
  # wrk with one thread, as the issue measured.
  sizes quick: { seconds: 3, connections: 100, wrk_threads: 1 }, full: { seconds: 10, connections: 100, wrk_threads: 1 }
  reference :threads

  Bench::KeepaliveWrk.define_common(self, "hello")
end
