# frozen_string_literal: true

require_relative "read_loop"

# IO#read_loop from a pipe: the read_loop case's job and contenders (read_loop.rb).
Bench.define(:read_loop_pipe) do
  title "read a stream to its end in 64 KiB chunks from a pipe"
  about <<~MD
    As *read_loop*, from a pipe (the default 64 KiB of pipe buffer) a forked process writes
    `mib` MiB into.
  MD
  metric "MiB/s"
  bytes_per_unit 1024 * 1024
  sizes quick: { mib: 256 }, full: { mib: 1024 }
  reference :readpartial

  Bench::ReadLoop.define_common(self, :pipe)
end
