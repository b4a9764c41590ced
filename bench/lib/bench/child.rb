# frozen_string_literal: true

require "json"
require "open3"
require "rbconfig"

module Bench
  # What one contender process reported, or why it did not.
  Sample = Struct.new(
    :status,        # :ok, :skipped or :failed
    :rate,          # units per second
    :units, :elapsed_s, :cpu_s, :allocated, :gc_runs, :runq_s,
    :rss_peak_kib, :threads_peak,
    :reason,        # skipped or failed: why
    keyword_init: true
  ) do
    def ok? = status == :ok
  end

  # Runs one contender as a fresh Ruby process and watches it from outside:
  # its thread count is sampled from /proc/PID/status while it runs (io_uring
  # kernel workers are threads of the process and count too), and it is
  # killed when it overruns its time limit.
  class Child
    SCRIPT = File.expand_path("../../contender.rb", __dir__)
    # BENCH_LIB points the contenders at another build of lib/ (say, to
    # compare a tuned ringspun.so with the committed one).
    LIB = File.expand_path(ENV.fetch("BENCH_LIB", File.expand_path("../../../lib", __dir__)))
    SAMPLE_EVERY = 0.005 # seconds
    SKIPPED = 3 # contender.rb's exit status for a skip

    def initialize(case_name, key, params, time_limit:)
      @argv = [RbConfig.ruby, "-I", LIB, SCRIPT, case_name, key, JSON.generate(params)]
      @time_limit = time_limit
    end

    # @return [Sample]
    def run
      Open3.popen3(child_env, *@argv) do |stdin, stdout, stderr, waiter|
        stdin.close
        out = Thread.new { stdout.read }
        err = Thread.new { stderr.read }
        threads_peak, timed_out = watch(waiter)
        interpret(waiter.value, out.value, err.value, threads_peak, timed_out)
      end
    end

    private

    # The backend is passed explicitly by each contender; a RINGSPUN_BACKEND
    # left in the caller's environment must not steer it.
    def child_env
      Child.outside_bundle.merge("RINGSPUN_BACKEND" => nil)
    end

    # Bundler keeps the environment it changed under BUNDLER_ORIG_*, and
    # -rbundler/setup in RUBYOPT would put every child inside the main
    # Gemfile's bundle. A contender is a plain `ruby -I lib` process: it
    # loads Ringspun from LIB and a peer through its own bundle
    # (bench/lib/bench/peers.rb), so the children get the environment from
    # before `bundle exec`.
    # @return [Hash{String=>String,nil}] changes for Process.spawn's env
    def self.outside_bundle
      ENV.each_with_object({}) do |(key, value), env|
        next unless key.start_with?("BUNDLER_ORIG_")

        env[key.delete_prefix("BUNDLER_ORIG_")] = value == "BUNDLER_ENVIRONMENT_PRESERVER_INTENTIONALLY_NIL" ? nil : value
        env[key] = nil
      end
    end

    def watch(waiter)
      deadline = monotonic + @time_limit
      peak = 0
      while waiter.alive?
        peak = [peak, thread_count(waiter.pid)].max
        return [peak, kill(waiter)] if monotonic > deadline

        waiter.join(SAMPLE_EVERY)
      end
      [peak, false]
    end

    def kill(waiter)
      Process.kill(:KILL, waiter.pid)
      waiter.join
      true
    rescue Errno::ESRCH
      true
    end

    def thread_count(pid)
      File.foreach("/proc/#{pid}/status") do |line|
        return Integer(line.split[1]) if line.start_with?("Threads:")
      end
      0
    rescue Errno::ENOENT, Errno::ESRCH
      0
    end

    def interpret(status, out, err, threads_peak, timed_out)
      return failed("timed out after #{@time_limit} s", err) if timed_out

      record = last_json_line(out)
      return Sample.new(status: :skipped, reason: record[:skipped]) if status.exitstatus == SKIPPED && record
      return failed("exit #{status.exitstatus || status.termsig}", err) unless status.success? && record

      measured(record, threads_peak)
    end

    def measured(record, threads_peak)
      Sample.new(
        status: :ok,
        rate: record[:units] / record[:elapsed_s],
        units: record[:units], elapsed_s: record[:elapsed_s], cpu_s: record[:cpu_s], runq_s: record[:runq_s],
        allocated: record[:allocated], gc_runs: record[:gc_runs], rss_peak_kib: record[:rss_peak_kib],
        threads_peak: record[:threads_peak] || [threads_peak, record[:threads_at_end].to_i].max
      )
    end

    # The tail of stderr without backtrace lines: a Ruby error's own line
    # (file:line: message (Class)) comes before its "from" lines.
    def failed(why, err)
      tail = err.to_s.lines.grep_v(/\A\s+from /).last(5).join.strip
      Sample.new(status: :failed, reason: tail.empty? ? why : "#{why}: #{tail}")
    end

    def last_json_line(out)
      line = out.to_s.lines.reverse.find { |l| l.start_with?("{") }
      line && JSON.parse(line, symbolize_names: true)
    rescue JSON::ParserError
      nil
    end

    def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end
