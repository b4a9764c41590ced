# frozen_string_literal: true

require "bench/fixtures"
require "bench/peers"
require "bench/transfer"

# A file sent whole into a loopback TCP connection that another process
# drains, one transfer per contender process.
module Bench
  module DoubleSplice
    MIB = 1024 * 1024
    CHUNK = 64 * 1024

    module_function

    # Sends params[:path] params[:passes] times down one connection with
    # the block, inside `tasks`, and checks that every byte arrived.
    def measure(tasks, params, meter)
      passes = params[:passes]
      received = Transfer.in_ruby(meter, tasks, path: params[:path], units: units(params)) do |src, dest|
        passes.times do
          src.rewind
          yield src, dest
        end
      end
      Transfer.check(received, units(params) * MIB, "the file, #{passes} times")
    end

    def measure_c(params, meter)
      argv = ["splice_copy", params[:path], CHUNK.to_s, params[:passes].to_s]
      own = Transfer.in_c(meter, argv, units: units(params))
      Transfer.check(own[:received], units(params) * MIB, "the file, #{params[:passes]} times")
    end

    # MiB sent: the file, passes times.
    def units(params) = params[:mib] * params[:passes]

    # The plain-Ruby loop: read into one reused String, write it out.
    def read_write(src, dest)
      buffer = String.new(capacity: CHUNK)
      dest.write(buffer) while src.read(CHUNK, buffer)
    end
  end
end

Bench.define(:double_splice) do
  title "a file to a loopback TCP socket drained by another process"
  about <<~MD
    One file (`mib` MiB of random bytes, in the page cache) is sent whole, `passes` times one
    after the other (each a new call, from offset 0), into one loopback TCP connection; the
    passes only lengthen the window, which one file at these rates keeps under 0.2 s. The far
    end is read to end of input by another process (`bench/c/drain.c`, `recv(MSG_TRUNC)`: it
    discards in the kernel, so the sender is what is measured). The window opens just before
    the send and closes when the drain has received the last byte; for the contenders that run
    under a scheduler it is taken inside the scheduler's run. `IO.double_splice` (default
    `chunk_size`, 64 KiB) runs in a fiber under `Ringspun.run` forced to one backend, with no
    scheduler, and under Async's scheduler (the readiness path). `IO.copy_stream` (which uses
    `sendfile(2)` here) and a `read`/`write` loop over one reused 64 KiB String are the
    plain-Ruby ways, with no scheduler; Async runs `IO.copy_stream` in a task. The reference is
    `bench/c/splice_copy.c`: blocking `splice(2)` file → pipe → socket, 64 KiB at a time,
    through a default (64 KiB) pipe; its row's CPU s, peak RSS and threads are its own.
    Polyphony runs its own `IO.double_splice`. The issue's targets: `double_splice` at least
    0.95x the C loop's throughput, and at most 1.25x its CPU per GiB.
  MD
  metric "MiB/s"
  bytes_per_unit 1024 * 1024
  sizes quick: { mib: 512, passes: 4 }, full: { mib: 1024, passes: 4 }
  setup { |params, fixtures| { path: fixtures.random(params[:mib] * 1024 * 1024) } }
  needs { |_params| { fds: 16, threads: 2 } }
  reference :c_splice

  target issue: 3, text: "IO.double_splice throughput at least 0.95x the C splice loop",
         contender: :ringspun_io_uring, rate_vs: :c_splice, at_least: 0.95
  target issue: 3, text: "IO.double_splice throughput at least 0.95x the C splice loop",
         contender: :ringspun_epoll, rate_vs: :c_splice, at_least: 0.95
  target issue: 3, text: "Ruby process CPU per GiB at most 1.25x the C splice loop's",
         contender: :ringspun_io_uring, cpu_vs: :c_splice, at_most: 1.25
  target issue: 3, text: "Ruby process CPU per GiB at most 1.25x the C splice loop's",
         contender: :ringspun_epoll, cpu_vs: :c_splice, at_most: 1.25

  contender(:c_splice, "C splice loop (bench/c/splice_copy.c)") do |params, meter|
    Bench::DoubleSplice.measure_c(params, meter)
  end
  contender(:ringspun_io_uring, "IO.double_splice, Ringspun io_uring") do |params, meter|
    Bench::DoubleSplice.measure(Bench::Fibers.new(:io_uring), params, meter) { |src, dest| IO.double_splice(src, dest) }
  end
  contender(:ringspun_epoll, "IO.double_splice, Ringspun epoll") do |params, meter|
    Bench::DoubleSplice.measure(Bench::Fibers.new(:epoll), params, meter) { |src, dest| IO.double_splice(src, dest) }
  end
  contender(:ringspun_blocking, "IO.double_splice, Ringspun, no scheduler") do |params, meter|
    require "ringspun"
    Bench::DoubleSplice.measure(Bench::Threads.new, params, meter) { |src, dest| IO.double_splice(src, dest) }
  end
  contender(:ringspun_in_async, "Ringspun IO.double_splice under Async's scheduler") do |params, meter|
    require "ringspun"
    Bench::DoubleSplice.measure(Bench::AsyncTasks.new, params, meter) { |src, dest| IO.double_splice(src, dest) }
  end
  contender(:copy_stream, "IO.copy_stream (no scheduler)") do |params, meter|
    Bench::DoubleSplice.measure(Bench::Threads.new, params, meter) { |src, dest| IO.copy_stream(src, dest) }
  end
  contender(:read_write, "read/write loop, 64 KiB String (no scheduler)") do |params, meter|
    Bench::DoubleSplice.measure(Bench::Threads.new, params, meter) { |src, dest| Bench::DoubleSplice.read_write(src, dest) }
  end
  contender(:polyphony, "Polyphony 1.6 IO.double_splice") do |params, meter|
    Bench::DoubleSplice.measure(Bench::PolyphonyTasks.new, params, meter) { |src, dest| IO.double_splice(src, dest) }
  end
  contender(:async_copy_stream, "Async 2.24: IO.copy_stream in a task") do |params, meter|
    Bench::DoubleSplice.measure(Bench::AsyncTasks.new, params, meter) { |src, dest| IO.copy_stream(src, dest) }
  end
end
