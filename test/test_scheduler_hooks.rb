# frozen_string_literal: true

require_relative "test_helper"
require "io/nonblock"
require "zlib"

# The scheduler's hooks as each Ruby calls them (issue 14), on both backends:
# the hooks of 3.2+ (io_read/io_write with an offset), 3.3+ (io_pread,
# io_pwrite, io_select), 3.4 (blocking_operation_wait) where the running Ruby
# calls them, Ruby 4.0's (fiber_interrupt, io_close, yield) called directly,
# and the scheduler bugs Ruby's own test/fiber found: a blocking fd on epoll,
# a wake-up before the wait, a hook's error, a stranded fiber, a scheduler
# installed on another thread, run from another fiber.
module SchedulerHooksContract
  include RingspunTest

  # A Ruby that hands io_read an offset passes 4 arguments.
  OFFSET_ARGS = Ringspun::Scheduler.instance_method(:io_read).arity == 4

  def close_all(*ios)
    ios.flatten.compact.each { |io| io.close unless io.closed? }
  end

  def fiber_tick(stop)
    ticks = 0
    until stop[0]
      sleep 0.001
      ticks += 1
    end
    ticks
  end

  # A fiber's outcome: #value waits for it and re-raises its exception.
  Job = Struct.new(:fiber, :result, :error) do
    def value
      sleep 0.001 while fiber.alive?
      raise error if error

      result
    end
  end

  def go(&block)
    job = Job.new
    job.fiber = Fiber.schedule do
      job.result = block.call
    rescue Exception => e # rubocop:disable Lint/RescueException -- re-raised by #value
      job.error = e
    end
    job
  end

  # Runs the block while another fiber ticks every millisecond; returns
  # [block value, ticks seen meanwhile].
  def with_ticker
    stop = [false]
    ticker = go { fiber_tick(stop) }
    value = yield
    stop[0] = true
    [value, ticker.value]
  end

  # ---- Ruby 3.2+: io_read / io_write with an offset ----------------------------------

  def test_io_read_and_io_write_hooks_with_length_and_offset
    run_rs do
      r, w = IO.pipe
      buf = IO::Buffer.new(16)
      out = IO::Buffer.for(+"..hello")
      args = OFFSET_ARGS ? [5, 2] : [7]
      written = scheduler.io_write(w, out, *args)
      assert_equal OFFSET_ARGS ? 5 : 7, written
      got = scheduler.io_read(r, buf, 5, *(OFFSET_ARGS ? [3] : []))
      assert_equal OFFSET_ARGS ? 5 : 7, got, "what is there, at least the length asked"
      assert_equal "hello", buf.get_string(OFFSET_ARGS ? 3 : 0, 5) if OFFSET_ARGS
      # Length 0: one attempt; an empty pipe says EAGAIN instead of waiting.
      assert_equal(-Errno::EAGAIN::Errno, scheduler.io_read(r, buf, 0, *(OFFSET_ARGS ? [0] : [])))
      assert_no_pending_operations
    ensure
      close_all(r, w)
    end
  end

  def test_io_read_hook_waits_for_the_minimum_length
    run_rs do
      r, w = IO.pipe
      Fiber.schedule do
        3.times do |i|
          sleep 0.002
          w.write("ab#{i}")
        end
      end
      buf = IO::Buffer.new(64)
      got = scheduler.io_read(r, buf, 9, *(OFFSET_ARGS ? [0] : []))
      assert_operator got, :>=, 9
      assert_equal "ab0ab1ab2", buf.get_string(0, 9)
    ensure
      close_all(r, w)
    end
  end

  def test_io_read_hook_offset_past_the_buffer_raises
    skip "this Ruby passes io_read no offset" unless OFFSET_ARGS
    run_rs do
      r, w = IO.pipe
      assert_raises(ArgumentError) { scheduler.io_read(r, IO::Buffer.new(4), 1, 5) }
    ensure
      close_all(r, w)
    end
  end

  # ---- Ruby 3.3+: io_pread / io_pwrite / io_select ------------------------------------

  def test_pread_and_pwrite_inside_a_fiber
    path = File.join(Dir.tmpdir, "ringspun-pread-#{Process.pid}-#{backend}")
    File.binwrite(path, "0123456789" * 1000)
    run_rs do
      File.open(path, "r+b") do |f|
        assert_equal "3456", f.pread(4, 3)
        assert_equal 3, f.pwrite("ABC", 9998)
        assert_equal "567ABC", f.pread(10, 9995)
        assert_equal 0, f.pos, "pread/pwrite leave the file position alone"
      end
      assert_no_pending_operations
    end
    assert_equal "567ABC", File.binread(path)[-6..]
  ensure
    File.delete(path) if path && File.exist?(path)
  end

  def test_pread_on_a_pipe_raises_espipe
    run_rs do
      r, w = IO.pipe
      assert_raises(Errno::ESPIPE) { r.pread(1, 0) }
    ensure
      close_all(r, w)
    end
  end

  def test_io_select_inside_a_fiber_does_not_block_the_loop
    skip "this Ruby has no io_select hook" unless Ringspun::Scheduler.method_defined?(:io_select)
    run_rs do
      a, b = UNIXSocket.pair
      r, w = IO.pipe
      result, ticks = with_ticker do
        Fiber.schedule do
          sleep 0.03
          b.write("x")
        end
        IO.select([r, a], nil, nil, 5)
      end
      assert_equal [[a], [], []], result
      assert_operator ticks, :>=, 5, "the other fiber ran while IO.select waited"
      assert_equal "x", a.read_nonblock(10)
      assert_nil IO.select([r], nil, nil, 0.01), "a timeout gives nil"
      assert_equal [[], [w], []], IO.select([r], [w], nil, 1)
      # Bytes Ruby already buffered make a reader ready at once.
      b.write("line\nrest")
      assert_equal "line\n", a.gets
      assert_equal [[a], [], []], IO.select([a], nil, nil, 0)
      assert_no_pending_operations
    ensure
      close_all(a, b, r, w)
    end
  end

  def test_io_select_timeout_while_others_run_and_interrupted_by_timeout
    skip "this Ruby has no io_select hook" unless Ringspun::Scheduler.method_defined?(:io_select)
    run_rs do
      r, w = IO.pipe
      took = elapsed { assert_nil IO.select([r], nil, nil, 0.05) }
      assert_operator took, :>=, 0.04
      assert_raises(Timeout::Error) { Timeout.timeout(0.02) { IO.select([r]) } }
      assert_no_pending_operations
    ensure
      close_all(r, w)
    end
  end

  # ---- Ruby 3.4: blocking_operation_wait --------------------------------------------

  def test_blocking_operation_wait_runs_zlib_off_the_loop
    skip "this Ruby never calls blocking_operation_wait" unless Ringspun::Scheduler::BLOCKING_OPERATION_WAIT
    data = Random.new(1).bytes(256 * 1024) * 16 # 4 MiB, compressible
    run_rs do
      calls = 0
      scheduler.singleton_class.prepend(Module.new do
        define_method(:blocking_operation_wait) do |work|
          calls += 1
          super(work)
        end
      end)
      deflated, ticks = with_ticker { Zlib::Deflate.deflate(data, 9) }
      assert_equal data, Zlib::Inflate.inflate(deflated)
      assert_operator calls, :>=, 1, "Zlib handed its work to the scheduler"
      assert_operator ticks, :>=, 1, "the loop served another fiber while zlib ran"
    end
  end

  def test_blocking_operation_wait_with_no_other_fiber_runs_inline
    skip "this Ruby never calls blocking_operation_wait" unless Ringspun::Scheduler::BLOCKING_OPERATION_WAIT
    run_rs do
      threads = Thread.list.size
      assert_equal "x" * 100_000, Zlib::Inflate.inflate(Zlib::Deflate.deflate("x" * 100_000))
      assert_equal threads, Thread.list.size
    end
  end

  # ---- Ruby 4.0, called directly ------------------------------------------------------

  def test_fiber_interrupt_wakes_a_fiber_parked_on_a_read
    run_rs do
      r, w = IO.pipe
      reader = go do
        r.read(10)
        :read
      rescue IOError => e
        e.message
      end
      sleep 0.01
      scheduler.fiber_interrupt(reader.fiber, IOError.new("stream closed in another thread"))
      assert_equal "stream closed in another thread", reader.value
      w.write("abc")
      assert_equal "abc", r.read_nonblock(10), "the interrupted read took no byte"
      assert_no_pending_operations
    ensure
      close_all(r, w)
    end
  end

  def test_fiber_interrupt_from_another_thread
    run_rs do
      a, b = UNIXSocket.pair
      got = nil
      reader = Fiber.schedule do
        a.readpartial(10)
      rescue IOError => e
        got = e
      end
      s = scheduler
      Thread.new do
        sleep 0.02
        s.fiber_interrupt(reader, IOError.new("closed"))
      end.join
      sleep 0.001 while reader.alive?
      assert_instance_of IOError, got
      assert_no_pending_operations
    ensure
      close_all(a, b)
    end
  end

  def test_fiber_interrupt_argument_checks_and_dead_fibers
    run_rs do
      done = Fiber.schedule { :ok }
      assert_nil scheduler.fiber_interrupt(done, IOError.new("x"))
      assert_raises(TypeError) { scheduler.fiber_interrupt(Fiber.current, "not an exception") }
      assert_raises(IOError) { scheduler.fiber_interrupt(Fiber.current, IOError.new("myself")) }
    end
  end

  def test_io_close_cancels_what_is_in_flight_and_closes_the_fd
    run_rs do
      r, w = IO.pipe
      fd = r.fileno
      raw = IO.for_fd(fd, autoclose: false)
      result = nil
      reader = Fiber.schedule do
        result = begin
          raw.wait_readable ? :woke : :none
        rescue SystemCallError, IOError => e
          e.class
        end
      end
      sleep 0.01
      assert_equal true, scheduler.io_close(fd)
      sleep 0.001 while reader.alive?
      assert_raises(Errno::EBADF) { IO.for_fd(fd, autoclose: false).stat }
      refute_nil result
      assert_no_pending_operations
    ensure
      raw&.autoclose = false
      w&.close
      begin
        r&.close
      rescue Errno::EBADF, IOError
        nil
      end
    end
  end

  def test_io_close_takes_a_descriptor
    run_rs do
      assert_raises(TypeError) { scheduler.io_close($stdin) }
    end
  end

  def test_yield_lets_the_runnable_fibers_go_first
    run_rs do
      order = []
      Fiber.schedule do
        order << :a1
        scheduler.yield
        order << :a2
      end
      Fiber.schedule { order << :b }
      sleep 0.005
      assert_equal %i[a1 b a2], order
      assert_nil scheduler.yield, "from the run's main fiber nothing to give way to"
    end
  end

  # ---- found by Ruby's test/fiber ------------------------------------------------------

  # On epoll the hooks once read(2) a blocking fd with the GVL held: the
  # whole process stopped, its other threads too.
  def test_a_blocking_socket_does_not_stop_the_process
    ticks = 0
    bystander = Thread.new do
      loop do
        sleep 0.001
        ticks += 1
      end
    end
    took = elapsed do
      run_rs(limit: 10) do
        a, b = UNIXSocket.pair
        [a, b].each { |s| s.nonblock = false }
        assert_equal [false, false], [a.nonblock?, b.nonblock?], "both ends blocking fds"
        reader = go { a.read(5) }
        Fiber.schedule do
          sleep 0.05
          b.write("hello")
        end
        assert_equal "hello", reader.value
      ensure
        close_all(a, b)
      end
    end
    bystander.kill.join
    assert_operator took, :<, 2
    assert_operator ticks, :>=, 10, "the bystander thread ran while a fiber waited"
  end

  def test_a_wake_up_before_the_wait_is_not_lost
    run_rs do
      me = nil
      f = Fiber.schedule do
        me = Fiber.current
        Fiber.scheduler.block(:test, nil) # unblocked already: returns at once
      end
      # The fiber has run; unblock it now that it is parked...
      sleep 0.001
      scheduler.unblock(:test, f)
      sleep 0.001
      refute f.alive?
      # ...and unblock one that has not reached block yet.
      g = nil
      result = nil
      g = Fiber.schedule do
        scheduler.unblock(:test, Fiber.current)
        result = scheduler.block(:test, 5)
      end
      sleep 0.001
      assert_equal true, result
      refute g.alive?
      assert_no_pending_operations
    end
  end

  def test_no_wake_up_is_lost_between_threads_and_fibers
    n = 2000
    run_rs(limit: 60) do
      q = Queue.new
      back = Queue.new
      producer = Thread.new { n.times { |i| q << i; back.pop } }
      consumer = go { Array.new(n) { q.pop.tap { back << 1 } } }
      assert_equal (0...n).to_a, consumer.value
      producer.join

      mutex = Mutex.new
      cv = ConditionVariable.new
      count = 0
      signaller = Thread.new do
        n.times do
          mutex.synchronize do
            count += 1
            cv.signal
          end
          Thread.pass
        end
      end
      waiter = go do
        seen = 0
        mutex.synchronize do
          while seen < n
            cv.wait(mutex, 1) while count == seen
            seen = count
          end
        end
        seen
      end
      assert_equal n, waiter.value
      signaller.join

      shared = 0
      threads = 2.times.map { Thread.new { 500.times { mutex.synchronize { shared += 1 } } } }
      fibers = Array.new(4) { go { 500.times { mutex.synchronize { shared += 1 } } } }
      threads.each(&:join)
      fibers.each(&:value)
      assert_equal 3000, shared
    end
  end

  def test_the_wake_up_race_ruby_widens_with_a_sleep_before_block
    mutex = Thread::Mutex.new
    condition = Thread::ConditionVariable.new
    signaller = Thread.new do
      loop do
        mutex.synchronize { condition.signal }
        sleep 0.0001
      end
    end
    woken = 0
    run_rs(limit: 30) do
      slow = scheduler
      slow.singleton_class.prepend(Module.new do
        define_method(:kernel_sleep) do |duration = nil|
          Fiber.new(blocking: true) { sleep 0.0001 }.resume
          super(duration)
        end
      end)
      Fiber.schedule do
        10.times do
          mutex.synchronize do
            condition.wait(mutex)
            sleep 0.0001
            woken += 1
          end
        end
      end
    end
    assert_equal 10, woken
  ensure
    signaller&.kill&.join
  end

  def test_an_error_raised_by_an_overridden_hook_reaches_the_thread
    thread = Thread.new do
      Thread.current.report_on_exception = false
      Ringspun.run(backend: backend) do
        def (Fiber.scheduler).kernel_sleep(_duration = nil)
          raise "Broken sleep!"
        end
        Fiber.schedule { sleep 0 }
      end
    end
    error = assert_raises(RuntimeError) { thread.join }
    assert_equal "Broken sleep!", error.message
  end

  def test_an_error_of_a_fibers_own_code_is_still_reported
    _, err = capture_io do
      run_rs do
        Fiber.schedule { raise ArgumentError, "the fiber's own" }
        :survived
      end
    end
    assert_match(/the fiber's own/, err)
  end

  def test_close_ends_when_a_fiber_left_the_scheduler
    out, err = capture_io do
      thread = Thread.new do
        s = Ringspun::Scheduler.new(backend: backend)
        Fiber.set_scheduler(s)
        root = Fiber.current
        Fiber.schedule { root.transfer } # leaves the scheduler's hands for good
        :closed
      end
      assert_equal :closed, Timeout.timeout(10) { thread.value }
    end
    assert_empty out
    assert_match(/1 fiber\(s\) left the scheduler/, err)
  end

  def test_a_scheduler_made_on_one_thread_serves_another
    s = Ringspun::Scheduler.new(backend: backend)
    ran = false
    cpu = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
    thread = Thread.new do
      Fiber.set_scheduler(s)
      Fiber.schedule do
        sleep 0.01
        ran = true
      end
    end
    Timeout.timeout(10) { thread.join }
    assert ran
    assert s.closed?
    used = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) - cpu
    assert_operator used, :<, 0.5, "no spinning"
  end

  def test_run_and_close_from_another_blocking_fiber
    s = Ringspun::Scheduler.new(backend: backend)
    thread = Thread.new do
      Fiber.set_scheduler(s)
      log = []
      Fiber.schedule do
        sleep 0.01
        log << :slept
      end
      Fiber.new(blocking: true) { s.run }.resume
      log << :ran
      Fiber.new(blocking: true) { Fiber.set_scheduler(nil) }.resume
      log
    end
    assert_equal %i[slept ran], Timeout.timeout(10) { thread.value }
    assert s.closed?
  end

  def test_run_is_refused_from_a_scheduled_fiber
    run_rs do
      error = assert_raises(RuntimeError) { scheduler.run }
      assert_match(/blocking fiber/, error.message)
    end
  end
end

RingspunTest::Modes.define("TestSchedulerHooks", SchedulerHooksContract)
