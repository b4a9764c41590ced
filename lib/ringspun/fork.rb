# frozen_string_literal: true

module Ringspun
  # Hooks Process._fork (Ruby 3.1's designated fork hook) so that a child
  # forked inside Ringspun.run drops the parent's ring at once and gets a
  # fresh backend; the parent is untouched.
  module ForkHook
    # @return [Integer] the child's pid in the parent, 0 in the child
    def _fork
      pid = super
      if pid.zero?
        scheduler = Fiber.scheduler
        scheduler.__send__(:after_fork) if scheduler.is_a?(Ringspun::Scheduler)
      end
      pid
    end
  end
  Process.singleton_class.prepend(ForkHook)
end
