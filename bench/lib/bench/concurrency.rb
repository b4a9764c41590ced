# frozen_string_literal: true

module Bench
  # Two ways to run many tasks at once behind one small interface, so a case
  # writes its job once and each contender only picks the way:
  #
  #   Bench::Fibers.new(:io_uring).run { |tasks| tasks.spawn { ... } }
  #   Bench::Threads.new.run { |tasks| tasks.spawn { ... } }
  #
  # #run returns the block's value once every spawned task has finished.
  # A task that raises fails the run: the contender exits non-zero.

  # Fibers under a Ringspun scheduler on the given backend.
  class Fibers
    # @param backend [Symbol] :io_uring or :epoll (forced, never :auto)
    def initialize(backend)
      @backend = backend
      @failures = []
    end

    # Call it before the timed window: it loads Ringspun and sets up (then
    # drops) one ring, which a measurement should not pay for.
    # @raise [Skip] when this machine cannot run the backend
    def check!
      return if @checked

      require "ringspun"
      Ringspun::Scheduler.new(backend: @backend).close
      @checked = true
    rescue SystemCallError, NotImplementedError => e
      raise Skip, "#{@backend} is unavailable here: #{e.message}"
    end

    def run
      check!
      value = Ringspun.run(backend: @backend) { yield self }
      raise @failures.first unless @failures.empty?

      value
    end

    # Ringspun reports a fiber's error and lets the others run on; keep the
    # error so the run fails once they have.
    def spawn
      Ringspun.spin do
        yield
      rescue StandardError => e
        @failures << e
        raise
      end
    end
  end

  # No concurrency at all: each task runs to its end when it is spawned, on
  # the calling thread, with no scheduler. It gives the floor of the Ruby the
  # tasks run, for cases where every task can finish alone in spawn order
  # (a copy whose bytes fit in its socket's buffers, then its reader).
  class Inline
    def check!; end

    def run
      yield self
    end

    def spawn
      yield
    end
  end

  # One Ruby thread per task, blocking IO, no scheduler.
  class Threads
    def initialize
      @threads = Queue.new
    end

    def check!; end

    def run
      value = yield self
      # Tasks may spawn tasks (an accept loop spawns a thread per
      # connection): join until none is left.
      @threads.pop.join until @threads.empty?
      value
    end

    def spawn(&block)
      thread = Thread.new(&block)
      thread.report_on_exception = false # join re-raises it
      @threads << thread
      thread
    end
  end
end
