# frozen_string_literal: true

require_relative "keepalive_hello"

# The keepalive_hello case's server and contenders with a 64 KiB file as the
# body: IO.double_splice under Ringspun, IO.copy_stream elsewhere.
Bench.define(:keepalive_file) do
  title "keep-alive HTTP/1.1 server, 64 KiB file body, wrk -t1 -c100 (one server process)"
  about <<~MD
    As *keepalive_hello*, each response's body a 64 KiB file from the page cache: sent with
    `IO.double_splice` under Ringspun and with `IO.copy_stream` under the other runtimes.
  MD
  metric "requests/s"
  sizes quick: { seconds: 3, connections: 100, wrk_threads: 1 }, full: { seconds: 10, connections: 100, wrk_threads: 1 }
  reference :threads

  Bench::KeepaliveWrk.define_common(self, "file")
end
