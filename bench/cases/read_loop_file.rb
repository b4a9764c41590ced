# frozen_string_literal: true

require_relative "read_loop"

# IO#read_loop from a file in the page cache: the read_loop case's job and contenders
# (read_loop.rb).
Bench.define(:read_loop_file) do
  title "read a file to its end in 64 KiB chunks (page cache)"
  about <<~MD
    As *read_loop*, from a `mib` MiB file written once under `bench/out/data/` and read from
    the page cache.
  MD
  metric "MiB/s"
  bytes_per_unit 1024 * 1024
  sizes quick: { mib: 512 }, full: { mib: 2048 }
  reference :readpartial

  Bench::ReadLoop.define_common(self, :file)
end
