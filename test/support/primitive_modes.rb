# frozen_string_literal: true

require "async"

# Async 2.24 (the last release for Ruby 3.1) calls IO#timeout, a Ruby 3.2
# method, in its io_wait/io_read/io_write hooks; on Ruby 3.1 every plain IO
# read under Async would fail with NoMethodError. Ruby 3.2's default is nil.
unless IO.method_defined?(:timeout)
  class IO
    def timeout = nil
  end
end

module RingspunTest
  # A primitive is tested in four places (ARCHITECTURE.md): inside
  # Ringspun.run on io_uring and on epoll, with no scheduler at all, and
  # under another Fiber::Scheduler (Async's), where it must work through
  # the readiness path.
  #
  #   module SpliceContract
  #     def test_x
  #       in_mode do
  #         t = go { produce }          # a fiber, or a thread with no scheduler
  #         consume
  #         t.value                     # waits; re-raises what the task raised
  #       end
  #     end
  #   end
  #   RingspunTest::PrimitiveModes.define("TestSplice", SpliceContract)
  #   # => TestSpliceIoUring, TestSpliceEpoll, TestSpliceBlocking, TestSpliceAsync
  module PrimitiveModes
    ALL = { "IoUring" => :io_uring, "Epoll" => :epoll, "Blocking" => :blocking, "Async" => :async }.freeze

    def self.define(prefix, contract)
      Modes.define(prefix, contract, base: PrimitiveCase, modes: ALL)
    end
  end

  # A concurrent task's handle: #value waits for it (through the scheduler
  # when there is one) and re-raises its exception.
  class Task
    def initialize(&block)
      @done = Queue.new
      # A proc, not a lambda: Async passes the task as an argument.
      runner = proc do
        @done << [:ok, block.call]
      rescue Exception => e # rubocop:disable Lint/RescueException -- handed to #value
        @done << [:error, e]
      end
      @handle = Fiber.scheduler ? Fiber.schedule(&runner) : Thread.new(&runner)
    end

    def value
      @result ||= @done.pop
      @handle.join if @handle.is_a?(Thread)
      raise @result[1] if @result[0] == :error

      @result[1]
    end
  end

  # Base class of the four-mode primitive tests.
  class PrimitiveCase < Case
    def mode
      self.class.backend
    end

    def scheduled?
      %i[io_uring epoll async].include?(mode)
    end

    # Runs the block in this class's mode and returns its value.
    def in_mode(&block)
      case mode
      when :io_uring, :epoll then Ringspun.run(backend: mode, &block)
      when :async then Sync(&block)
      else block.call
      end
    end

    # Starts the block concurrently: a fiber under a scheduler, a thread
    # without one.
    def go(&block)
      Task.new(&block)
    end

    # The Ringspun scheduler of this run, or nil in the other modes.
    def ringspun_scheduler
      s = Fiber.scheduler
      s.is_a?(Ringspun::Scheduler) ? s : nil
    end

    # Inside Ringspun.run: nothing left handed out once the work is done.
    def assert_no_pending_operations(msg = nil)
      s = ringspun_scheduler
      assert_equal 0, s.pending_operations, msg || "operations still handed out" if s
    end
  end
end
