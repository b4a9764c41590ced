# frozen_string_literal: true

require "openssl"
require_relative "read_loop"

# A stream read to its end in 64 KiB chunks with a SHA-256 of each chunk:
# a block that costs CPU, where a read that runs meanwhile would pay.
module Bench
  module ReadSha
    MIB = ReadLoop::MIB
    CHUNK = ReadLoop::CHUNK

    module_function

    # A writer process sending `bytes` at most `rate` MiB/s (256 KiB writes).
    def start_writer(bytes, rate)
      near, far = StreamPeer.tcp_pair
      writer = StreamPeer.fork_writer(far, near) do |io|
        block = ReadLoop.piece
        slice = 256 * 1024
        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        (bytes / slice).times do |i|
          io.write(block.byteslice((i % (MIB / slice)) * slice, slice))
          ahead = ((i + 1) * slice).fdiv(rate * MIB) - (Process.clock_gettime(Process::CLOCK_MONOTONIC) - started)
          sleep(ahead) if ahead.positive?
        end
      end
      [near, writer]
    end

    def measure(tasks, params, meter)
      tasks.check!
      bytes = params[:mib] * MIB
      near, writer = start_writer(bytes, params[:rate])
      read = nil
      tasks.run do
        meter.measure do
          writer.go!
          read = yield(near, OpenSSL::Digest.new("SHA256"))
          read / MIB
        end
      end
      writer.wait
      ReadLoop.check(read_total: read, want: bytes)
    ensure
      near&.close
    end

    def measure_c(params, meter, mode)
      binary = CProgram.build("read_sha256", pkg: "libcrypto")
      bytes = params[:mib] * MIB
      near, writer = start_writer(bytes, params[:rate])
      own = nil
      meter.measure do
        writer.go!
        own = CProgram.figures(StreamPeer.spawn_reader([binary, mode], near).wait)
        own[:units]
      end
      writer.wait
      ReadLoop.check(read_total: own[:bytes], want: bytes)
      CProgram.adopt(meter, own)
    ensure
      near&.close unless near&.closed?
    end

    def hash(digest, chunk)
      digest.reset
      digest.update(chunk)
      digest.digest
    end

    def readpartial(io, digest)
      total = 0
      loop do
        chunk = io.readpartial(CHUNK)
        hash(digest, chunk)
        total += chunk.bytesize
      end
    rescue EOFError
      total
    end

    def readpartial_reuse(io, digest)
      total = 0
      buf = String.new(capacity: CHUNK)
      loop do
        io.readpartial(CHUNK, buf)
        hash(digest, buf)
        total += buf.bytesize
      end
    rescue EOFError
      total
    end

    def read_loop(io, digest, buffer = nil)
      total = 0
      io.read_loop(CHUNK, buffer) do |chunk|
        hash(digest, chunk)
        total += chunk.bytesize
      end
      total
    end
  end
end

Bench.define(:read_loop_sha256) do
  title "read a stream in 64 KiB chunks with a SHA-256 of each (a block that costs CPU)"
  about <<~MD
    As *read_loop*, with a block that costs CPU: the SHA-256 of each chunk (`OpenSSL::Digest`,
    34 us per 64 KiB here). The writer process sends at most `rate` MiB/s. While the block
    hashes, a read in flight on the other core would be hidden behind it; that is what the
    issue's target asks to show (#16: `read_loop` at least 1.2x the `readpartial` loop doing the
    same work, on io_uring). The C rows (`bench/c/read_sha256.c`) are the floor: *serial* reads
    and hashes in one thread; *fresh* does so into a new `malloc`'d buffer per chunk, freed 256
    at a time as Ruby's GC frees Strings (a new String per chunk, minus Ruby); *thread* has a
    reader thread fill a ring of 8 chunks while the main thread hashes, the most a second core
    hides here (its CPU s count both threads).
  MD
  metric "MiB/s"
  bytes_per_unit 1024 * 1024
  sizes quick: { mib: 512, rate: 1500 }, full: { mib: 2048, rate: 1500 }
  reference :readpartial

  contender(:readpartial, "readpartial loop + SHA-256, new String per read (no scheduler)") do |params, meter|
    Bench::ReadSha.measure(Bench::Threads.new, params, meter) { |io, d| Bench::ReadSha.readpartial(io, d) }
  end
  contender(:readpartial_reuse, "readpartial(65536, buf) loop + SHA-256 (no scheduler)") do |params, meter|
    Bench::ReadSha.measure(Bench::Threads.new, params, meter) { |io, d| Bench::ReadSha.readpartial_reuse(io, d) }
  end
  %i[io_uring epoll].each do |way|
    contender(:"read_loop_#{way}", "IO#read_loop + SHA-256, Ringspun #{way}") do |params, meter|
      Bench::ReadSha.measure(Bench::Fibers.new(way), params, meter) { |io, d| Bench::ReadSha.read_loop(io, d) }
    end
    contender(:"read_loop_reuse_#{way}", "IO#read_loop(65536, buf) + SHA-256, Ringspun #{way}") do |params, meter|
      Bench::ReadSha.measure(Bench::Fibers.new(way), params, meter) do |io, d|
        Bench::ReadSha.read_loop(io, d, String.new(capacity: Bench::ReadSha::CHUNK))
      end
    end
  end
  contender(:c_serial, "C: read(2) then SHA-256, one thread (bench/c/read_sha256.c)") do |params, meter|
    Bench::ReadSha.measure_c(params, meter, "serial")
  end
  contender(:c_fresh, "C: read(2) into a new 64 KiB malloc per chunk (freed 256 at a time), then SHA-256") do |params, meter|
    Bench::ReadSha.measure_c(params, meter, "fresh")
  end
  contender(:c_thread, "C: a reader thread fills 8 chunks while the main thread hashes") do |params, meter|
    Bench::ReadSha.measure_c(params, meter, "thread")
  end

  target issue: 16, text: "read_loop with a SHA-256 per chunk at least 1.2x readpartial doing the same, on io_uring",
         contender: :read_loop_io_uring, rate_vs: :readpartial, at_least: 1.2
end
