# frozen_string_literal: true

require_relative "child"

module Bench
  # Runs every case's contenders in alternating rounds, each contender in a
  # fresh process. The order rotates from round to round so no contender
  # always runs first (cold caches) or right after the heaviest one.
  class Runner
    # @param fixtures [Fixtures] where the cases' setup makes their input files
    def initialize(cases, mode:, rounds:, time_limit:, fixtures:, log: $stderr)
      @cases = cases
      @mode = mode
      @rounds = rounds
      @time_limit = time_limit
      @fixtures = fixtures
      @log = log
    end

    # @return [Array<CaseResult>]
    def run
      @cases.map { |bench_case| run_case(bench_case) }
    end

    private

    def run_case(bench_case)
      params = bench_case.params(@mode)
      @log.puts("== #{bench_case.name} #{params}")
      given = params.merge(prepare(bench_case, params))
      samples = Hash.new { |h, k| h[k] = [] }
      keys = bench_case.contenders.keys
      @rounds.times do |round|
        keys.rotate(round).each do |key|
          samples[key] << run_one(bench_case, key, given, round)
        end
      end
      CaseResult.new(bench_case, params, keys.to_h { |k| [k, samples[k]] })
    end

    def prepare(bench_case, params)
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      extra = bench_case.prepare(params, @fixtures)
      took = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
      @log.puts(format("  setup %.1f s", took)) if took >= 0.1
      extra
    end

    def run_one(bench_case, key, params, round)
      sample = Child.new(bench_case.name, key, params, time_limit: @time_limit).run
      @log.puts(format("  round %d  %-22s %s", round + 1, key, describe(sample, bench_case.metric)))
      sample
    end

    def describe(sample, metric)
      return "#{sample.status}: #{sample.reason}" unless sample.ok?

      wait = sample.runq_s ? format(", waited %.2f s for a CPU", sample.runq_s) : ""
      format("%12.0f %s  (%.2f s, CPU %.2f s%s, %d threads)", sample.rate, metric, sample.elapsed_s,
             sample.cpu_s, wait, sample.threads_peak)
    end
  end

  # One case's samples, and the figures the report shows.
  class CaseResult
    attr_reader :bench_case, :params, :samples

    def initialize(bench_case, params, samples)
      @bench_case = bench_case
      @params = params
      @samples = samples # contender key => [Sample], one per round
    end

    def reference = @bench_case.reference

    def ok(key) = @samples[key].select(&:ok?)

    def rates(key) = ok(key).map(&:rate)

    # The per-round ratios of key's rate to the reference's, or another
    # contender's (higher is faster); rounds where either failed are left
    # out.
    def ratios(key, against = reference)
      per_round(key, against) { |mine, other| mine.rate / other.rate }
    end

    # The per-round ratios of key's CPU seconds per unit of work to
    # another contender's (lower is leaner).
    def cpu_ratios(key, against)
      per_round(key, against) { |mine, other| (mine.cpu_s / mine.units) / (other.cpu_s / other.units) }
    end

    def failures = @samples.values.flatten.count { |s| s.status == :failed }

    def per_round(key, against)
      @samples[key].zip(@samples[against]).filter_map do |mine, other|
        yield mine, other if mine.ok? && other.ok?
      end
    end

    # @return [String, nil] why the contender has no figures
    def missing_reason(key)
      return nil unless ok(key).empty?

      @samples[key].map(&:reason).compact.first || "no sample"
    end
  end

  # Order statistics for the report.
  module Stats
    module_function

    def median(values)
      return nil if values.empty?

      sorted = values.sort
      mid = sorted.size / 2
      sorted.size.odd? ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2.0
    end
  end
end
