# frozen_string_literal: true

# Targets the issues state for cases whose own files state none, so that
# every issue target is a row of bench/RESULTS.md. A case file that states
# its targets itself (`target ...` in its Bench.define) needs no entry here;
# an entry it duplicates is not added twice.

# Issue 16 (which replaced issue 5's 1.2x): IO#read_loop with a new String
# per chunk at least 1.0x a readpartial loop that allocates one per read, and
# with one reused String at least 1.2x it; from a socket, a pipe and a file.
%i[read_loop read_loop_pipe read_loop_file].each do |kase|
  Bench.add_targets(kase) do
    %i[io_uring epoll].each do |way|
      target issue: 16, text: "read_loop (new String per chunk) at least 1.0x a readpartial loop (new String per read)",
             contender: :"read_loop_#{way}", rate_vs: :readpartial, at_least: 1.0
      target issue: 16, text: "read_loop(65536, buf) at least 1.2x a readpartial loop (new String per read)",
             contender: :"read_loop_reuse_#{way}", rate_vs: :readpartial, at_least: 1.2
    end
  end
end

# Issue 5: IO#msgpack_each at least 2.5x MessagePack::Unpacker#feed_each's
# messages per second (issue 16 replaced it with 1.2x, in the case file; this
# row stays to show how far the old bound is).
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
