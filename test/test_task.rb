# frozen_string_literal: true

require_relative "test_helper"
require_relative "support/primitive_modes"
require_relative "support/splice_zstream_support"
require "stringio"

# Tasks (issue 19): Ringspun.spin returns a Ringspun::Task with #value,
# #join, #stop and #raise; Ringspun.timeout and Ringspun.move_on_after are
# deadlines on the scheduler's timer. TaskContract runs inside Ringspun.run
# on io_uring and on epoll, and under Async's scheduler; what only
# Ringspun.run has (tasks: :stop) and what needs no scheduler follow it.
module TaskContract
  include RingspunTest::SpliceZstreamSupport

  # ---- value, join, wait ------------------------------------------------------------------

  def test_value_returns_the_block_value
    in_mode do
      tasks = [Ringspun.spin { 42 }, Ringspun.spin { sleep 0.01; [:later] }, Ringspun.spin { nil }]
      assert_equal [Ringspun::Task] * 3, tasks.map(&:class)
      assert_equal [42, [:later], nil], tasks.map(&:value)
      assert_equal [42, [:later], nil], tasks.map(&:join)
      assert_equal [42, [:later], nil], tasks.map(&:wait)
      assert_equal [false] * 3, tasks.map(&:alive?)
      assert_equal [Fiber] * 3, tasks.map { |t| t.fiber.class }
    end
  end

  def test_value_reraises_the_exception_that_ended_the_task
    in_mode do
      raised = RingspunTest::MyError.new("failed in the task")
      task = Ringspun.spin do
        sleep 0.005
        raise raised
      end
      error = assert_raises(RingspunTest::MyError) { task.value }
      assert_same raised, error
      # Again, and through join: the same exception each time.
      assert_same raised, assert_raises(RingspunTest::MyError) { task.join }
      refute task.alive?
    end
  end

  def test_join_with_a_timeout_returns_nil_when_the_time_runs_out
    in_mode do
      r, w = IO.pipe
      task = Ringspun.spin { r.read(3) }
      took = elapsed { assert_nil task.join(0.02) }
      assert_operator took, :>=, 0.015
      assert task.alive?
      w.write("abc")
      assert_equal "abc", task.join(5)
      assert_equal "abc", task.value
    ensure
      close_all(r, w)
    end
  end

  def test_a_task_cannot_wait_for_itself
    in_mode do
      other = Ringspun.spin { sleep 0.001; :other }
      outer = Ringspun.spin { [other.value, Ringspun.spin { :inner }.value] } # others: fine
      assert_equal %i[other inner], outer.value
      selfish = nil
      selfish = Ringspun.spin do
        sleep 0.001
        selfish.value
      end
      assert_raises(FiberError) { selfish.value }
    end
  end

  def test_tasks_wait_for_each_other
    in_mode do
      q = Queue.new
      producer = Ringspun.spin do
        3.times { |i| q << i }
        :produced
      end
      consumer = Ringspun.spin { [producer.value, Array.new(3) { q.pop }] }
      assert_equal [:produced, [0, 1, 2]], consumer.value
    end
  end

  def test_waiting_from_another_thread
    in_mode do
      r, w = IO.pipe
      task = Ringspun.spin { r.read(5) }
      # A plain thread blocks on the task; another thread with a run of its
      # own waits through that run's scheduler.
      plain = Thread.new { task.value }
      other_run = Thread.new { Ringspun.run(backend: :epoll) { [task.join(10), Fiber.scheduler.class] } }
      sleep 0.02
      w.write("hello")
      assert_equal "hello", task.value
      assert_equal "hello", plain.value
      assert_equal ["hello", Ringspun::Scheduler], other_run.value
    ensure
      close_all(r, w)
    end
  end

  def test_ten_thousand_tasks_spun_and_joined
    in_mode do
      tasks = Array.new(10_000) do |i|
        Ringspun.spin do
          sleep 0.001 if (i % 10).zero?
          i * 2
        end
      end
      assert_equal 10_000 * 9_999, tasks.sum(&:value)
      assert tasks.none?(&:alive?)
      assert_no_pending_operations
    end
  end

  # ---- stop and raise ---------------------------------------------------------------------

  def test_stop_a_task_parked_on_a_read
    r, w = IO.pipe
    in_mode do
      log = []
      task = Ringspun.spin do
        r.read(1)
        log << :read_returned
      ensure
        log << :ensure
      end
      sleep 0.005
      assert_same task, task.stop
      assert_nil task.value
      assert_equal [:ensure], log
      refute task.alive?
      # The cancelled read is gone: it does not swallow the next byte.
      w.write("q")
      assert_equal "q", r.read(1)
      assert_no_pending_operations
    end
  ensure
    close_all(r, w)
  end

  def test_stop_a_task_parked_on_a_sleep
    in_mode do
      ensured = false
      task = Ringspun.spin do
        sleep 30
      ensure
        ensured = true
      end
      took = elapsed do
        task.stop
        assert_nil task.value
      end
      assert ensured
      assert_operator took, :<, 5
      sleep 0.01 # the cancelled timer's completion
      assert_no_pending_operations
    end
  end

  # Sockets for a copy from src to a, drained from b by another task; the
  # test writes into src_in and leaves it open, so the copy waits for more.
  def with_copy_sockets
    in_mode do
      src_in, src = unix_pair
      a, b = unix_pair
      reader = go { drain(b) }
      yield src_in, src, a, reader
    ensure
      close_all(src_in, src, a, b)
    end
  end

  def test_stop_a_task_mid_double_splice
    data = random_bytes(191, 300 * KIB)
    with_copy_sockets do |src_in, src, a, reader|
      moved = nil
      task = Ringspun.spin do
        moved = IO.double_splice(src, a)
      ensure
        a.close_write
      end
      src_in.write(data) # then the source stays open: the copy waits for more
      sleep 0.02
      task.stop
      assert_nil task.value
      assert_nil moved
      # Every byte written before the stop went through, no more, no fewer.
      assert_equal [data.bytesize, sha256(data)], reader.value
      assert_no_pending_operations
    end
  end

  def test_stop_a_task_gzipping_into_a_full_pipe
    data = random_bytes(192, 1024 * KIB) # incompressible: more than a pipe holds
    in_mode do
      pipe_r, pipe_w = IO.pipe
      src = StringIO.new(data)
      task = Ringspun.spin do
        IO.gzip(src, pipe_w)
      ensure
        pipe_w.close
      end
      sleep 0.05 # gzip fills the pipe, which nobody reads, and parks
      assert task.alive?
      task.stop
      assert_nil task.value
      assert pipe_w.closed?
      got = pipe_r.read
      assert_operator got.bytesize, :>, 0
      assert_operator got.bytesize, :<, data.bytesize
      assert_no_pending_operations
    ensure
      close_all(pipe_r, pipe_w)
    end
  end

  def test_stop_is_once_and_stopping_an_ended_task_does_nothing
    in_mode do
      ensures = 0
      task = Ringspun.spin do
        sleep 30
      ensure
        ensures += 1
        sleep 0.005 # a second Stopped here would cut the cleanup short
        ensures += 10
      end
      sleep 0.001
      task.stop
      task.stop
      assert_nil task.value
      assert_equal 11, ensures
      done = Ringspun.spin { :done }
      assert_same done, done.stop
      assert_equal :done, done.value
    end
  end

  def test_a_task_that_rescues_stopped_gives_its_own_value
    in_mode do
      task = Ringspun.spin do
        sleep 30
      rescue Ringspun::Stopped => e
        [:cleaned_up, e.class]
      end
      sleep 0.001
      task.stop
      assert_equal [:cleaned_up, Ringspun::Stopped], task.value
    end
  end

  def test_a_task_stops_itself
    in_mode do
      log = []
      me = nil
      me = Ringspun.spin do
        sleep 0.001
        me.stop
        log << :not_reached
      ensure
        log << :ensure
      end
      assert_nil me.value
      assert_equal [:ensure], log
    end
  end

  def test_raise_in_a_task_where_it_waits
    r, w = IO.pipe
    in_mode do
      task = Ringspun.spin do
        r.read(1)
      rescue RingspunTest::MyError => e
        [:rescued, e.message]
      end
      sleep 0.005
      assert_same task, task.raise(RingspunTest::MyError, "wake up")
      assert_equal [:rescued, "wake up"], task.value
      plain = Ringspun.spin { sleep 30 }
      waiter = Ringspun.spin { plain.value rescue $! } # somebody waits: no report
      sleep 0.001
      plain.raise("as Kernel#raise")
      error = waiter.value
      assert_equal [RuntimeError, "as Kernel#raise"], [error.class, error.message]
      assert_same error, assert_raises(RuntimeError) { plain.value }
      w.write("z")
      assert_equal "z", r.read(1)
      assert_no_pending_operations
    end
  ensure
    close_all(r, w)
  end

  def test_stop_and_raise_a_task_that_waits_for_another
    in_mode do
      long = Ringspun.spin { sleep 0.1; :long }
      waiter = Ringspun.spin { long.value }
      timed = Ringspun.spin do
        long.join(5)
      rescue RingspunTest::MyError => e
        [:raised, e.message]
      end
      sleep 0.005
      waiter.stop
      timed.raise(RingspunTest::MyError, "in join")
      assert_nil waiter.value
      assert_equal [:raised, "in join"], timed.value
      assert long.alive?
      assert_equal :long, long.value
      assert_equal [:long, :long], [Ringspun.spin { long.value }.value, long.join(0)]
    end
  end

  # ---- deadlines ----------------------------------------------------------------------------

  def test_timeout_returns_the_block_value_or_raises_timeout_error
    in_mode do
      threads = Thread.list.size
      assert_equal [:fast, 1, threads], Ringspun.timeout(1) { |s| [:fast, s, Thread.list.size] } # no helper thread
      took = elapsed do
        error = assert_raises(Timeout::Error) { Ringspun.timeout(0.02) { sleep 30 } }
        assert_equal "execution expired", error.message
      end
      assert_operator took, :<, 5
      assert_raises(RingspunTest::MyError) { Ringspun.timeout(0.01, RingspunTest::MyError, "late") { sleep 30 } }
      assert_equal :no_deadline, Ringspun.timeout(nil) { :no_deadline }
      assert_equal :no_deadline, Ringspun.timeout(0) { :no_deadline }
      assert_raises(ArgumentError) { Ringspun.timeout(-1) { :never } }
      sleep 0.01
      assert_no_pending_operations
    end
  end

  def test_move_on_after_returns_nil_and_nests
    in_mode do
      assert_nil Ringspun.move_on_after(0.01) { sleep 30 }
      assert_equal :in_time, Ringspun.move_on_after(1) { :in_time }
      # The inner deadline ends only the inner block; the outer goes on.
      outer = Ringspun.move_on_after(2) do
        [Ringspun.move_on_after(0.01) { sleep 30 }, :outer_went_on]
      end
      assert_equal [nil, :outer_went_on], outer
      # The outer deadline passes through the inner block.
      assert_nil(Ringspun.move_on_after(0.01) { Ringspun.move_on_after(30) { sleep 30 } })
      # A bare rescue in the block does not take the deadline for its own error.
      assert_nil(Ringspun.move_on_after(0.01) do
        sleep 30
      rescue StandardError
        :swallowed
      end)
      sleep 0.01
      assert_no_pending_operations
    end
  end

  def test_deadline_mid_double_splice
    data = random_bytes(193, 200 * KIB)
    with_copy_sockets do |src_in, src, a, reader|
      src_in.write(data) # and then nothing: the copy waits for more
      took = elapsed do
        assert_raises(Timeout::Error) { Ringspun.timeout(0.05) { IO.double_splice(src, a) } }
      end
      assert_operator took, :<, 5
      assert_nil Ringspun.move_on_after(0.02) { IO.double_splice(src, a) }
      a.close_write
      assert_equal [data.bytesize, sha256(data)], reader.value
      assert_no_pending_operations
    end
  end

  # ---- errors nobody waits for --------------------------------------------------------------

  def test_an_error_nobody_waits_for_is_reported_once
    skip "Async reports through its own Console logger" if mode == :async

    in_mode do
      reports = capture_reports do
        failed = Ringspun.spin { raise RingspunTest::MyError, "nobody waits" }
        awaited = Ringspun.spin do
          sleep 0.005
          raise RingspunTest::MyError, "somebody waits"
        end
        assert_raises(RingspunTest::MyError) { awaited.value }
        assert_raises(RingspunTest::MyError) { failed.value } # still re-raised
        sleep 0.005
      end
      assert_equal ["nobody waits"], reports
    end
  end

  private

  # The messages the scheduler reported (report_fiber_error) while the
  # block ran.
  def capture_reports
    s = ringspun_scheduler
    reports = []
    s.define_singleton_method(:report_fiber_error) { |_fiber, error| reports << error.message }
    yield
    reports
  end
end

RingspunTest::Modes.define("TestTask", TaskContract, base: RingspunTest::PrimitiveCase,
                                                     modes: { "IoUring" => :io_uring, "Epoll" => :epoll,
                                                              "Async" => :async })

# What only Ringspun.run has: its end stops the tasks (tasks: :stop) or
# waits for them (the default).
module TaskRunContract
  def test_run_waits_for_its_tasks_by_default
    log = []
    result = run_rs do
      Ringspun.spin do
        sleep 0.02
        log << :task_finished
      end
      log << :main_returned
      :main
    end
    assert_equal :main, result
    assert_equal %i[main_returned task_finished], log
  end

  def test_run_with_tasks_stop_stops_what_is_still_running
    log = []
    r, w = IO.pipe
    result = Timeout.timeout(20) do
      Ringspun.run(backend: backend, tasks: :stop) do
        waited = Ringspun.spin do
          sleep 0.01
          log << :waited_finished
        end
        Ringspun.spin do
          r.read(1)
        ensure
          log << :reader_ensure
        end
        Ringspun.spin do
          Ringspun.spin do
            sleep 30
          ensure
            log << :grandchild_ensure
          end
          sleep 30
        ensure
          log << :sleeper_ensure
        end
        # A plain fiber is not a task: the run lets it finish.
        Fiber.schedule do
          sleep 0.03
          log << :plain_fiber_finished
        end
        waited.value
        [:main, Fiber.scheduler.live_tasks.size]
      end
    end
    assert_equal [:main, 3], result
    assert_equal %i[grandchild_ensure plain_fiber_finished reader_ensure sleeper_ensure waited_finished], log.sort
    w.write("x")
    assert_equal "x", r.read(1) # the stopped read took nothing
  ensure
    close_all(r, w)
  end

  def test_run_with_tasks_stop_when_the_block_raises
    ensured = false
    assert_raises(RingspunTest::MyError) do
      Ringspun.run(backend: backend, tasks: :stop) do
        Ringspun.spin do
          sleep 30
        ensure
          ensured = true
        end
        raise RingspunTest::MyError
      end
    end
    assert ensured
  end

  def test_run_refuses_an_unknown_tasks_option
    error = assert_raises(ArgumentError) { Ringspun.run(tasks: :kill) { :never } }
    assert_match(/:wait or :stop/, error.message)
  end

  def test_a_task_cannot_be_stopped_from_another_thread_without_fiber_interrupt_here
    # Ringspun's scheduler has fiber_interrupt: another thread may stop a task.
    r, w = IO.pipe
    run_rs do
      task = Ringspun.spin do
        r.read(1)
      ensure
        w.close
      end
      Thread.new { task.stop }.join
      assert_nil task.value
      assert w.closed?
    end
  ensure
    close_all(r, w)
  end

  private

  def close_all(*ios)
    ios.each { |io| io.close unless io.nil? || io.closed? }
  end
end

RingspunTest::Modes.define("TestTaskRun", TaskRunContract)

# With no scheduler.
class TestTaskWithoutScheduler < RingspunTest::Case
  def test_spin_raises_without_a_scheduler
    error = assert_raises(RuntimeError) { Ringspun.spin { :never } }
    assert_match(/inside Ringspun.run/, error.message)
  end

  def test_deadlines_fall_back_to_timeout_outside_a_scheduler
    assert_raises(Timeout::Error) { Ringspun.timeout(0.02) { sleep 30 } }
    assert_nil Ringspun.move_on_after(0.02) { sleep 30 }
    assert_equal :ok, Ringspun.timeout(1) { :ok }
  end
end
