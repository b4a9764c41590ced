# frozen_string_literal: true

# Ringspun's benchmark suite: runs every case under bench/cases/ and writes
# bench/RESULTS.md (the table the README quotes), bench/results.png (the
# ratios as a chart, drawn by gnuplot) and bench/out/results.json.
#
#   ruby bench/run.rb                  # every case, quick sizes, 5 rounds
#   BENCH=full ruby bench/run.rb       # full sizes
#   ruby bench/run.rb echo_1000        # some cases only: written under bench/out/
#   ROUNDS=7 ruby bench/run.rb         # more rounds
#   BENCH_LIB=/other/lib ruby bench/run.rb   # measure another build of lib/
#
# `rake bench` runs it after compiling. A case is one file under bench/cases/
# (see bench/lib/bench/case.rb); each of its contenders runs as a fresh
# process (bench/contender.rb). First the peers' bundle (bench/peers/Gemfile)
# is installed, or found, in bench/peers/vendor/ (bench/lib/bench/peers.rb);
# input files are generated into a temporary directory for the run
# (bench/lib/bench/fixtures.rb).

$LOAD_PATH.unshift(File.expand_path("lib", __dir__))
require "fileutils"
require "bench/case"
require "bench/fixtures"
require "bench/peers"
require "bench/runner"
require "bench/report"
require "bench/chart"

module Bench
  # The command line: settings from the environment, cases from ARGV.
  class Suite
    DIR = __dir__
    OUT_DIR = File.join(DIR, "out")
    MODES = %w[quick full].freeze
    MIN_ROUNDS = 5
    TIME_LIMIT = { "quick" => 120, "full" => 900 }.freeze # seconds per contender process

    def initialize(argv, env)
      @only = argv
      @env = env
      @mode = pick_mode
      @rounds = pick_rounds
    end

    # @return [Integer] the exit status: 0 when no contender process failed
    def run
      started = Time.now
      facts = Machine.facts
      cases = Bench.load_cases(@only)
      require_relative "targets"
      facts << ["peers (bench/peers/#{File.basename(Peers::GEMFILE)})", Peers.summary(Peers.install)]
      load_at_start = Machine.load_average
      results = Fixtures.open do |fixtures|
        Runner.new(cases, mode: @mode, rounds: @rounds, time_limit: TIME_LIMIT.fetch(@mode), fixtures: fixtures).run
      end
      facts << ["load average (1 min) at start, end", "#{load_at_start}, #{Machine.load_average}"]
      record = Run.new(mode: @mode, rounds: @rounds, command: command, started_at: started,
                       facts: facts, results: results)
      FileUtils.mkdir_p(OUT_DIR)
      sinks.each { |sink| sink.write(record) }
      finish(results, started)
    end

    private

    def pick_mode
      value = @env.fetch("BENCH", "")
      value = "quick" if value.empty?
      abort "BENCH must be one of #{MODES.join(', ')}, not #{value}" unless MODES.include?(value)
      value
    end

    def pick_rounds
      value = Integer(@env.fetch("ROUNDS", MIN_ROUNDS.to_s))
      abort "ROUNDS must be at least 1" if value < 1
      warn "ROUNDS=#{value}: fewer than #{MIN_ROUNDS} rounds; fine for a try, not for the README" if value < MIN_ROUNDS
      value
    end

    # How the results say they were made; `rake bench` passes its own words.
    def command
      @env.fetch("BENCH_COMMAND") { ["BENCH=#{@mode}", "ruby bench/run.rb", *@only].join(" ") }
    end

    # Every output of a run. The committed table and chart are written only
    # when every case ran; a run of some cases writes them under bench/out/.
    def sinks
      @sinks ||= begin
        dir = @only.empty? ? DIR : OUT_DIR
        [Report::Markdown.new(File.join(dir, "RESULTS.md")), Report::Json.new(File.join(OUT_DIR, "results.json")),
         Report::Chart.new(File.join(dir, "results.png"), work_dir: OUT_DIR)]
      end
    end

    def finish(results, started)
      failures = results.sum(&:failures)
      warn format("bench: %<cases>d case(s) in %<secs>.0f s, %<failed>d failed process(es); wrote %<paths>s",
                  cases: results.size, secs: Time.now - started, failed: failures,
                  paths: sinks.map(&:path).join(", "))
      failures.zero? ? 0 : 1
    end
  end
end

exit Bench::Suite.new(ARGV, ENV).run
