# frozen_string_literal: true

require "rbconfig"
require "timeout"
require_relative "ringspun/version"

# The compiled extension, first found of:
# - RINGSPUN_EXT, another build named by path (the sanitizer build the test
#   task runs);
# - ringspun/<abi>/ringspun.so beside this file, where `rake compile` puts
#   the build of each Ruby in a checkout (<abi>: RbConfig's ruby_version,
#   3.1.0 or 3.4.0), so Rubies sharing a checkout each load their own;
# - ringspun/ringspun.so beside this file or on the load path, where
#   `gem install` puts it (the gem's lib/ or its extension directory).
ringspun_ext = ENV.fetch("RINGSPUN_EXT", "")
if ringspun_ext.empty?
  dlext = RbConfig::CONFIG["DLEXT"]
  ringspun_ext = [File.join(__dir__, "ringspun", RbConfig::CONFIG["ruby_version"], "ringspun.#{dlext}"),
                  File.join(__dir__, "ringspun", "ringspun.#{dlext}")].find { |path| File.exist?(path) }
end
require(ringspun_ext || "ringspun/ringspun")
require_relative "ringspun/scheduler"
require_relative "ringspun/task"
require_relative "ringspun/fork"
require_relative "ringspun/pipe"
require_relative "ringspun/io"
require_relative "ringspun/msgpack"

# Fiber-based IO on Linux: a Fiber::Scheduler on io_uring (with an epoll
# fallback) and zero-copy, streaming primitives exposed as methods on IO.
module Ringspun
  # What {move_on_after} raises where the block waits; an Exception, so that
  # a bare rescue in the block does not take it for an error of its own.
  class MovedOn < Exception # rubocop:disable Lint/InheritException -- must pass a bare rescue
  end
  private_constant :MovedOn
  @move_on_ids = 0

  class << self
    # Runs the block in a non-blocking fiber under a new {Scheduler} on the
    # current thread, and returns the block's value once the run is over. The
    # previous scheduler state is restored.
    #
    # When the block returns, what is still running is either waited for
    # (+tasks: :wait+, the default: every fiber and task started under the
    # run finishes first, as Async's top-level task and Ruby's own
    # Fiber::Scheduler#close do) or, with +tasks: :stop+, every {Task} still
    # running is stopped ({Task#stop}: its ensure clauses run and its
    # operation is cancelled) and the run ends once they have unwound. Tasks
    # the block waited for ({Task#value}) have ended by then either way;
    # fibers started with Fiber.schedule are always run to their end.
    #
    # Inside another scheduler the run takes a thread of its own, because
    # installing a scheduler would close the one already there.
    #
    # @param backend [Symbol, nil] +:auto+ (default), +:io_uring+ or +:epoll+;
    #   +nil+ honours +RINGSPUN_BACKEND+
    # @param tasks [Symbol] +:wait+ (default) or +:stop+: what becomes of the
    #   tasks still running when the block returns or raises
    # @yield the work to run; it may start tasks with {spin}
    # @return [Object] the block's value
    # @raise [Exception] whatever the block raised
    # @raise [ArgumentError] an unknown +tasks+ or +backend+
    def run(backend: nil, tasks: :wait, &block)
      raise ArgumentError, "Ringspun.run needs a block" unless block
      raise ArgumentError, "tasks: must be :wait or :stop, not #{tasks.inspect}" unless %i[wait stop].include?(tasks)
      return nested_run(backend, tasks, block) if Fiber.scheduler

      scheduler = Scheduler.new(backend: backend)
      Fiber.set_scheduler(scheduler)
      result = run_main(scheduler, tasks, block)
      finished = true
      result
    ensure
      # Interrupted (Thread#kill, Interrupt, SystemExit from a fiber): the
      # remaining fibers cannot all finish, so close without running them.
      scheduler.abandon if scheduler && !finished
      Fiber.set_scheduler(nil) if scheduler && Fiber.scheduler.equal?(scheduler)
    end

    # Starts a task: a fiber under the current scheduler (a Ringspun one or
    # any other Fiber::Scheduler, through Fiber.schedule) that can be waited
    # for, stopped and asked for its value.
    #
    #   reader = Ringspun.spin { socket.read }
    #   reader.value      # => what the block returned (or raises what it raised)
    #
    # @yield the task's work
    # @return [Task]
    # @raise [RuntimeError] when the thread has no scheduler
    def spin(&block)
      raise ArgumentError, "Ringspun.spin needs a block" unless block
      raise "Ringspun.spin needs a Fiber scheduler: call it inside Ringspun.run" unless Fiber.scheduler

      Task.spin(&block)
    end

    # Runs the block with a deadline, as Timeout.timeout does, on the
    # scheduler's own timer (no helper thread): when +seconds+ pass before
    # the block returns, +klass+ is raised where the block waits (a sleep,
    # a read, a primitive), and what it waited on is cancelled. A block that
    # never waits cannot be interrupted. Without a scheduler, or from a
    # blocking fiber, this is Timeout.timeout.
    #
    # @param seconds [Numeric, nil] nil or 0 run the block without a deadline
    # @param klass [Class] the exception raised when time runs out
    # @param message [String]
    # @yieldparam seconds [Numeric]
    # @return [Object] the block's value
    # @raise [Timeout::Error] (or +klass+) when the time ran out
    # @raise [ArgumentError] a negative +seconds+
    def timeout(seconds, klass = nil, message = nil, &block)
      raise ArgumentError, "Ringspun.timeout needs a block" unless block
      return yield(seconds) if seconds.nil? || seconds.zero?
      raise ArgumentError, "timeout must not be negative: #{seconds}" if seconds.negative?

      scheduler = Fiber.scheduler
      if scheduler.respond_to?(:timeout_after) && !Fiber.current.blocking?
        scheduler.timeout_after(seconds, klass || Timeout::Error, message || "execution expired", &block)
      else
        Timeout.timeout(seconds, klass, message, &block)
      end
    end

    # Runs the block with a deadline and returns nil when it passes: the
    # block is interrupted where it waits, as with {timeout}, and the run
    # moves on. Nested deadlines each end only their own block.
    #
    # @param seconds [Numeric, nil] nil or 0 run the block without a deadline
    # @return [Object, nil] the block's value, or nil when the time ran out
    def move_on_after(seconds, &block)
      raise ArgumentError, "Ringspun.move_on_after needs a block" unless block

      # Tells this block's deadline from an enclosing one's. (Ids shared by
      # two threads would not matter: nested deadlines are on one fiber.)
      token = "move_on_after deadline #{@move_on_ids += 1}"
      timeout(seconds, MovedOn, token, &block)
    rescue MovedOn => e
      raise unless e.message == token

      nil
    end

    private

    # The run's own thread; its exception reaches the caller through #value,
    # so the thread does not report it a second time.
    def nested_run(backend, tasks, block)
      thread = Thread.new do
        Thread.current.report_on_exception = false
        run(backend: backend, tasks: tasks, &block)
      end
      thread.value
    end

    def run_main(scheduler, tasks, block)
      outcome = nil
      Fiber.schedule do
        outcome = [:value, block.call]
      rescue Exception => e # rubocop:disable Lint/RescueException -- re-raised below
        outcome = [:error, e]
      ensure
        scheduler.live_tasks.keys.each(&:stop) if tasks == :stop
      end
      scheduler.run
      return outcome.last unless outcome&.first == :error

      raise outcome.last
    end
  end
end
