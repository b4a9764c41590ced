# frozen_string_literal: true

require "zlib"
require "bench/fixtures"
require "bench/peers"
require "bench/transfer"

# A gzip file decompressed on its way to a loopback TCP connection that
# another process drains.
module Bench
  module Gunzip
    MIB = 1024 * 1024
    CHUNK = 64 * 1024

    module_function

    # Decompresses params[:path] params[:passes] times down one connection
    # with the block, inside `tasks`, and checks that all the text arrived.
    def measure(tasks, params, meter)
      received = Transfer.in_ruby(meter, tasks, path: params[:path], units: units(params)) do |src, dest|
        params[:passes].times do
          src.rewind
          yield src, dest
        end
      end
      Transfer.check(received, units(params) * MIB, "the text, #{params[:passes]} times")
    end

    def measure_c(params, meter)
      argv = ["gunzip_copy", params[:path], params[:passes].to_s]
      own = Transfer.in_c(meter, argv, units: units(params), pkg: "zlib")
      Transfer.check(own[:received], units(params) * MIB, "the text, #{params[:passes]} times")
    end

    # MiB of text out: the text, passes times.
    def units(params) = params[:mib] * params[:passes]

    # Zlib::GzipReader on the file, readpartial of up to 64 KiB into one
    # reused String, each written to the socket.
    def gzip_reader(src, dest)
      gz = Zlib::GzipReader.new(src)
      buffer = String.new(capacity: CHUNK)
      loop { dest.write(gz.readpartial(CHUNK, buffer)) }
    rescue EOFError
      gz.finish # leaves src open
    end
  end
end

Bench.define(:gunzip) do
  title "gunzip, a gzip file to a loopback TCP socket drained by another process"
  about <<~MD
    The gzip (level 6, by Ruby's zlib) of `mib` MiB of generated text (about 2.7:1; see
    `bench/lib/bench/fixtures.rb`) is decompressed on its way from a file to a loopback TCP
    connection whose far end another process drains (`bench/c/drain.c`); the received size must
    be the text's. The file is decompressed `passes` times one after the other (each a new call
    from offset 0) down the one connection, which only lengthens the window: inflate is fast,
    and a larger file would cost the suite its deflate time to make. Rates are MiB of text
    (output) per second. The window opens just before the job and closes when the drain has the
    last byte. `IO.gunzip(src, dest)` runs in a fiber under `Ringspun.run`, forced to one
    backend. `Zlib::GzipReader` reads the file in 64 KiB pieces into one reused String, each
    written to the socket, with no scheduler, and in an Async task. The reference is
    `bench/c/gunzip_copy.c`: `inflateInit2` with windowBits 31, then read 64 KiB, `inflate`,
    write, until end of input; its row's CPU s and peak RSS are its own. Polyphony runs its own
    `IO.gunzip`. The issue's targets: `IO.gunzip` at least 0.95x the C program's throughput and
    at least 1.2x `Zlib::GzipReader`'s, and fewer than 1 Ruby object allocated per MiB.
  MD
  metric "MiB/s"
  bytes_per_unit 1024 * 1024
  sizes quick: { mib: 8, passes: 8 }, full: { mib: 64, passes: 2 }
  setup do |params, fixtures|
    { path: fixtures.gzip(fixtures.text(params[:mib] * 1024 * 1024)) }
  end
  needs { |_params| { fds: 16, threads: 2 } }
  reference :c_gunzip

  target issue: 4, text: "IO.gunzip throughput at least 0.95x C zlib",
         contender: :ringspun_io_uring, rate_vs: :c_gunzip, at_least: 0.95
  target issue: 4, text: "IO.gunzip throughput at least 0.95x C zlib",
         contender: :ringspun_epoll, rate_vs: :c_gunzip, at_least: 0.95
  target issue: 4, text: "IO.gunzip throughput at least 1.2x Zlib::GzipReader",
         contender: :ringspun_io_uring, rate_vs: :gzip_reader, at_least: 1.2
  target issue: 4, text: "IO.gunzip throughput at least 1.2x Zlib::GzipReader",
         contender: :ringspun_epoll, rate_vs: :gzip_reader, at_least: 1.2
  target issue: 4, text: "IO.gunzip: fewer than 1 Ruby object allocated per MiB",
         contender: :ringspun_io_uring, objects_per_mib: true, below: 1
  target issue: 4, text: "IO.gunzip: fewer than 1 Ruby object allocated per MiB",
         contender: :ringspun_epoll, objects_per_mib: true, below: 1

  contender(:c_gunzip, "C zlib (bench/c/gunzip_copy.c)") do |params, meter|
    Bench::Gunzip.measure_c(params, meter)
  end
  contender(:ringspun_io_uring, "IO.gunzip, Ringspun io_uring") do |params, meter|
    Bench::Gunzip.measure(Bench::Fibers.new(:io_uring), params, meter) { |src, dest| IO.gunzip(src, dest) }
  end
  contender(:ringspun_epoll, "IO.gunzip, Ringspun epoll") do |params, meter|
    Bench::Gunzip.measure(Bench::Fibers.new(:epoll), params, meter) { |src, dest| IO.gunzip(src, dest) }
  end
  contender(:gzip_reader, "Zlib::GzipReader (no scheduler)") do |params, meter|
    Bench::Gunzip.measure(Bench::Threads.new, params, meter) { |src, dest| Bench::Gunzip.gzip_reader(src, dest) }
  end
  contender(:polyphony, "Polyphony 1.6 IO.gunzip") do |params, meter|
    Bench::Gunzip.measure(Bench::PolyphonyTasks.new, params, meter) { |src, dest| IO.gunzip(src, dest) }
  end
  contender(:async, "Async 2.24: Zlib::GzipReader in a task") do |params, meter|
    Bench::Gunzip.measure(Bench::AsyncTasks.new, params, meter) { |src, dest| Bench::Gunzip.gzip_reader(src, dest) }
  end
end
