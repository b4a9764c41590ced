# frozen_string_literal: true

module Ringspun
  # A Ruby 3.1 Fiber::Scheduler on io_uring, or on epoll where io_uring cannot
  # be set up. The hooks are implemented in C; the few here stand on them.
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
