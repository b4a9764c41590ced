# frozen_string_literal: true

require "rbconfig"
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
require_relative "ringspun/fork"
require_relative "ringspun/pipe"
require_relative "ringspun/io"
require_relative "ringspun/msgpack"

# Fiber-based IO on Linux: a Fiber::Scheduler on io_uring (with an epoll
# fallback) and zero-copy, streaming primitives exposed as methods on IO.
module Ringspun
  class << self
    # Runs the block in a non-blocking fiber under a new {Scheduler} on the
    # current thread, and returns once every fiber started under it has
    # finished. The previous scheduler state is restored.
    #
    # Inside another scheduler the run takes a thread of its own, because
    # installing a scheduler would close the one already there.
    #
    # @param backend [Symbol, nil] +:auto+ (default), +:io_uring+ or +:epoll+;
    #   +nil+ honours +RINGSPUN_BACKEND+
    # @yield the work to run; it may start more fibers with {spin}
    # @return [Object] the block's value
    # @raise [Exception] whatever the block raised
    def run(backend: nil, &block)
      raise ArgumentError, "Ringspun.run needs a block" unless block
      return nested_run(backend, block) if Fiber.scheduler

      scheduler = Scheduler.new(backend: backend)
      Fiber.set_scheduler(scheduler)
      result = run_main(scheduler, block)
      finished = true
      result
    ensure
      # Interrupted (Thread#kill, Interrupt, SystemExit from a fiber): the
      # remaining fibers cannot all finish, so close without running them.
      scheduler.abandon if scheduler && !finished
      Fiber.set_scheduler(nil) if scheduler && Fiber.scheduler.equal?(scheduler)
    end

    # Starts a fiber under the current scheduler (a Ringspun one or any other
    # Fiber::Scheduler) and returns it.
    #
    # @yield the fiber's work
    # @return [Fiber]
    # @raise [RuntimeError] when the thread has no scheduler
    def spin(&block)
      raise ArgumentError, "Ringspun.spin needs a block" unless block
      raise "Ringspun.spin needs a Fiber scheduler: call it inside Ringspun.run" unless Fiber.scheduler

      Fiber.schedule(&block)
    end

    private

    # The run's own thread; its exception reaches the caller through #value,
    # so the thread does not report it a second time.
    def nested_run(backend, block)
      thread = Thread.new do
        Thread.current.report_on_exception = false
        run(backend: backend, &block)
      end
      thread.value
    end

    def run_main(scheduler, block)
      outcome = nil
      Fiber.schedule do
        outcome = [:value, block.call]
      rescue Exception => e # rubocop:disable Lint/RescueException -- re-raised below
        outcome = [:error, e]
      end
      scheduler.run
      return outcome.last unless outcome&.first == :error

      raise outcome.last
    end
  end
end
