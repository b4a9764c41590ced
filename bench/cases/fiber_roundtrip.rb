# frozen_string_literal: true

# Two tasks bounce one byte over a pipe pair. Each round trip is two writes,
# two reads and two park/wake cycles with nothing else to do, so the rate is
# the scheduler's fixed cost per wait.
module Bench
  module PipePingPong
    PING = "p"
    PONG = "P"

    module_function

    def measure(tasks, params, meter)
      tasks.check!
      meter.measure { run(tasks, params[:round_trips]) }
    end

    # @return [Integer] round trips done
    def run(tasks, round_trips)
      ping_r, ping_w = IO.pipe
      pong_r, pong_w = IO.pipe
      tasks.run do |t|
        t.spawn { answer(ping_r, pong_w, round_trips) }
        t.spawn { ask(ping_w, pong_r, round_trips) }
      end
      round_trips
    ensure
      [ping_r, ping_w, pong_r, pong_w].each { |io| io&.close }
    end

    def ask(out, back, round_trips)
      reply = String.new(capacity: 1)
      round_trips.times do
        out.write(PING)
        back.readpartial(1, reply)
        raise "expected #{PONG.inspect}, got #{reply.inspect}" unless reply == PONG
      end
    end

    def answer(inbound, out, round_trips)
      request = String.new(capacity: 1)
      round_trips.times do
        inbound.readpartial(1, request)
        raise "expected #{PING.inspect}, got #{request.inspect}" unless request == PING

        out.write(PONG)
      end
    end
  end
end

Bench.define(:fiber_roundtrip) do
  title "one byte ping-pong over a pipe pair"
  about <<~MD
    Two tasks bounce one byte back and forth over two pipes with `IO#write` and
    `IO#readpartial`. Each round trip is two writes, two reads and two park/wake cycles with
    nothing else to do, so the rate is the fixed cost of one wait. Ringspun runs the two tasks as
    fibers under `Ringspun.run`, forced to one backend; the threads contender runs them as two Ruby
    threads with blocking IO and no scheduler.
  MD
  metric "round trips/s"
  sizes quick: { round_trips: 40_000 }, full: { round_trips: 500_000 }
  needs { |_params| { fds: 8, threads: 2 } }
  reference :threads

  contender(:ringspun_io_uring, "Ringspun io_uring") do |params, meter|
    Bench::PipePingPong.measure(Bench::Fibers.new(:io_uring), params, meter)
  end
  contender(:ringspun_epoll, "Ringspun epoll") do |params, meter|
    Bench::PipePingPong.measure(Bench::Fibers.new(:epoll), params, meter)
  end
  contender(:threads, "two threads") do |params, meter|
    Bench::PipePingPong.measure(Bench::Threads.new, params, meter)
  end
end
