# frozen_string_literal: true

require_relative "test_helper"
require "fcntl"
require "io/wait"

# The runtime contract (issue 2, "Tests"): written once, run under every
# backend by RingspunTest::Modes (TestSchedulerIoUring, TestSchedulerEpoll).
# Every test runs inside #run_rs, i.e. Ringspun.run on the class's backend.
module SchedulerContract
  include RingspunTest

  MIB = 1024 * 1024

  # ---- helpers --------------------------------------------------------------------

  # Raised into the fibers of a #gather that another fiber of it failed.
  class GatherAborted < StandardError; end

  # Starts n fibers running the block with their index and waits for all of
  # them; returns their values in index order. The first exception a fiber
  # raises is raised here at once, after the fibers still waiting have been
  # stopped (Fiber#raise), so a failure inside a fiber fails the test
  # instead of leaving its partners waiting forever.
  def gather(count)
    results = Array.new(count)
    done = Queue.new
    fibers = Array.new(count) do |i|
      Ringspun.spin do
        results[i] = yield(i)
        done << nil
      rescue Exception => e # rubocop:disable Lint/RescueException -- re-raised below
        done << e
      end
    end
    count.times do
      error = done.pop
      next unless error

      fibers.each { |f| f.raise(GatherAborted, "stopped: another fiber failed") if f.alive? }
      raise error
    end
    results
  end

  def payload(seed, size)
    Random.new(seed).bytes(size)
  end

  def sha(data)
    Digest::SHA256.hexdigest(data)
  end

  def assert_between(low, high, value, what)
    assert_operator value, :>=, low, "#{what}: #{value} < #{low}"
    assert_operator value, :<=, high, "#{what}: #{value} > #{high}"
  end

  # Closes every IO given, ignoring ones already closed.
  def close_all(*ios)
    ios.flatten.compact.each { |io| io.close unless io.closed? }
  end

  # ---- many fibers ------------------------------------------------------------------

  def test_ten_thousand_fibers_pass_messages_through_queues_and_sleep
    pairs = 5_000
    result = run_rs do
      done = Queue.new
      pairs.times do |i|
        q = Queue.new
        Ringspun.spin do
          3.times do |k|
            q << (i * 3) + k
            sleep 0.001 if k == 1
          end
        end
        Ringspun.spin do
          sum = 3.times.sum { q.pop }
          sleep 0.001 * (i % 3)
          done << sum
        end
      end
      total = pairs.times.sum { done.pop }
      [total, done.size, scheduler.fiber_count, scheduler.pending_operations]
    end
    n = pairs * 3
    assert_equal [n * (n - 1) / 2, 0, 1, 0], result
  end

  def test_four_thousand_fibers_ping_pong_over_pipes
    pairs = 2_000
    rounds = 10
    pipes = Array.new(pairs) { IO.pipe + IO.pipe } # ping_r, ping_w, pong_r, pong_w
    result = run_rs do
      sums = gather(pairs * 2) do |j|
        i = j / 2
        ping_r, ping_w, pong_r, pong_w = pipes[i]
        if j.even?
          rounds.times.sum do |k|
            ping_w.write([i, k].pack("L<L<"))
            back_i, back_k = pong_r.read(8).unpack("L<L<")
            raise "pair #{i} got a reply for pair #{back_i}" unless back_i == i

            back_k
          end
        else
          rounds.times do
            got_i, got_k = ping_r.read(8).unpack("L<L<")
            pong_w.write([got_i, got_k + 1].pack("L<L<"))
          end
          0
        end
      end
      [sums.sum, scheduler.pending_operations]
    end
    assert_equal [pairs * (1..rounds).sum, 0], result
  ensure
    close_all(pipes)
  end

  def test_tcp_echo_server_with_a_thousand_concurrent_clients
    clients = 1_000
    server = nil
    result = run_rs do
      server = TCPServer.new("127.0.0.1", 0)
      server.listen(clients)
      port = server.local_address.ip_port
      Ringspun.spin do
        clients.times do
          conn = server.accept
          Ringspun.spin do
            loop { conn.write(conn.readpartial(16 * 1024)) }
          rescue EOFError
            nil
          ensure
            conn.close
          end
        end
      end
      echoes = gather(clients) do |i|
        data = payload(i, 1 + ((i * 7919) % 40_000))
        sock = TCPSocket.new("127.0.0.1", port)
        writer = Queue.new
        Ringspun.spin do
          sock.write(data)
          sock.close_write
        ensure
          writer << :done
        end
        echoed = sock.read
        writer.pop
        sock.close
        [echoed.bytesize == data.bytesize, sha(echoed) == sha(data), echoed.bytesize]
      end
      bad = echoes.each_index.reject { |i| echoes[i][0] && echoes[i][1] }
      [bad, echoes.sum { |e| e[2] }]
    ensure
      server&.close
    end
    expected = (0...clients).sum { |i| 1 + ((i * 7919) % 40_000) }
    assert_equal [[], expected], result
  end

  # ---- time ----------------------------------------------------------------------------

  def test_sleep_takes_about_as_long_as_asked
    took = run_rs do
      # (sleep's value is whole wall-clock seconds: 0, or 1 across a second boundary.)
      [elapsed { assert_includes [0, 1], sleep(0.05) }, elapsed { sleep(0) }, elapsed { sleep(Rational(1, 50)) }]
    end
    assert_between 0.045, 0.5, took[0], "sleep(0.05)"
    assert_between 0.0, 0.1, took[1], "sleep(0)"
    assert_between 0.018, 0.5, took[2], "sleep(1/50r)"
  end

  def test_sleepers_run_concurrently
    took = run_rs { elapsed { gather(500) { sleep 0.1 } } }
    assert_between 0.095, 0.6, took, "500 concurrent sleep(0.1)"
  end

  def test_thousands_of_sleepers_wake_in_deadline_order
    n = 2_000
    buckets = 10
    step = 0.03
    records = run_rs do
      gate = Queue.new
      done = Queue.new
      records = []
      n.times do |i|
        Ringspun.spin do
          bucket = (i * 7) % buckets # buckets interleave in start order
          gate.pop
          want = step * (bucket + 1)
          called = now
          sleep want
          records << [bucket, called + want, now - called, want, called]
          done << true
        end
      end
      GC.start
      n.times { gate << :go } # every sleeper starts in the same scheduler turn
      n.times { done.pop }
      records
    end
    assert_equal n, records.size
    assert_equal [n / buckets] * buckets, records.map(&:first).tally.sort.map(&:last)

    # Each sleeper's deadline is when it called sleep plus its duration; a
    # backend may arm the timer a little later (io_uring submits the whole
    # turn's timers at its end), by at most the time the turn took. Walking
    # the wake order, no deadline may lie further than that before one
    # already passed.
    calls = records.map(&:last)
    slack = calls.max - calls.min + 0.002
    latest = -Float::INFINITY
    inversions = []
    records.each_with_index do |(bucket, deadline), i|
      inversions << [i, bucket, (latest - deadline).round(4)] if deadline < latest - slack
      latest = deadline if deadline > latest
    end
    assert_empty inversions.first(5), "sleepers woke out of deadline order (slack #{slack.round(4)} s)"
    assert_operator slack, :<, 0.25, "starting #{n} sleepers took far too long"

    early = records.select { |_, _, took, want| took < want - 0.001 }
    late = records.select { |_, _, took, want| took > want + 0.5 }
    assert_equal [[], []], [early.first(5), late.first(5)], "sleeps woke early or far too late"
  end

  # ---- timeouts and interruption ---------------------------------------------------------

  def test_timeout_in_a_read_that_never_completes
    r, w = IO.pipe
    result = run_rs do
      error = nil
      took = elapsed do
        Timeout.timeout(0.1) { r.read(1) }
      rescue Timeout::Error => e
        error = e
      end
      pending = scheduler.pending_operations
      inflight = scheduler.inflight_operations
      # No cancelled read is left to swallow the next byte.
      w.write("z")
      [error.class, took, pending, inflight, r.read(1)]
    end
    assert_equal Timeout::Error, result[0]
    assert_between 0.09, 1.0, result[1], "Timeout.timeout(0.1)"
    assert_equal [0, 0, "z"], result[2..]
  ensure
    close_all(r, w)
  end

  def test_timeout_in_a_socket_read_with_a_custom_error
    a, b = UNIXSocket.pair
    result = run_rs do
      error = assert_raises(MyError) { Timeout.timeout(0.05, MyError, "too slow") { a.readpartial(100) } }
      b.write("after")
      [error.message, scheduler.pending_operations, a.readpartial(100)]
    end
    assert_equal ["too slow", 0, "after"], result
  ensure
    close_all(a, b)
  end

  def test_repeated_timeouts_leave_nothing_behind
    r, w = IO.pipe
    result = run_rs do
      fired = 50.times.count do
        Timeout.timeout(0.002) { r.read(1) }
        false
      rescue Timeout::Error
        true
      end
      [fired, scheduler.pending_operations, scheduler.inflight_operations]
    end
    assert_equal [50, 0, 0], result
  ensure
    close_all(r, w)
  end

  def test_timeout_that_does_not_fire_returns_the_block_value
    result = run_rs do
      value = Timeout.timeout(5) { sleep 0.01; :inside }
      sleep 0.01 # a turn of the loop reaps the cancelled timer
      [value, scheduler.pending_operations, scheduler.inflight_operations]
    end
    assert_equal [:inside, 0, 0], result
  end

  def test_fiber_raise_into_a_fiber_parked_on_io
    r, w = IO.pipe
    result = run_rs do
      seen = {}
      done = Queue.new
      reader = Fiber.schedule do
        r.read(1)
        seen[:reader] = :read_returned
      rescue MyError => e
        seen[:reader] = [e.class, e.message]
      ensure
        done << :reader
      end
      Fiber.schedule do
        reader.raise(MyError, "wake up")
        seen[:raiser] = :continued
      ensure
        done << :raiser
      end
      2.times { done.pop }
      # The cancelled read is gone: it does not swallow the next byte.
      w.write("q")
      seen[:pipe] = r.read(1)
      seen[:pending] = scheduler.pending_operations
      seen
    end
    assert_equal({ reader: [MyError, "wake up"], raiser: :continued, pipe: "q", pending: 0 }, result)
  ensure
    close_all(r, w)
  end

  def test_fiber_raise_from_the_main_fiber_into_a_reader_and_a_sleeper
    r, w = IO.pipe
    result = run_rs do
      caught = Queue.new
      reader = Fiber.schedule do
        r.readpartial(10)
      rescue MyError => e
        caught << [:reader, e.message]
      end
      sleeper = Fiber.schedule do
        sleep 10
      rescue MyError => e
        caught << [:sleeper, e.message]
      end
      took = elapsed do
        reader.raise(MyError, "r")
        sleeper.raise(MyError, "s")
      end
      got = [caught.pop, caught.pop].sort
      sleep 0.01 # let the cancelled timer's completion arrive
      [got, took < 1, reader.alive?, sleeper.alive?, scheduler.pending_operations]
    end
    assert_equal [[[:reader, "r"], [:sleeper, "s"]], true, false, false, 0], result
  ensure
    close_all(r, w)
  end

  def test_fiber_raise_into_a_fiber_that_is_runnable_but_not_yet_resumed
    result = run_rs do
      log = []
      q = Queue.new
      waiter = Fiber.schedule do
        log << [:got, q.pop]
      rescue MyError
        log << :raised
      end
      q << :item # the waiter is runnable now, but has not run yet
      waiter.raise(MyError)
      log << :raiser_continued
      sleep 0.01
      log + [q.size, waiter.alive?, scheduler.pending_operations]
    end
    # The waiter never took the item: it is still in the queue.
    assert_equal [:raised, :raiser_continued, 1, false, 0], result
  end

  def test_every_kind_of_wait_can_be_interrupted
    result = run_rs do
      out = {}
      sleeper = Fiber.schedule do
        sleep
      rescue MyError
        out[:sleep_forever] = :raised
      end
      sleeper.raise(MyError)
      out[:inner_timeout] = begin
        Timeout.timeout(5) { Timeout.timeout(0.02, MyError) { sleep 1 } }
      rescue MyError
        :fired
      end
      out[:outer_timeout] = begin
        Timeout.timeout(0.02) { Timeout.timeout(5, MyError) { sleep 1 } }
      rescue Timeout::Error
        :fired
      end
      q = Queue.new
      out[:queue_pop] = Timeout.timeout(0.02) { q.pop } rescue $!.class # rubocop:disable Style/RescueModifier
      m = Mutex.new
      Ringspun.spin { m.synchronize { sleep 0.1 } }
      out[:mutex_lock] = Timeout.timeout(0.02) { m.synchronize { :locked } } rescue $!.class # rubocop:disable Style/RescueModifier
      cv = ConditionVariable.new
      out[:cv_wait] = Timeout.timeout(0.02) { m.synchronize { cv.wait(m) } } rescue $!.class # rubocop:disable Style/RescueModifier
      q << :after
      out[:queue_after] = q.pop
      out[:mutex_after] = m.synchronize { :locked }
      sleep 0.01
      out[:pending] = scheduler.pending_operations
      out
    end
    assert_equal({ sleep_forever: :raised, inner_timeout: :fired, outer_timeout: :fired,
                   queue_pop: Timeout::Error, mutex_lock: Timeout::Error, cv_wait: Timeout::Error,
                   queue_after: :after, mutex_after: :locked, pending: 0 }, result)
  end

  # A Timeout that fires just as a read completes must not throw away bytes
  # the kernel already copied out of the pipe: the readiness path cannot lose
  # them (read(2) either happens or not), and io_uring must give the same
  # bytes (ARCHITECTURE.md, layer 5).
  def test_timeouts_racing_reads_lose_no_bytes
    n = 600
    r, w = IO.pipe
    result = run_rs do
      Ringspun.spin do
        n.times do |i|
          w.write((i % 256).chr)
          sleep 0.0001 # about as long as the reader's timeout: they race
        end
        w.close
      end
      got = +""
      timeouts = 0
      loop do
        got << Timeout.timeout(0.0001) { r.readpartial(1) }
      rescue Timeout::Error
        timeouts += 1
      rescue EOFError
        break
      end
      [got.bytesize, got.bytes == Array.new(n) { |i| i % 256 }, timeouts.positive?]
    end
    assert_equal [n, true, true], result
  ensure
    close_all(r, w)
  end

  def test_thread_kill_ends_a_run_and_frees_its_backend
    r, w = IO.pipe
    parked = Queue.new
    runner = Thread.new do
      Ringspun.run(backend: backend) do
        Ringspun.spin { sleep 10 }
        parked << Fiber.scheduler.backend
        r.read(1)
      end
    end
    assert_equal backend, parked.pop
    sleep 0.02 # let the reader park
    runner.kill
    assert_same runner, runner.join(5), "the killed thread did not end"
    # The leak check (teardown) sees the ring or epoll fd closed.
  ensure
    close_all(r, w)
  end

  def test_an_outer_timeout_ends_a_run_that_waits_forever
    r, w = IO.pipe
    took = elapsed do
      assert_raises(Timeout::Error) do
        Timeout.timeout(0.1) { Ringspun.run(backend: backend) { r.read(1) } }
      end
    end
    assert_between 0.09, 2.0, took, "outer Timeout.timeout(0.1)"
    assert_nil Fiber.scheduler
  ensure
    close_all(r, w)
  end

  # A run ended from outside (here an outer Timeout; Thread#kill and
  # Interrupt take the same path) or by SystemExit in one fiber must unwind
  # the fibers still parked, so their ensure clauses run: files close, locks
  # open, the pidfd process_wait holds is closed.
  def test_an_aborted_run_runs_the_ensure_clauses_of_parked_fibers
    ran = []
    assert_raises(Timeout::Error) do
      Timeout.timeout(0.1) do
        Ringspun.run(backend: backend) do
          Ringspun.spin do
            sleep
          ensure
            ran << :spun
          end
          begin
            sleep
          ensure
            ran << :main
          end
        end
      end
    end
    assert_raises(SystemExit) do
      Ringspun.run(backend: backend) do
        Ringspun.spin do
          sleep
        ensure
          ran << :spun_before_exit
        end
        Ringspun.spin { exit 3 }
        sleep
      end
    end
    assert_equal %i[main spun spun_before_exit], ran.sort
  end

  def test_thousands_of_timed_waits_in_one_turn_overflow_the_submission_queue
    waiters = 6_000 # each a poll and a linked timeout: 12,000 SQEs, ring of 4,096
    r, w = IO.pipe
    result = run_rs do
      gate = Queue.new
      results = Queue.new
      waiters.times do |i|
        Ringspun.spin do
          gate.pop
          results << (i.even? ? r.wait_readable(0.05) : r.wait_readable(10)).class
        end
      end
      waiters.times { gate << :go }
      timed_out = Array.new(waiters / 2) { results.pop }
      w.write("!") # the rest see data
      readable = Array.new(waiters / 2) { results.pop }
      [timed_out.tally, readable.tally, scheduler.pending_operations, scheduler.inflight_operations]
    end
    assert_equal [{ NilClass => waiters / 2 }, { IO => waiters / 2 }, 0, 0], result
  ensure
    close_all(r, w)
  end

  # ---- threads and synchronisation ---------------------------------------------------------

  def test_queue_between_a_fiber_and_a_thread_in_both_directions
    n = 500
    result = run_rs do
      to_fiber = Queue.new
      to_thread = Queue.new
      thread = Thread.new do
        # Ping-pong: every message waits for its reply, so each one crosses
        # threads twice (the fiber's wakeup goes through the eventfd).
        n.times.map do |i|
          to_fiber << i
          to_thread.pop
        end
      end
      # A fiber sleeping meanwhile keeps timers in flight next to the wakeups.
      ticker = Ringspun.spin { loop { sleep 0.001 } }
      n.times { to_thread << (to_fiber.pop * 3) }
      replies = thread.value
      ticker.raise(StopIteration) # ends the loop
      sleep 0.01 # a turn of the loop reaps the cancelled timer
      [replies == (0...n).map { |i| i * 3 }, ticker.alive?, scheduler.pending_operations]
    end
    assert_equal [true, false, 0], result
  end

  def test_many_fibers_consume_a_queue_fed_by_a_thread
    items = 5_000
    consumers = 50
    result = run_rs do
      q = Queue.new
      feeder = Thread.new do
        items.times { |i| q << i }
        consumers.times { q << nil }
      end
      counts = gather(consumers) do
        taken = []
        while (v = q.pop)
          taken << v
        end
        taken
      end
      feeder.join
      all = counts.flatten
      [all.size, all.sort == (0...items).to_a]
    end
    assert_equal [items, true], result
  end

  def test_sized_queue_between_fibers_bounds_the_producer
    n = 500
    result = run_rs do
      q = SizedQueue.new(3)
      max_seen = 0
      got = []
      gather(2) do |role|
        if role.zero?
          n.times do |i|
            q << i
            max_seen = q.size if q.size > max_seen
          end
          q << nil
        else
          while (v = q.pop)
            got << v
            sleep 0.0005 if (v % 50).zero?
          end
        end
      end
      [got == (0...n).to_a, max_seen, q.size]
    end
    assert_equal [true, 3, 0], result
  end

  def test_sized_queue_between_a_fiber_and_a_thread_in_both_directions
    n = 300
    result = run_rs do
      into_fiber = SizedQueue.new(2)
      into_thread = SizedQueue.new(2)
      producer = Thread.new { n.times { |i| into_fiber << i } }
      consumer = Thread.new { n.times.map { into_thread.pop } }
      got = n.times.map { into_fiber.pop }
      got.each { |v| into_thread << -v } # blocks while the thread lags behind
      producer.join
      [got == (0...n).to_a, consumer.value == (0...n).map { |i| -i }]
    end
    assert_equal [true, true], result
  end

  def test_threads_each_running_a_scheduler_share_a_mutex_and_a_queue
    threads = 4
    fibers = 100
    rounds = 20
    m = Mutex.new
    counter = 0
    q = Queue.new
    values = Array.new(threads) do |t|
      Thread.new do
        run_one = lambda do
          gather(fibers) do |i|
            rounds.times do
              m.synchronize do
                v = counter
                sleep 0 if i.even?
                counter = v + 1
              end
              q << t # another thread's fiber may take it: wakeups cross threads
              q.pop
            end
          end
          [scheduler.backend, scheduler.pending_operations]
        end
        Ringspun.run(backend: backend, &run_one)
      end
    end.map(&:value)
    assert_equal [[[backend, 0]] * threads, threads * fibers * rounds, 0], [values, counter, q.size]
  end

  def test_condition_variable_timeouts_racing_signals_from_a_thread
    m = Mutex.new
    cv = ConditionVariable.new
    stop = false
    signaller = Thread.new do
      until stop
        m.synchronize { cv.broadcast }
        Thread.pass
      end
    end
    result = run_rs do
      gather(20) { 200.times { m.synchronize { cv.wait(m, 0.0005) } } }
      sleep 0.01
      [scheduler.pending_operations, scheduler.inflight_operations]
    end
    assert_equal [0, 0], result
  ensure
    stop = true
    signaller&.join
  end

  def test_mutex_contended_by_fibers
    fibers = 50
    rounds = 20
    result = run_rs do
      m = Mutex.new
      counter = 0
      inside = 0
      most_inside = 0
      gather(fibers) do
        rounds.times do
          m.synchronize do
            inside += 1
            most_inside = inside if inside > most_inside
            v = counter
            sleep 0 # give every other fiber the chance to barge in
            counter = v + 1
            inside -= 1
          end
        end
      end
      [counter, most_inside, m.locked?, scheduler.pending_operations]
    end
    assert_equal [fibers * rounds, 1, false, 0], result
  end

  def test_mutex_held_by_a_thread_blocks_only_the_fiber
    result = run_rs do
      m = Mutex.new
      locked = Queue.new
      release = Queue.new
      holder = Thread.new do
        m.synchronize do
          locked << true
          release.pop
        end
      end
      locked.pop
      ticks = 0
      ticker = Ringspun.spin do
        5.times do
          sleep 0.002
          ticks += 1
        end
        release << :go # the thread lets go only after the ticker ran
      end
      m.synchronize { :got_it }
      holder.join
      [ticks, ticker.alive?, m.locked?]
    end
    assert_equal [5, false, false], result
  end

  def test_condition_variable_signal_and_broadcast_between_fibers
    waiters = 10
    result = run_rs do
      m = Mutex.new
      cv = ConditionVariable.new
      tokens = 0
      open = false
      woken = 0
      done = Queue.new
      waiters.times do
        Ringspun.spin do
          m.synchronize do
            cv.wait(m) until open || tokens.positive?
            tokens -= 1 unless open
            woken += 1
          end
          done << true
        end
      end
      seen = [woken]
      2.times do
        m.synchronize do
          tokens += 1
          cv.signal
        end
        done.pop
        sleep 0.01 # had signal woken more than one, they would run now
        seen << woken
      end
      m.synchronize do
        open = true
        cv.broadcast
      end
      (waiters - 2).times { done.pop }
      seen << woken
    end
    assert_equal [0, 1, 2, waiters], result
  end

  def test_condition_variable_between_a_fiber_and_a_thread
    result = run_rs do
      m = Mutex.new
      cv = ConditionVariable.new
      state = :start
      thread = Thread.new do
        m.synchronize do
          cv.wait(m) until state == :fiber_says_go
          state = :thread_replied
          cv.signal
        end
      end
      m.synchronize do
        state = :fiber_says_go
        cv.signal
        cv.wait(m) until state == :thread_replied
      end
      thread.join
      took = elapsed { m.synchronize { cv.wait(m, 0.05) } }
      [state, took >= 0.045 && took < 0.5]
    end
    assert_equal [:thread_replied, true], result
  end

  # Thread#join(timeout) is left out on purpose: Ruby 3.1's thread_join_sleep
  # calls the scheduler's block hook in a loop until the thread finishes and
  # never checks the limit, under any scheduler (fixed in Ruby 3.2).
  def test_thread_join_inside_a_fiber
    result = run_rs do
      go = Queue.new
      thread = Thread.new do
        go.pop
        42
      end
      ticks = 0
      Ringspun.spin do
        5.times do
          sleep 0.002
          ticks += 1
        end
        go << :now # the thread ends only after the ticker ran
      end
      joined = thread.join
      failing = Thread.new do
        Thread.current.report_on_exception = false
        raise MyError, "in thread"
      end
      error = assert_raises(MyError) { failing.value }
      [ticks, joined.equal?(thread), thread.value, error.message]
    end
    assert_equal [5, true, 42, "in thread"], result
  end

  # ---- processes --------------------------------------------------------------------------

  def test_process_wait_on_a_spawned_child
    result = run_rs do
      pid = Process.spawn("true")
      waited = Process.wait(pid)
      [waited == pid, $?.pid == pid, $?.exitstatus]
    end
    assert_equal [true, true, 0], result
  end

  def test_process_wait2_on_a_forked_child_exit_status
    result = run_rs do
      pid = fork { exit!(3) }
      waited, status = Process.wait2(pid)
      [waited == pid, status.exitstatus, status.success?]
    end
    assert_equal [true, 3, false], result
  end

  def test_process_wait_lets_other_fibers_run
    result = run_rs do
      ticks = 0
      ticker = Ringspun.spin do
        loop do
          sleep 0.005
          ticks += 1
        end
      end
      pid = Process.spawn("sleep", "0.15")
      _, status = Process.wait2(pid)
      ticker.raise(StopIteration)
      [status.exitstatus, ticks >= 5]
    end
    assert_equal [0, true], result
  end

  def test_process_wait_any_child_and_nohang
    result = run_rs do
      sleeper = Process.spawn("sleep", "10")
      nohang = Process.wait(sleeper, Process::WNOHANG)
      Process.kill(:TERM, sleeper)
      _, killed = Process.wait2(sleeper)
      quick = Process.spawn("sh", "-c", "exit 5")
      any_pid, any_status = Process.wait2(-1)
      [nohang, killed.termsig, any_pid == quick, any_status.exitstatus]
    end
    assert_equal [nil, Signal.list["TERM"], true, 5], result
  end

  def test_process_wait_on_a_process_that_is_not_our_child_raises_echild
    stranger = Process.ppid # alive, and not our child
    result = run_rs(limit: 1.5) do
      [Process.wait(stranger), :no_error]
    rescue Errno::ECHILD => e
      e.class
    end
    assert_equal Errno::ECHILD, result
  end

  def test_popen_backticks_and_system_inside_a_fiber
    result = run_rs do
      ticks = 0
      Ringspun.spin do
        5.times do
          sleep 0.01
          ticks += 1
        end
      end
      popen = IO.popen(["sh", "-c", "echo hi; exit 4"], &:read)
      popen_status = $?.exitstatus
      backticks = `printf %s backtick`
      failed = system("sh", "-c", "exit 6")
      failed_status = $?.exitstatus
      slow = system("sleep", "0.1") # the ticker runs meanwhile
      [popen, popen_status, backticks, failed, failed_status, slow, ticks, scheduler.pending_operations]
    end
    assert_equal ["hi\n", 4, "backtick", false, 6, true, 5, 0], result
  end

  # ---- names --------------------------------------------------------------------------------

  def test_addrinfo_getaddrinfo_inside_a_fiber
    result = run_rs do
      found = gather(10) { Addrinfo.getaddrinfo("localhost", 80) }
      hook = scheduler.address_resolve("localhost")
      [
        found.all? { |ais| !ais.empty? && ais.all? { |ai| ai.ip_port == 80 } },
        found.map { |ais| (ais.map(&:ip_address) & ["127.0.0.1", "::1"]).any? }.uniq,
        (hook & ["127.0.0.1", "::1"]).any?,
      ]
    end
    assert_equal [true, [true], true], result
  end

  # ---- fork -----------------------------------------------------------------------------------

  # Runs the block in a forked child (from inside or outside a run) and
  # returns what it wrote to the pipe (Marshal) and its exit status.
  def in_child(expect_status: 0)
    r, w = IO.pipe
    pid = fork do
      r.close
      value = begin
        [:ok, yield]
      rescue Exception => e # rubocop:disable Lint/RescueException -- reported to the parent
        [:error, "#{e.class}: #{e.message}\n#{e.backtrace&.first(8)&.join("\n")}"]
      end
      w.write(Marshal.dump(value))
      w.close
      exit!(value[0] == :ok ? expect_status : 99)
    end
    w.close
    report = Marshal.load(r.read) # rubocop:disable Security/MarshalLoad -- our own child
    _, status = Process.wait2(pid)
    flunk "child failed: #{report[1]}" if report[0] == :error
    assert_equal expect_status, status.exitstatus
    report[1]
  ensure
    close_all(r, w)
  end

  def child_work(backend)
    Ringspun.run(backend: backend) do
      a, b = IO.pipe
      writer = Ringspun.spin do
        b.write("x" * 300_000)
        b.close
      end
      got = a.read.bytesize
      # The read ends when the fd is closed, which on Ruby 3.4 may be before
      # the writer's close has returned (a close is blocking work, handed to
      # blocking_operation_wait).
      sleep 0.001 while writer.alive?
      [Fiber.scheduler.backend, got, Fiber.scheduler.pending_operations]
    ensure
      close_all(a, b)
    end
  end

  def test_fork_inside_run_child_runs_its_own_scheduler
    result = run_rs do
      child = in_child { child_work(backend) }
      # The parent's ring is untouched: IO still works here.
      r, w = IO.pipe
      Ringspun.spin do
        w.write("parent")
        w.close
      end
      [child, r.read, scheduler.backend].tap { r.close }
    end
    assert_equal [[backend, 300_000, 0], "parent", backend], result
  end

  def test_fork_inside_run_child_does_io_in_the_inherited_fiber
    result = run_rs do
      in_child do
        # No new run: the forked fiber goes on under the scheduler it
        # inherited, which must have dropped the parent's ring for a new one.
        r, w = IO.pipe
        feeder = Queue.new
        Ringspun.spin do
          sleep 0.01
          w.write("y" * 100_000)
          w.close
          feeder << :done
        end
        got = r.read.bytesize
        feeder.pop
        r.close
        [got, Fiber.scheduler.backend, Fiber.scheduler.pending_operations]
      end
    end
    assert_equal [100_000, backend, 0], result
  end

  def test_fork_while_fibers_wait_on_io
    pipes = Array.new(10) { IO.pipe }
    result = run_rs do
      got = Queue.new
      pipes.each_with_index { |(r, _), i| Ringspun.spin { got << [i, r.read(4)] } }
      sleep 0.01 # every reader is parked in the kernel (or in epoll) now
      status = in_child do
        # The child writes what the parent's parked fibers wait for, and
        # runs a scheduler of its own on the side.
        pipes.each_with_index { |(_, w), i| w.write(format("%04d", i)) }
        child_work(backend)
      end
      results = Array.new(pipes.size) { got.pop }.sort
      [status, results, scheduler.pending_operations]
    end
    assert_equal [[backend, 300_000, 0], Array.new(10) { |i| [i, format("%04d", i)] }, 0], result
  ensure
    close_all(pipes)
  end

  def test_plain_fork_with_and_without_a_block_inside_run
    result = run_rs do
      r, w = IO.pipe
      with_block = fork do
        w.write("block:#{Process.pid};")
        exit!(0)
      end
      without_block = fork
      if without_block.nil?
        w.write("bare:#{Process.pid};")
        exit!(0)
      end
      w.close
      said = r.read
      r.close
      statuses = [with_block, without_block].map { |pid| Process.wait2(pid)[1].exitstatus }
      [said.split(";").sort == ["bare:#{without_block}", "block:#{with_block}"].sort, statuses]
    end
    assert_equal [true, [0, 0]], result
  end

  def test_fork_outside_run_child_starts_a_run
    assert_equal [backend, 300_000, 0], in_child { child_work(backend) }
  end

  # ---- Ringspun.run itself ------------------------------------------------------------------

  def test_run_returns_the_block_value_and_restores_state
    assert_equal 42, run_rs { 42 }
    assert_nil run_rs { nil }
    assert_equal [:a, 1], run_rs { [:a, 1] }
    assert_nil Fiber.scheduler
    assert Fiber.current.blocking?
    inside = run_rs { [Fiber.scheduler.class, Fiber.current.blocking?, scheduler.fiber_count] }
    assert_equal [Ringspun::Scheduler, false, 1], inside
  end

  def test_run_waits_for_every_fiber_before_returning
    finished = []
    value = run_rs do
      3.times { |i| Ringspun.spin { sleep 0.01 * (3 - i); finished << i } }
      :main_done
    end
    assert_equal [:main_done, [2, 1, 0]], [value, finished]
  end

  def test_run_reraises_the_block_exception_after_other_fibers_finish
    other_finished = false
    error = assert_raises(MyError) do
      run_rs do
        Ringspun.spin do
          sleep 0.02
          other_finished = true
        end
        raise MyError, "from the block"
      end
    end
    assert_equal ["from the block", true, nil], [error.message, other_finished, Fiber.scheduler]
  end

  def test_standard_error_in_a_spun_fiber_is_reported_and_others_continue
    value = nil
    _, err = capture_io do
      value = run_rs do
        Ringspun.spin { raise MyError, "spun fiber failed" }
        sleep 0.01
        :still_running
      end
    end
    assert_equal :still_running, value
    assert_match(/MyError/, err)
    assert_match(/spun fiber failed/, err)
  end

  def test_system_exit_in_a_spun_fiber_ends_the_run
    error = assert_raises(SystemExit) do
      run_rs do
        Ringspun.spin { exit 7 }
        sleep 0.2
        :not_reached
      end
    end
    assert_equal [7, nil], [error.status, Fiber.scheduler]
  end

  def test_run_and_spin_argument_errors
    assert_raises(ArgumentError) { Ringspun.run(backend: backend) }
    error = assert_raises(RuntimeError) { Ringspun.spin { 1 } }
    assert_match(/Ringspun.run/, error.message)
    assert_raises(ArgumentError) { run_rs { Ringspun.spin } }
  end

  def test_nested_run_inside_a_run
    result = run_rs do
      outer = Fiber.scheduler
      ticks = 0
      Ringspun.spin do
        5.times do
          sleep 0.002
          ticks += 1
        end
      end
      inner = Ringspun.run(backend: backend) do
        sleep 0.05
        [Fiber.scheduler.equal?(outer), Fiber.scheduler.backend, Ringspun.run(backend: backend) { :innermost }]
      end
      nested_error = assert_raises(MyError) { Ringspun.run(backend: backend) { raise MyError, "inner" } }
      [inner, ticks, nested_error.message, Fiber.scheduler.equal?(outer)]
    end
    assert_equal [[false, backend, :innermost], 5, "inner", true], result
  end

  def test_scheduler_backend_and_features
    assert_equal backend, run_rs { scheduler.backend }
    s = Ringspun::Scheduler.new(backend: backend)
    begin
      assert_equal backend, s.backend
      features = s.features
      assert_kind_of Array, features
      if backend == :epoll
        assert_equal [], features
      else
        assert_empty [:splice, :tee] - features, "io_uring on Linux >= 5.8 has splice and tee"
      end
      assert_equal [0, 0, 0], [s.pending_operations, s.inflight_operations, s.fiber_count]
    ensure
      s.close
    end
    assert s.closed?
  end

  # ---- io_read / io_write ----------------------------------------------------------------------

  def test_pipe_read_write_of_more_than_a_mebibyte
    data = payload(1, 3 * MIB + 17)
    r, w = IO.pipe
    got = run_rs do
      Ringspun.spin do
        assert_equal data.bytesize, w.write(data)
        w.close
      end
      r.read
    end
    assert_equal [data.bytesize, sha(data)], [got.bytesize, sha(got)]
  ensure
    close_all(r, w)
  end

  def test_readpartial_returns_what_is_there
    data = payload(2, 2 * MIB + 3)
    r, w = IO.pipe
    chunks = run_rs do
      # Only part of the input exists yet: readpartial must not wait for more.
      w.write("0123456789")
      first = r.readpartial(65_536)
      Ringspun.spin do
        w.write(data)
        w.close
      end
      rest = []
      begin
        loop { rest << r.readpartial(65_536) }
      rescue EOFError
        nil
      end
      [first, rest]
    end
    first, rest = chunks
    assert_equal "0123456789", first
    assert rest.all? { |c| c.bytesize.between?(1, 65_536) }, "chunk sizes out of range"
    joined = rest.join
    assert_equal [data.bytesize, sha(data)], [joined.bytesize, sha(joined)]
  ensure
    close_all(r, w)
  end

  def test_gets_over_a_pipe_line_by_line
    lines = Array.new(40_000) { |i| "line #{i} #{'x' * (i % 61)}\n" }
    text = lines.join
    r, w = IO.pipe
    got = run_rs do
      Ringspun.spin do
        lines.each_slice(1000) { |slice| w.write(slice.join) }
        w.close
      end
      read = []
      while (line = r.gets)
        read << line
      end
      read
    end
    assert_operator text.bytesize, :>, MIB
    assert_equal [lines.size, sha(text)], [got.size, sha(got.join)]
  ensure
    close_all(r, w)
  end

  def test_read_with_length_and_multi_argument_write
    data = payload(3, MIB + 101)
    r, w = IO.pipe
    result = run_rs do
      Ringspun.spin do
        written = w.write(data.byteslice(0, 1000), data.byteslice(1000..))
        w.close
        raise "wrote #{written}" unless written == data.bytesize
      end
      pieces = []
      while (piece = r.read(100_003))
        pieces << piece.bytesize
      end
      [pieces, r.read(1)]
    end
    sizes = [100_003] * (data.bytesize / 100_003) + [data.bytesize % 100_003]
    assert_equal [sizes, nil], result
  ensure
    close_all(r, w)
  end

  def test_full_duplex_socket_pair_with_large_payloads
    data_a = payload(4, 2 * MIB + 5)
    data_b = payload(5, 3 * MIB + 7)
    a, b = UNIXSocket.pair
    result = run_rs do
      gather(4) do |i|
        case i
        when 0 then a.write(data_a).tap { a.close_write }
        when 1 then b.write(data_b).tap { b.close_write }
        when 2 then sha(a.read)
        when 3 then sha(b.read)
        end
      end
    end
    assert_equal [data_a.bytesize, data_b.bytesize, sha(data_b), sha(data_a)], result
  ensure
    close_all(a, b)
  end

  # The peer shutting down its sending side makes a socket report POLLRDHUP
  # (io_uring adds it to every poll); the socket is still writable, so a
  # write parked on it must go on, not fail with EAGAIN.
  def test_write_goes_on_after_the_peer_shuts_down_its_sending_side
    a, b = UNIXSocket.pair
    data = payload(8, 4 * MIB)
    result = run_rs do
      drained = Queue.new
      Ringspun.spin do
        sleep 0.02 # let the writer fill the socket buffer and park
        b.close_write
        drained << sha(b.read)
      end
      written = begin
        a.write(data)
      rescue SystemCallError => e
        e
      ensure
        a.close
      end
      [written, drained.pop]
    end
    assert_equal [data.bytesize, sha(data)], result
  ensure
    close_all(a, b)
  end

  def test_tcp_socket_large_payload_with_gets_and_readpartial
    lines = Array.new(30_000) { |i| "#{i}:#{'t' * (i % 97)}\n" }
    text = lines.join
    server = TCPServer.new("127.0.0.1", 0)
    result = run_rs do
      client = TCPSocket.new("127.0.0.1", server.local_address.ip_port)
      conn = server.accept
      gather(3) do |i|
        case i
        when 0
          client.write(text)
          client.close_write
          :sent
        when 1
          count = 0
          digest = Digest::SHA256.new
          while (line = conn.gets)
            count += 1
            digest << line
          end
          conn.write(digest.hexdigest)
          conn.close_write
          count
        when 2
          reply = +""
          begin
            loop { reply << client.readpartial(7) }
          rescue EOFError
            reply
          end
        end
      end
    ensure
      close_all(client, conn)
    end
    assert_operator text.bytesize, :>, MIB
    assert_equal [:sent, lines.size, sha(text)], result
  ensure
    server&.close
  end

  def test_regular_file_read_and_write_inside_a_fiber
    data = payload(6, MIB + 999)
    Dir.mktmpdir("ringspun-file") do |dir|
      path = File.join(dir, "data.bin")
      result = run_rs do
        File.binwrite(path, data)
        whole = File.binread(path)
        parts = File.open(path, "rb") do |f|
          head = f.read(100)
          pos = f.pos
          f.seek(-10, IO::SEEK_END)
          tail = f.read
          [head == data.byteslice(0, 100), pos, tail == data.byteslice(-10, 10), f.read(1)]
        end
        # Writes and reads go at the file position, as write(2)/read(2) do.
        small = File.join(dir, "small")
        positions = File.open(small, "wb") do |f|
          f.sync = true
          f.write("x" * 10)
          f.write("y" * 5)
          at_end = f.pos
          f.seek(2)
          f.write("Z")
          [at_end, f.pos]
        end
        File.open(small, "ab") { |f| f.write("tail") }
        reread = File.open(small, "rb") do |f|
          f.seek(3)
          [f.read(2), f.pos, f.readpartial(100), f.pos]
        end
        [sha(whole), whole.bytesize, parts, positions, File.binread(small), reread]
      end
      assert_equal [sha(data), data.bytesize, [true, 100, true, nil], [15, 3], "xxZxxxxxxxyyyyytail",
                    ["xx", 5, "xxxxxyyyyytail", 19]], result
    end
  end

  # A regular file whose pages are not in the page cache: RWF_NOWAIT says
  # EAGAIN while poll(2) says ready. Every read must still return data (no
  # endless wait-and-retry), in readpartial-sized pieces and whole.
  def test_regular_file_reads_with_a_cold_page_cache
    data = payload(7, 4 * MIB + 3)
    Dir.mktmpdir("ringspun-cold") do |dir|
      path = File.join(dir, "cold.bin")
      File.binwrite(path, data)
      result = run_rs(limit: 20) do
        pieces = File.open(path, "rb") do |f|
          f.fdatasync
          f.advise(:dontneed)
          out = String.new(encoding: Encoding::BINARY)
          loop { out << f.readpartial(65_536) }
        rescue EOFError
          out
        end
        whole = File.open(path, "rb") do |f|
          f.advise(:dontneed)
          f.read
        end
        [sha(pieces), sha(whole)]
      end
      assert_equal [sha(data), sha(data)], result
    end
  end

  # Ruby 3.1 sends read_nonblock through the io_read hook (length 0) and
  # expects -EAGAIN back when nothing is there; readpartial and friends then
  # call io_wait themselves.
  def test_read_nonblock_on_an_empty_pipe_does_not_wait
    r, w = IO.pipe
    result = run_rs(limit: 1.5) do
      quiet = r.read_nonblock(5, exception: false)
      raised = begin
        r.read_nonblock(5)
      rescue IO::WaitReadable => e
        e.class
      end
      w.write("abc")
      [quiet, raised, r.read_nonblock(5)]
    end
    assert_equal [:wait_readable, IO::EAGAINWaitReadable, "abc"], result
  ensure
    close_all(r, w)
  end

  def test_wait_readable_with_a_timeout
    r, w = IO.pipe
    result = run_rs do
      timed_out = nil
      took = elapsed { timed_out = r.wait_readable(0.05) }
      Ringspun.spin do
        sleep 0.02
        w.write("!")
      end
      ready = nil
      waited = elapsed { ready = r.wait_readable(5) }
      [timed_out, took, ready.equal?(r), waited < 2, r.read(1), w.wait_writable(1).equal?(w),
       scheduler.pending_operations]
    end
    assert_nil result[0]
    assert_between 0.045, 0.5, result[1], "wait_readable(0.05)"
    assert_equal [true, true, "!", true, 0], result[2..]
  ensure
    close_all(r, w)
  end

  # ---- error paths by errno (STYLE.md 14) --------------------------------------------------------

  def test_write_to_a_pipe_without_reader_raises_epipe
    r, w = IO.pipe
    r.close
    assert_raises(Errno::EPIPE) { run_rs { w.write("x" * 100) } }
  ensure
    close_all(r, w)
  end

  def test_read_from_a_closed_descriptor_raises_ebadf
    r, w = IO.pipe
    # A second IO on a descriptor that is then closed under it. The number is
    # far above the lowest free one, so the scheduler's own descriptors
    # (opened afterwards) cannot take it.
    high = r.fcntl(Fcntl::F_DUPFD, 900)
    stale = IO.for_fd(high, autoclose: false)
    IO.for_fd(high, autoclose: true).close
    assert_raises(Errno::EBADF) { run_rs { stale.readpartial(10) } }
  ensure
    close_all(r, w)
  end

  def test_read_from_a_directory_raises_eisdir
    File.open(__dir__) do |dir|
      assert_raises(Errno::EISDIR) { run_rs { dir.read } }
    end
  end

  def test_read_from_a_reset_connection_raises_econnreset
    server = TCPServer.new("127.0.0.1", 0)
    result = run_rs do
      client = TCPSocket.new("127.0.0.1", server.local_address.ip_port)
      conn = server.accept
      conn.write("unread") # unread data makes close send a reset
      client.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii"))
      client.close
      assert_raises(Errno::ECONNRESET, Errno::EPIPE) do
        loop { conn.readpartial(100) }
      end.class
    ensure
      close_all(client, conn)
    end
    assert_equal Errno::ECONNRESET, result
  ensure
    server&.close
  end

  def test_connect_to_a_closed_port_raises_econnrefused
    server = TCPServer.new("127.0.0.1", 0)
    port = server.local_address.ip_port
    server.close
    result = run_rs do
      via_tcpsocket = begin
        TCPSocket.new("127.0.0.1", port)
      rescue SystemCallError => e
        e.class
      end
      sock = Socket.new(:INET, :STREAM)
      via_wait = begin
        sock.connect_nonblock(Socket.sockaddr_in(port, "127.0.0.1"))
      rescue IO::WaitWritable
        sock.wait_writable(5)
        begin
          sock.connect_nonblock(Socket.sockaddr_in(port, "127.0.0.1"))
        rescue SystemCallError => e
          e.class
        end
      ensure
        sock.close
      end
      [via_tcpsocket, via_wait]
    end
    assert_equal [Errno::ECONNREFUSED, Errno::ECONNREFUSED], result
  end

  # ---- GC pressure ------------------------------------------------------------------------------

  def test_io_under_gc_stress_and_compaction
    data = payload(7, 32 * 1024)
    r, w = IO.pipe
    a, b = UNIXSocket.pair
    result = run_rs do
      GC.stress = true
      readers = gather(2) do |i|
        src = i.zero? ? r : a
        sink = i.zero? ? w : b
        Ringspun.spin do
          GC.compact if i.zero?
          sink.write(data)
          sink.close
        end
        src.read
      end
    ensure
      GC.stress = false
    end
    assert_equal [sha(data), sha(data)], result.map { |got| sha(got) }
  ensure
    GC.stress = false
    close_all(r, w, a, b)
  end

  def test_parked_readers_survive_gc_compact
    pairs = Array.new(20) { IO.pipe }
    result = run_rs do
      got = Queue.new
      pairs.each_with_index do |(r, _), i|
        Ringspun.spin { got << [i, r.read(5)] }
      end
      GC.verify_compaction_references(double_heap: true, toward: :empty)
      pairs.each_with_index { |(_, w), i| w.write(format("%05d", i)) }
      Array.new(pairs.size) { got.pop }.sort
    end
    assert_equal Array.new(pairs.size) { |i| [i, format("%05d", i)] }, result
  ensure
    close_all(pairs)
  end
end

RingspunTest::Modes.define("TestScheduler", SchedulerContract)

# Backend choice: not tied to one backend.
class TestSchedulerChoice < RingspunTest::Case
  def test_scheduler_rejects_unknown_backends
    assert_raises(ArgumentError) { Ringspun::Scheduler.new(backend: :bogus) }
    assert_raises(TypeError) { Ringspun::Scheduler.new(backend: "epoll") }
    assert_raises(ArgumentError) { Ringspun::Scheduler.new(backnd: :epoll) }
    assert_raises(ArgumentError) { Ringspun.run(backend: :bogus) { 1 } }
    assert_nil Fiber.scheduler
  end

  def test_auto_prefers_io_uring_where_it_can_be_set_up
    expected = RingspunTest.io_uring_unavailable ? :epoll : :io_uring
    with_env("RINGSPUN_BACKEND" => nil) do
      assert_equal [expected, expected], [Ringspun.run { scheduler.backend }, Ringspun.run(backend: :auto) { scheduler.backend }]
    end
  end

  def test_ringspun_backend_environment_is_honoured_in_process
    with_env("RINGSPUN_BACKEND" => "epoll") do
      assert_equal :epoll, Ringspun.run { scheduler.backend }
      assert_equal :epoll, Ringspun.run(backend: :auto) { scheduler.backend }
      skip RingspunTest.io_uring_unavailable if RingspunTest.io_uring_unavailable
      # An explicit backend wins over the environment.
      assert_equal :io_uring, Ringspun.run(backend: :io_uring) { scheduler.backend }
    end
    with_env("RINGSPUN_BACKEND" => "bogus") do
      error = assert_raises(ArgumentError) { Ringspun.run { 1 } }
      assert_match(/RINGSPUN_BACKEND/, error.message)
    end
  end

  def test_ringspun_backend_environment_in_a_subprocess
    code = 'print Ringspun.run { Fiber.scheduler.backend }, " ", Ringspun.run { r, w = IO.pipe; w << "ok"; w.close; r.read }'
    out, err, status = ruby_subprocess(code, env: { "RINGSPUN_BACKEND" => "epoll" })
    assert_equal ["epoll ok", "", true], [out, err, status.success?]
    unless RingspunTest.io_uring_unavailable
      out, err, status = ruby_subprocess(code, env: { "RINGSPUN_BACKEND" => "io_uring" })
      assert_equal ["io_uring ok", "", true], [out, err, status.success?]
    end
    out, err, status = ruby_subprocess(code, env: { "RINGSPUN_BACKEND" => "nonsense" })
    assert_equal ["", 1], [out, status.exitstatus]
    assert_match(/ArgumentError/, err)
    assert_match(/RINGSPUN_BACKEND/, err)
  end

  private

  def with_env(pairs)
    saved = pairs.keys.to_h { |k| [k, ENV[k]] }
    pairs.each { |k, v| ENV[k] = v }
    yield
  ensure
    saved.each { |k, v| ENV[k] = v }
  end
end
