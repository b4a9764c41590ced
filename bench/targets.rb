# frozen_string_literal: true

# Targets the issues state for cases whose own files state none, so that
# every issue target is a row of bench/RESULTS.md. A case file that states
# its targets itself (`target ...` in its Bench.define) needs no entry here;
# an entry it duplicates is not added twice.

# Issue 5: IO#read_loop at least 1.2x a readpartial loop that allocates a new
# String per read (1 GiB).
Bench.add_targets(:read_loop) do
  target issue: 5, text: "read_loop at least 1.2x a readpartial loop (new String per read)",
         contender: :read_loop_io_uring, rate_vs: :readpartial, at_least: 1.2
  target issue: 5, text: "read_loop at least 1.2x a readpartial loop (new String per read)",
         contender: :read_loop_epoll, rate_vs: :readpartial, at_least: 1.2
end

# Issue 5: IO#msgpack_each at least 2.5x MessagePack::Unpacker#feed_each's
# messages per second.
Bench.add_targets(:msgpack_each) do
  target issue: 5, text: "msgpack_each at least 2.5x the msgpack gem's feed_each",
         contender: :msgpack_each_io_uring, rate_vs: :msgpack_gem, at_least: 2.5
  target issue: 5, text: "msgpack_each at least 2.5x the msgpack gem's feed_each",
         contender: :msgpack_each_epoll, rate_vs: :msgpack_gem, at_least: 2.5
end

# Issue 6: IO.http1_splice_chunked at least 2x the Ruby chunked loop and at
# least 0.9x IO.double_splice.
Bench.add_targets(:http1_chunked) do
  target issue: 6, text: "http1_splice_chunked at least 2x the Ruby chunked loop",
         contender: :http1_splice_chunked_io_uring, rate_vs: :ruby_loop, at_least: 2.0
  target issue: 6, text: "http1_splice_chunked at least 2x the Ruby chunked loop",
         contender: :http1_splice_chunked_epoll, rate_vs: :ruby_loop, at_least: 2.0
  target issue: 6, text: "http1_splice_chunked at least 0.9x IO.double_splice",
         contender: :http1_splice_chunked_io_uring, rate_vs: :double_splice_io_uring, at_least: 0.9
  target issue: 6, text: "http1_splice_chunked at least 0.9x IO.double_splice",
         contender: :http1_splice_chunked_epoll, rate_vs: :double_splice_epoll, at_least: 0.9
end
