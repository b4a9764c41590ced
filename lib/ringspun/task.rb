# frozen_string_literal: true

module Ringspun
  # Raised where a task waits when it is stopped ({Task#stop}, or the end of
  # a +Ringspun.run(tasks: :stop)+ block). It is an Exception, not a
  # StandardError, so a bare +rescue+ in the task does not swallow it; the
  # task's ensure clauses run and the operation it waited on is cancelled.
  class Stopped < Exception # rubocop:disable Lint/InheritException -- must pass a bare rescue, as Async::Stop does
  end

  # A fiber started by {Ringspun.spin}, with a way to wait for it, take its
  # value and stop it. It runs on the scheduler of the thread that spun it
  # (a Ringspun one or any other Fiber::Scheduler); it can be waited for
  # from another task, from the run's main block and from another thread.
  #
  #   reader = Ringspun.spin { socket.read }
  #   data = reader.value               # waits; re-raises what the task raised
  #
  # A task that ends with a StandardError nobody is waiting for is reported
  # once by its scheduler (Ringspun::Scheduler#report_fiber_error), as a
  # plain fiber's is; {#value} still re-raises it later.
  class Task
    # @return [Fiber] the fiber the task runs in
    attr_reader :fiber

    # Starts +block+ as a task under the current fiber scheduler.
    #
    # @api private — use {Ringspun.spin}
    # @return [Task]
    def self.spin(&block)
      new(Fiber.scheduler, block).tap(&:start)
    end

    # @api private — use {Ringspun.spin}
    def initialize(scheduler, block)
      @scheduler = scheduler
      @thread = Thread.current
      @block = block
      @state = nil # :value, :error or :stopped once the task has ended
      @result = nil
      # Closed when the task ends. Waiters pop it: Thread::Queue is the one
      # waiting place Ruby makes safe across threads and fibers, and against
      # an exception raised into the waiter (a ConditionVariable under a
      # Ruby 3.1 scheduler leaves its mutex unlocked when the wait raises).
      @done = Thread::Queue.new
    end

    # @api private
    # @return [void]
    def start
      @registry = @scheduler.live_tasks if @scheduler.respond_to?(:live_tasks)
      @registry&.store(self, true)
      # A proc, not a lambda: Async passes its own task as an argument.
      Fiber.schedule(&proc { run_block })
    end

    # Waits for the task to end and returns the block's value, or re-raises
    # the exception that ended it, as Thread#value does. A task stopped by
    # {#stop} (that did not rescue Ringspun::Stopped) has the value nil.
    #
    # @return [Object] the block's value
    # @raise [Exception] what the block raised
    # @raise [FiberError] called from the task itself
    def value
      join
    end

    # Like {#value}, with a limit on the wait.
    #
    # @param timeout [Numeric, nil] seconds to wait at most; nil waits as
    #   long as it takes
    # @return [Object, nil] the block's value, or nil when the time ran out
    # @raise [Exception] what the block raised
    def join(timeout = nil)
      return nil unless ended? || wait_for_end(timeout)
      Kernel.raise @result if @state == :error

      @result
    end
    alias wait join

    # Raises Ringspun::Stopped in the task where it waits, so its ensure
    # clauses run and its operation is cancelled. Returns at once (the task
    # runs its ensure clauses when the loop next gets to it); {#join} waits
    # for the end. Stopping an ended or already stopped task does nothing;
    # stopping the current task raises at once.
    #
    # @return [Task] self
    def stop
      return self if @stopping || ended?

      @stopping = true
      deliver(Stopped.new("task stopped"))
      self
    end

    # Raises an exception in the task where it waits, as Fiber#raise does,
    # cancelling the operation it waited on.
    #
    # @overload raise
    #   raises a RuntimeError
    # @overload raise(message)
    #   raises a RuntimeError with +message+
    # @overload raise(exception_class_or_object, message = nil, backtrace = nil)
    # @return [Task] self
    def raise(*args)
      deliver(exception_of(args)) unless ended?
      self
    end

    # @return [Boolean] true until the task's block has returned or raised
    def alive?
      !ended?
    end

    # @return [String]
    def inspect
      "#<#{self.class} #{@state || (@stopping ? :stopping : :running)} #{@fiber.inspect}>"
    end

    private

    def ended?
      !@state.nil?
    end

    def run_block
      @fiber = Fiber.current
      finish(:value, @block.call)
    rescue Stopped
      finish(:stopped, nil)
    rescue Exception => e # rubocop:disable Lint/RescueException -- handed to #value, or to the scheduler
      waited = finish(:error, e)
      # Nobody waits: the scheduler reports it, as it does a plain fiber's.
      # Anything graver than a StandardError goes on as from any fiber.
      Kernel.raise if !waited || !e.is_a?(StandardError)
    ensure
      @block = nil
      @registry&.delete(self)
    end

    # Records the end and wakes the waiters; true when there were any.
    def finish(state, result)
      @result = result
      @state = state
      waited = @done.num_waiting.positive?
      @done.close
      waited
    end

    # Parks the caller (fiber or thread) until the task ends; false when
    # +timeout+ seconds passed first.
    def wait_for_end(timeout)
      Kernel.raise FiberError, "a task cannot wait for itself" if Fiber.current.equal?(@fiber)

      if timeout.nil?
        @done.pop
      elsif POP_TIMEOUT
        @done.pop(timeout: [timeout, 0].max)
      else
        Ringspun.move_on_after(timeout) { @done.pop } if timeout.positive?
      end
      ended?
    end

    # Queue#pop takes a timeout from Ruby 3.2 on.
    POP_TIMEOUT = Thread::Queue.instance_method(:pop).parameters.include?(%i[key timeout])
    private_constant :POP_TIMEOUT

    # Raises +exception+ in the task's fiber: in place when it is the current
    # one; queued through the scheduler's fiber_interrupt (safe from any
    # thread) where it has one; else through Fiber#raise, on the task's
    # thread only.
    def deliver(exception)
      return Kernel.raise(exception) if Fiber.current.equal?(@fiber)
      return @scheduler.fiber_interrupt(@fiber, exception) if @scheduler.respond_to?(:fiber_interrupt)
      unless Thread.current.equal?(@thread)
        Kernel.raise ThreadError, "#{@scheduler.class} cannot raise into a fiber of another thread"
      end

      @scheduler.respond_to?(:raise) ? @scheduler.raise(@fiber, exception) : @fiber.raise(exception)
    end

    # The exception Kernel#raise would make of +args+.
    def exception_of(args)
      return RuntimeError.new("unhandled exception") if args.empty?
      return RuntimeError.new(args.first) if args.size == 1 && args.first.is_a?(String)

      what, message, backtrace = args
      exception = message.nil? ? what.exception : what.exception(message)
      exception.set_backtrace(backtrace) if backtrace
      exception
    end
  end
end
