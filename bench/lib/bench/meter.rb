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
    end

    # Times the block, which returns the number of units of work done.
    # @return [Integer] the units
    def measure
      raise "measure may run once per process" if @window

      GC.start # every contender starts its window with the same clean heap
      before = snapshot
      units = yield
      @window = diff(before, snapshot).merge(units: Integer(units))
      units
    end

    # Declares that this contender cannot run here.
    # @raise [Skip]
    def skip!(reason)
      raise Skip, reason
    end

    # @return [Hash] what the runner reads back (one JSON line)
    def result
      raise "the contender never called measure" unless @window

      @window.merge(rss_peak_kib: status_field("VmHWM"), threads_at_end: status_field("Threads"))
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
