# frozen_string_literal: true

require "etc"

module Ringspun
  # A Fiber::Scheduler on io_uring, or on epoll where io_uring cannot be set
  # up, for every Ruby from 3.1 on: the extension is compiled with the hooks
  # the running Ruby calls (see the README's "Supported Rubies"). The hooks
  # are implemented in C; the few here stand on them.
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
  #   Runs the event loop until every fiber started here has finished, on
  #   the calling fiber, which must be a blocking one of the scheduler's
  #   thread (Ringspun.run calls it from the thread's root fiber). Fibers
  #   that left the scheduler's hands (transferred elsewhere, with nothing
  #   in flight) are reported with {#report_stranded} and not waited for.
  #   @return [Scheduler] self
  #   @raise [RuntimeError] from a fiber this scheduler runs, or while the
  #     loop already runs
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
  # @!method io_read(io, buffer, length, offset = 0)
  #   Fiber::Scheduler hook: reads at least +length+ bytes (one attempt when
  #   0) into +buffer+ (an IO::Buffer) from +offset+. Ruby 3.1 passes no
  #   offset; 3.2+ do.
  #   @return [Integer] bytes read, or -errno
  # @!method io_write(io, buffer, length, offset = 0)
  #   Fiber::Scheduler hook: writes at least +length+ bytes from +buffer+.
  #   @return [Integer] bytes written, or -errno
  # @!method io_pread(io, buffer, from, length, offset)
  #   Fiber::Scheduler hook (Ruby 3.3+): IO#pread at file offset +from+.
  #   @return [Integer] bytes read, or -errno
  # @!method io_pwrite(io, buffer, from, length, offset)
  #   Fiber::Scheduler hook (Ruby 3.3+): IO#pwrite at file offset +from+.
  #   @return [Integer] bytes written, or -errno
  # @!method io_select(readables, writables = nil, exceptables = nil, timeout = nil)
  #   Fiber::Scheduler hook (Ruby 3.3+): IO.select inside a fiber, which
  #   parks on one poll operation per IO instead of blocking the loop.
  #   @return [Array(Array, Array, Array), nil] as IO.select
  # @!method fiber_interrupt(fiber, exception)
  #   Fiber::Scheduler hook (Ruby 4.0; callable on any Ruby): raises
  #   +exception+ in +fiber+ where it waits, cancelling its operation. Safe
  #   from any thread.
  #   @return [nil]
  # @!method io_close(fd)
  #   Fiber::Scheduler hook (Ruby 4.0): cancels what is in flight on +fd+,
  #   then closes it.
  #   @param fd [Integer]
  #   @return [true]
  # @!method yield
  #   Fiber::Scheduler hook (Ruby 4.0): lets every fiber runnable now run
  #   before the current one continues.
  #   @return [nil]
  # @!method fiber(&block)
  #   Fiber::Scheduler hook: starts a non-blocking fiber at once.
  #   @return [Fiber]
  class Scheduler
    # The {Task}s started on this scheduler that have not ended, for
    # +Ringspun.run(tasks: :stop)+.
    #
    # @api private
    # @return [Hash{Task => true}]
    def live_tasks
      @live_tasks ||= {}.compare_by_identity
    end

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

    # Called when the loop finds fibers it can never resume: alive, with no
    # operation in flight, none runnable (they transferred elsewhere). The
    # loop forgets them and ends instead of waiting forever.
    #
    # @param fibers [Array<Fiber>]
    # @return [void]
    def report_stranded(fibers)
      warn("ringspun: #{fibers.size} fiber(s) left the scheduler (transferred away with nothing " \
           "in flight); not waiting for them: #{fibers.map(&:inspect).join(', ')}")
    end

    # The hooks Ruby calls on a scheduler.
    HOOKS = %i[kernel_sleep block unblock io_wait io_read io_write io_pread io_pwrite io_select
               timeout_after process_wait address_resolve fiber blocking_operation_wait
               fiber_interrupt io_close yield close].freeze
    private_constant :HOOKS

    # Called when a StandardError ends a fiber. An error raised by a hook that
    # the application overrode (in a subclass or on the object) belongs to the
    # scheduler, not to the fiber: it must reach whoever waits on the thread,
    # as with any scheduler, where errors in the fibers' own code are reported
    # and the others run on (#report_fiber_error).
    #
    # @param error [StandardError]
    # @return [Boolean]
    def hook_error?(error)
      where = error.backtrace_locations&.first or return false
      name = where.base_label&.to_sym
      return false unless HOOKS.include?(name)

      defined_at = method(name).source_location
      !defined_at.nil? && defined_at.first == where.path
    rescue NameError
      false
    end

    if BLOCKING_OPERATION_WAIT == :ruby_threads
      # Work that costs less than this (in seconds, as measured for its call
      # site) runs in place: handing it to a thread costs about 25 us.
      OFFLOAD_ABOVE = 100e-6

      # Fiber::Scheduler hook (Ruby 3.4): Ruby hands over, as a Proc, each
      # call it would make with the GVL released: a Zlib or IO::Buffer run,
      # but also every open, stat and close. Work that takes long runs on one
      # of this scheduler's threads, so the loop serves other fibers
      # meanwhile; short work runs in place, where a hand-over would cost ten
      # times the work (a stat: 1.7 us in place, 28 us through a thread). The
      # cost is learnt per call site (File.exist?, Zlib::Deflate#deflate, ...):
      # a site's first call runs in place. A Proc can only run on a Ruby
      # thread; Ruby 4.0 hands over a handle our C worker threads run.
      #
      # @param work [Proc]
      # @return [Object] the work's value
      def blocking_operation_wait(work)
        site = caller_locations(1, 1).first&.label
        cost = (@blocking_costs ||= {})[site]
        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        result = if fiber_count > 1 && cost && cost > OFFLOAD_ABOVE
                   (@blocking_pool ||= BlockingPool.new).call(work)
                 else
                   # Fiber.blocking: inside it Ruby sees no scheduler, so the
                   # work makes the blocking call instead of coming back here.
                   Fiber.blocking { work.call }
                 end
        took = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
        @blocking_costs[site] = cost ? (cost * 3 + took) / 4 : took
        result
      end
    end
  end

  # Ruby threads that run the work of Scheduler#blocking_operation_wait on
  # Ruby 3.4, started as needed up to the number of cores and stopped when
  # the scheduler closes.
  class BlockingPool
    def initialize(size = Etc.nprocessors.clamp(1, 8))
      @size = size
      @jobs = Thread::Queue.new
      @threads = []
    end

    # Runs work on a pool thread; the calling fiber parks until it is done.
    # The work writes into the caller's stack frame, so an exception raised
    # into the waiting fiber (a Timeout) waits for the work before it goes on.
    #
    # @param work [Proc]
    # @return [Object] the work's value
    def call(work)
      done = Thread::Queue.new
      @threads << Thread.new { serve } if @threads.size < @size && @jobs.num_waiting.zero?
      @jobs << [work, done]
      outcome = wait_for(done)
      raise outcome[1] if outcome[0] == :error

      outcome[1]
    end

    # Stops the threads once they are idle.
    #
    # @return [nil]
    def close
      @jobs.close
      Fiber.blocking { @threads.each(&:join) }
      @threads.clear
      nil
    end

    private

    def serve
      Thread.current.name = "ringspun-blocking"
      while (job = @jobs.pop)
        work, done = job
        begin
          done << [:ok, work.call]
        rescue Exception => e # rubocop:disable Lint/RescueException -- handed to the waiting fiber
          done << [:error, e]
        end
      end
    end

    def wait_for(done)
      interrupted = nil
      begin
        outcome = done.pop
      rescue Exception => e # rubocop:disable Lint/RescueException -- re-raised once the work is done
        interrupted ||= e
        retry
      end
      raise interrupted if interrupted

      outcome
    end
  end
end
