# frozen_string_literal: true

module Ringspun
  # A Ruby 3.1 Fiber::Scheduler on io_uring, or on epoll where io_uring cannot
  # be set up. The hooks are implemented in C; the few here stand on them.
  #
  # @!method initialize(backend: :auto)
  #   @param backend [Symbol] :auto tries io_uring and falls back to epoll on
  #     any setup error; :io_uring or :epoll force one. With :auto (or nil)
  #     the RINGSPUN_BACKEND environment variable may choose.
  #   @raise [ArgumentError] an unknown backend
  #   @raise [SystemCallError] a forced backend cannot be set up
  # @!method backend
  #   @return [Symbol] :io_uring or :epoll
  # @!method run
  #   Runs the event loop until every fiber started here has finished. Call
  #   it from the fiber that created the scheduler (Ringspun.run does).
  #   @return [Scheduler] self
  # @!method close
  #   Runs the remaining fibers, then releases the ring or epoll instance.
  #   Fiber.set_scheduler calls it.
  #   @return [nil]
  # @!method abandon
  #   Closes after an interrupted run: every fiber still waiting gets
  #   Ringspun::RunAborted raised where it waits, so its ensure clauses run.
  #   @return [nil]
  # @!method pending_operations
  #   @return [Integer] operations handed out and not yet released
  # @!method inflight_operations
  #   @return [Integer] operations the kernel (or a worker thread) still holds
  # @!method fiber_count
  #   @return [Integer] fibers started here and not finished
  # @!method features
  #   @return [Array<Symbol>] optional kernel features found at run time
  #     (:splice, :tee, :iowq_max_workers, :ext_arg, :buf_ring)
  # @!method kernel_sleep(duration = nil)
  #   Fiber::Scheduler hook: io_uring timeouts or the epoll timer heap.
  # @!method block(blocker, timeout = nil)
  #   Fiber::Scheduler hook; @return [Boolean] false when the time ran out
  # @!method unblock(blocker, fiber)
  #   Fiber::Scheduler hook; safe from any thread (wakes the owner's loop
  #   through an eventfd).
  # @!method timeout_after(duration, exception_class, message, &block)
  #   Fiber::Scheduler hook: raises in the fiber if the block outlives duration.
  # @!method io_wait(io, events, timeout)
  #   Fiber::Scheduler hook; @return [Integer, false]
  # @!method io_read(io, buffer, length)
  #   Fiber::Scheduler hook (IO::Buffer, Ruby 3.1 signature).
  # @!method io_write(io, buffer, length)
  #   Fiber::Scheduler hook (IO::Buffer, Ruby 3.1 signature).
  # @!method fiber(&block)
  #   Fiber::Scheduler hook: starts a non-blocking fiber at once.
  #   @return [Fiber]
  class Scheduler
    # Waits for a child process without blocking other fibers.
    #
    # @param pid [Integer] as for Process.wait
    # @param flags [Integer] as for Process.wait
    # @return [Process::Status, nil]
    def process_wait(pid, flags)
      return Process::Status.wait(pid, flags) unless (flags & Process::WNOHANG).zero?

      if pid.positive?
        # Already gone, or not our child (a status carrying ECHILD): at once.
        status = Process::Status.wait(pid, flags | Process::WNOHANG)
        return status if status
        return Process::Status.wait(pid, flags | Process::WNOHANG) if wait_pidfd(pid)
      end

      # No pidfd for "any child" or "a process group": a helper thread waits.
      Thread.new { Process::Status.wait(pid, flags) }.value
    end

    # Resolves a host name without blocking other fibers.
    #
    # @param hostname [String]
    # @return [Array<String>] the addresses, IPv4 and IPv6
    def address_resolve(hostname)
      host = hostname.sub(/%.*\z/, "")
      Thread.new do
        Addrinfo.getaddrinfo(host, nil, nil, :STREAM).map(&:ip_address).uniq
      end.value
    end

    # Called when a fiber ends with a StandardError: like a Thread with
    # +report_on_exception+, the error is reported and the other fibers run
    # on. Override it to log elsewhere.
    #
    # @param fiber [Fiber]
    # @param error [StandardError]
    # @return [void]
    def report_fiber_error(fiber, error)
      warn("#{fiber.inspect} terminated with exception:\n#{error.full_message(highlight: false)}")
    end
  end
end
