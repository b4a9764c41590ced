# frozen_string_literal: true

module Bench
  # The contender side of a measurement, inside the child process. The
  # contender wraps its timed work in #measure and returns the units of work
  # it did; setup before and checks after stay outside the window.
  #
  # Wall time, CPU time and allocations are taken around the window only.
  # Peak RSS is the process's high-water mark (VmHWM), startup included, and
  # the thread count at its peak is sampled by the runner from outside, so
  # the sampler costs the contender neither a thread nor GVL turns.
  class Meter
    attr_reader :params

    def initialize(params)
      @params = params
      @window = nil
      @harness_allocated = 0
    end

    # Times the block, which returns the number of units of work done.
    # @return [Integer] the units
    def measure
      raise "measure may run once per process" if @window

      GC.start # every contender starts its window with the same clean heap
      # Read outside the snapshots: the objects reading it allocates must
      # fall outside the window's count.
      runq_before = main_thread_runq_ns
      before = snapshot
      units = yield
      after = snapshot
      runq_after = main_thread_runq_ns
      @window_end = after[:wall]
      @window = diff(before, after).merge(units: Integer(units))
      @window[:runq_s] = (runq_after - runq_before) / 1e9 if runq_before && runq_after
      @window[:allocated] -= @harness_allocated
      units
    end

    # Runs harness work inside the window (reading a drain process's
    # report, say): its time and CPU count, as the job is not done before
    # it, but the Ruby objects it allocates are not the contender's.
    # @return the block's value
    def harness_objects
      before = GC.stat(:total_allocated_objects)
      yield
    ensure
      @harness_allocated += GC.stat(:total_allocated_objects) - before
    end

    # Declares that this contender cannot run here.
    # @raise [Skip]
    def skip!(reason)
      raise Skip, reason
    end

    # The job ran in another program that measured itself (a reference
    # program under bench/c/), and this Ruby process only started it and
    # waited: the program's own figures replace this process's.
    #
    # @param cpu_s [Float] the program's CPU seconds
    # @param rss_peak_kib [Integer] its peak RSS
    # @param threads_peak [Integer] its threads
    # @param started_ns [Integer, nil] CLOCK_MONOTONIC (ns) when its main()
    #   began: the window then starts there, not before fork and exec
    # @param runq_s [Float, nil] its time waiting, runnable, for a CPU
    def adopt(cpu_s:, rss_peak_kib:, threads_peak: 1, started_ns: nil, runq_s: nil)
      raise "adopt comes after measure" unless @window

      @window = @window.merge(cpu_s: cpu_s, allocated: 0, gc_runs: 0, runq_s: runq_s)
      @window[:elapsed_s] = @window_end - started_ns / 1e9 if started_ns
      @adopted = { rss_peak_kib: rss_peak_kib, threads_peak: threads_peak }
    end

    # @return [Hash] what the runner reads back (one JSON line)
    def result
      raise "the contender never called measure" unless @window

      own = { rss_peak_kib: status_field("VmHWM"), threads_at_end: status_field("Threads") }
      @window.merge(own).merge(@adopted || {})
    end

    private

    def snapshot
      {
        wall: Process.clock_gettime(Process::CLOCK_MONOTONIC),
        cpu: Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID),
        allocated: GC.stat(:total_allocated_objects),
        gc_runs: GC.count
      }
    end

    def diff(before, after)
      {
        elapsed_s: after[:wall] - before[:wall],
        cpu_s: after[:cpu] - before[:cpu],
        allocated: after[:allocated] - before[:allocated],
        gc_runs: after[:gc_runs] - before[:gc_runs]
      }
    end

    # How long the main thread has waited, runnable, for a CPU (the second
    # field of /proc/self/schedstat, in ns). On a machine that other work
    # keeps busy this is where a single-threaded contender's wall time goes
    # beyond its CPU time; a contender with many threads is not covered by
    # it (their waits are their own, and die with them).
    def main_thread_runq_ns
      Integer(File.read("/proc/self/schedstat").split[1])
    rescue SystemCallError, ArgumentError, TypeError
      nil
    end

    def status_field(name)
      File.foreach("/proc/self/status") do |line|
        return Integer(line.split[1]) if line.start_with?("#{name}:")
      end
      nil
    end
  end

  # Raises this process's soft limits to what a contender needs: one fd per
  # socket and, for the thread contenders, one task per thread.
  module Limits
    module_function

    # @param fds [Integer] descriptors the job will hold at once
    # @param threads [Integer] threads the job will run at once
    # @raise [RuntimeError] when the hard limits are too low, naming the fix
    def ensure!(fds: 0, threads: 0)
      raise_soft(:NOFILE, fds + 64, "ulimit -n")
      raise_soft(:NPROC, threads + 64, "ulimit -u")
      check_threads_max(threads)
    end

    def raise_soft(resource, wanted, fix)
      soft, hard = Process.getrlimit(resource)
      return if soft == Process::RLIM_INFINITY || soft >= wanted

      unless hard == Process::RLIM_INFINITY || hard >= wanted
        raise "this contender needs RLIMIT_#{resource} >= #{wanted}; the hard limit is #{hard} (raise it: #{fix})"
      end
      Process.setrlimit(resource, wanted, hard)
    end

    def check_threads_max(threads)
      max = Integer(File.read("/proc/sys/kernel/threads-max"))
      return if max >= threads + 64

      raise "this contender needs #{threads} threads; kernel.threads-max is #{max}"
    end
  end
end
