# frozen_string_literal: true

# Puts Ringspun::Scheduler in the place of the reference scheduler of Ruby's
# own test/fiber (test/fiber/scheduler.rb in Ruby's sources), for
# test/ruby_fiber/run.rb.
#
# run.rb loads this file through RUBYOPT (-r), so it is loaded first in the
# test process and in every Ruby process a test starts (assert_in_out_err
# runs `ruby -I test/fiber -` with `require 'scheduler'`): there the
# reference file is already loaded from the same path, so that require does
# nothing, and `Scheduler` is Ringspun's everywhere.
#
#   RINGSPUN_FIBER_REFERENCE  path of the reference test/fiber/scheduler.rb
#   RINGSPUN_BACKEND          io_uring or epoll, read by Ringspun::Scheduler.new
#
# After it:
# - Scheduler is RingspunFiberShim::Scheduler, a Ringspun::Scheduler whose
#   constructor takes the reference's optional fiber argument, and with the
#   one reference method tests call that is not a Fiber::Scheduler hook:
#   #transfer (Ruby 3.4's test_mutex_deadlock);
# - each subclass scheduler.rb defines is replaced by the same subclass of
#   the shim, its methods written again on top of Ringspun's hooks (below);
#   a subclass not listed there stops the run, so a newer Ruby's scheduler.rb
#   is looked at before it is trusted.
#
# What the shim does not give: the reference's own bookkeeping (#readable,
# #writable, #waiting, #next_timeout, #current_time). Tests that read it are
# tests of the reference scheduler, excluded by the rake task with a reason.

reference_path = ENV.fetch("RINGSPUN_FIBER_REFERENCE") do
  raise "test/ruby_fiber/shim.rb: RINGSPUN_FIBER_REFERENCE must name test/fiber/scheduler.rb"
end
require File.expand_path(reference_path)
require "ringspun"

module RingspunFiberShim
  Reference = ::Scheduler

  # Ringspun::Scheduler under the reference scheduler's name.
  class Scheduler < Ringspun::Scheduler
    # The reference takes the fiber its loop runs on (Ruby 3.4; 3.1's takes
    # nothing); the backend comes from RINGSPUN_BACKEND.
    def initialize(fiber = Fiber.current)
      super()
      @reference_fiber = fiber
    end

    # The reference's #transfer: back to the fiber that made the scheduler,
    # leaving the current one where it is.
    def transfer
      @reference_fiber.transfer
    end
  end

  # The subclasses of the reference scheduler in scheduler.rb (Ruby 3.1.2 and
  # 3.4.5), each as a subclass of the shim. Each says what the reference one
  # does and how that is kept.
  REBASED = {
    # The reference adds io_read/io_write (and io_pread/io_pwrite on 3.4)
    # built on its io_wait. Ringspun has those hooks itself, so here it adds
    # nothing: the IO::Buffer tests run Ringspun's own io_read/io_write.
    "IOBufferScheduler" => -> { Class.new(Scheduler) },

    # unblock does its work, then raises.
    "BrokenUnblockScheduler" => lambda {
      Class.new(Scheduler) do
        def unblock(blocker, fiber)
          super
          raise "Broken unblock!"
        end
      end
    },

    # unblock does its work, then sleeps (which changes the thread's state
    # while Ruby is ending the thread).
    "SleepingUnblockScheduler" => lambda {
      Class.new(Scheduler) do
        def unblock(blocker, fiber)
          super
          sleep(0.1)
        end
      end
    },

    # kernel_sleep first sleeps blocking, then blocks the fiber through the
    # scheduler's #block, as the reference's does (Ruby 3.4's test_deadlock:
    # an unblock can come before the block).
    "SleepingBlockingScheduler" => lambda {
      Class.new(Scheduler) do
        def kernel_sleep(duration = nil)
          Fiber.blocking { sleep 0.0001 }
          block(:sleep, duration)
          true
        end
      end
    }
  }.freeze

  subclasses = ObjectSpace.each_object(Class).select { |klass| klass < Reference }.map(&:name)
  unknown = subclasses - REBASED.keys
  unless unknown.empty?
    raise "test/ruby_fiber/shim.rb: #{reference_path} defines #{unknown.join(', ')}, " \
          "which the shim does not re-base on Ringspun::Scheduler; add it to REBASED"
  end

  Object.send(:remove_const, :Scheduler)
  Object.const_set(:Scheduler, Scheduler)
  subclasses.each do |name|
    Object.send(:remove_const, name)
    Object.const_set(name, REBASED.fetch(name).call)
  end
end
