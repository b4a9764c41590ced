# frozen_string_literal: true

require "json"
require "time"
require_relative "machine"
require_relative "runner"

module Bench
  # Everything one run produced, handed to each output ("sink").
  Run = Struct.new(:mode, :rounds, :command, :started_at, :facts, :results, keyword_init: true)

  # One table row: a contender's figures over its rounds.
  class Row
    MIB = 1024.0 * 1024.0
    GIB = MIB * 1024.0

    def initialize(result, key)
      @result = result
      @key = key
      @ok = result.ok(key)
    end

    def key = @key
    def label = @result.bench_case.contenders.fetch(@key).label
    def missing = @result.missing_reason(@key)
    def failed_rounds = @result.samples[@key].count { |s| s.status == :failed }

    def median = Stats.median(@result.rates(@key))
    def min = @result.rates(@key).min
    def max = @result.rates(@key).max
    def ratio = Stats.median(@result.ratios(@key))

    # Medians over rounds of what the timed window cost.
    def cpu_s = Stats.median(@ok.map(&:cpu_s))
    def runq_s = Stats.median(@ok.map(&:runq_s).compact)
    def allocated = Stats.median(@ok.map(&:allocated))

    # Maxima over rounds: a peak is a peak.
    def rss_mib
      kib = @ok.map(&:rss_peak_kib).compact.max
      kib && kib / 1024.0
    end

    def threads = @ok.map(&:threads_peak).compact.max

    def cpu_per_gib = per_byte(:cpu_s, GIB)
    def objects_per_mib = per_byte(:allocated, MIB)

    def to_h
      {
        key: key, label: label, missing: missing, failed_rounds: failed_rounds,
        median: median, min: min, max: max, ratio: ratio, ratios: @result.ratios(@key),
        cpu_s: cpu_s, runq_s: runq_s, allocated: allocated, rss_mib: rss_mib, threads_peak: threads,
        samples: @result.samples[@key].map(&:to_h)
      }
    end

    private

    def per_byte(field, scale)
      bytes = @result.bench_case.bytes_per_unit
      return nil unless bytes

      Stats.median(@ok.map { |s| s[field] / (s.units * bytes / scale) })
    end
  end

  # A target's row: the measured figure against the issue's bound.
  class TargetRow
    attr_reader :target, :result

    def initialize(result, target)
      @result = result
      @target = target
      @mine = Row.new(result, target.contender)
      @other = target.other && Row.new(result, target.other)
    end

    def case_name = @result.bench_case.name
    def contender_label = @mine.label

    # @return [Float, nil] the figure compared with the bound
    def value
      @value ||= case @target.kind
                 when :rate_vs then Stats.median(@result.ratios(@target.contender, @target.other))
                 when :cpu_vs then Stats.median(@result.cpu_ratios(@target.contender, @target.other))
                 when :rss_vs then @mine.rss_mib && @other.rss_mib && @mine.rss_mib / @other.rss_mib
                 when :objects_per_mib then @mine.objects_per_mib
                 end
    end

    # @return [Boolean, nil] nil when there is nothing to judge
    def met = value && @target.met?(value)

    def measured
      return "no data: #{@mine.missing || @other&.missing || 'no round where both ran'}" unless value

      case @target.kind
      when :rate_vs then format("%.2fx (rounds %s)", value, spread(@result.ratios(@target.contender, @target.other)))
      when :cpu_vs
        format("%.2fx (%.3f vs %.3f CPU s/GiB; rounds %s)", value, @mine.cpu_per_gib, @other.cpu_per_gib,
               spread(@result.cpu_ratios(@target.contender, @target.other)))
      when :rss_vs then format("%.2fx (%.0f vs %.0f MiB)", value, @mine.rss_mib, @other.rss_mib)
      when :objects_per_mib then format("%.2f objects/MiB", value)
      end
    end

    def spread(values) = format("%.2f-%.2f", values.min, values.max)

    def verdict
      case met
      when true then "met"
      when false then "**not met**"
      else "not measured"
      end
    end

    def to_h
      { issue: @target.issue, case: case_name, text: @target.text, contender: @target.contender,
        kind: @target.kind, other: @target.other, bound: @target.bound_text, value: value, met: met }
    end
  end

  module Report
    # bench/RESULTS.md: a table per case, the machine facts, the command.
    class Markdown
      attr_reader :path

      def initialize(path)
        @path = path
      end

      def write(run)
        File.write(@path, render(run))
      end

      private

      def render(run)
        parts = [header(run), targets(run.results), machine(run.facts)]
        parts.concat(run.results.map { |result| case_section(result) })
        "#{parts.join("\n")}\n"
      end

      # Every target the issues state, in one table, in case order.
      def targets(results)
        rows = results.flat_map { |result| result.bench_case.targets.map { |t| TargetRow.new(result, t) } }
        return "" if rows.empty?

        head = ["issue", "case", "target", "contender", "measured", "bound", "verdict"]
        lines = [row_line(head), row_line(["---"] * head.size)]
        lines.concat(rows.map do |row|
          t = row.target
          row_line(["##{t.issue}", row.case_name, t.text, row.contender_label, row.measured, t.bound_text, row.verdict])
        end)
        "## Targets\n\nEach target an issue states, measured in this run.\n\n#{lines.join("\n")}\n"
      end

      def header(run)
        <<~MD
          # Ringspun benchmark results

          Written by `#{run.command}` on #{run.started_at.utc.strftime('%Y-%m-%d %H:%M UTC')}
          (#{run.mode} mode, #{run.rounds} rounds); regenerate it with the same command rather than
          editing it.

          How to read it: each contender runs as a fresh Ruby process, and the contenders of a case
          run in alternating rounds, the order rotating each round. Rates are per second of the
          timed window; higher is faster. *ratio* is the median over rounds of the contender's rate
          divided by the reference's rate in the same round. *CPU s* (user + system, the whole
          process) and *objects* (`GC.stat(:total_allocated_objects)`) are medians over rounds of
          the timed window; *peak RSS* (VmHWM) and *peak threads* (sampled from `/proc/PID/status`
          every 5 ms, io_uring kernel workers included) are maxima over rounds of the whole process.
          *CPU wait s* is the median time the process's main thread spent runnable but waiting for
          a CPU in the window (`/proc/self/schedstat`): on a machine that other work keeps busy, it
          is where a single-threaded contender's wall time goes beyond its CPU time (a contender
          with many threads gets a larger share of a contended machine, and the waits of its other
          threads are not in this column). A C reference program reports its own figures.

          The machine is shared: ratios are of contenders run minutes apart at most, but each
          round's ratio still moves with the load, so each target row also gives the range of its
          per-round values.
        MD
      end

      def machine(facts)
        rows = facts.map { |label, value| "| #{label} | #{value} |" }
        "## Machine\n\n| | |\n|---|---|\n#{rows.join("\n")}\n"
      end

      def case_section(result)
        bench_case = result.bench_case
        rows = bench_case.contenders.keys.map { |key| Row.new(result, key) }
        <<~MD
          ## #{bench_case.name}: #{bench_case.title}

          #{bench_case.about.strip}

          Parameters: #{result.params.map { |k, v| "#{k} = #{v}" }.join(', ')}. Reference: #{reference_label(result)}.

          #{table(bench_case, rows)}
          #{case_targets(result)}
        MD
      end

      def case_targets(result)
        lines = result.bench_case.targets.map do |target|
          row = TargetRow.new(result, target)
          "- issue ##{target.issue}: #{target.text} (#{row.contender_label}): #{row.measured}, " \
            "bound #{target.bound_text}: #{row.verdict}"
        end
        lines.empty? ? "" : "\nTargets:\n\n#{lines.join("\n")}\n"
      end

      def reference_label(result)
        result.bench_case.contenders.fetch(result.reference).label
      end

      def table(bench_case, rows)
        per_byte = bench_case.bytes_per_unit
        head = ["contender", "median #{bench_case.metric}", "min", "max", "ratio vs reference",
                "CPU s", "CPU wait s", "peak RSS MiB", "peak threads", "objects"]
        head += ["CPU s/GiB", "objects/MiB"] if per_byte
        lines = [row_line(head), row_line(["---"] + ["---:"] * (head.size - 1))]
        lines.concat(rows.map { |row| row_line(cells(row, per_byte, head.size)) })
        lines.join("\n")
      end

      def cells(row, per_byte, width)
        return [row.label, "#{skipped_or_failed(row)}: #{one_line(row.missing)}"] + [""] * (width - 2) if row.missing

        cells = [label_cell(row), rate(row.median), rate(row.min), rate(row.max), ratio(row.ratio),
                 fixed(row.cpu_s, 2), fixed(row.runq_s, 2), fixed(row.rss_mib, 0), row.threads.to_s,
                 count(row.allocated)]
        cells += [figure(row.cpu_per_gib), figure(row.objects_per_mib)] if per_byte
        cells
      end

      def label_cell(row)
        failed = row.failed_rounds
        failed.zero? ? row.label : "#{row.label} (#{failed} round(s) failed)"
      end

      def skipped_or_failed(row)
        row.failed_rounds.positive? ? "failed" : "skipped"
      end

      def row_line(cells) = "| #{cells.map { |c| one_line(c).gsub('|', '\\|') }.join(' | ')} |"

      # A cell is one line: a failure's stderr tail may hold several.
      def one_line(text) = text.to_s.split("\n").map(&:strip).reject(&:empty?).join(" / ")

      def rate(value)
        return "" unless value

        value >= 100 ? count(value) : format("%.2f", value)
      end

      def ratio(value) = value ? format("%.2fx", value) : ""

      def fixed(value, digits) = value ? format("%.#{digits}f", value) : ""

      # Three significant digits below 100 (0.0734, 1.25, 16.4), else a count.
      def figure(value)
        return "" unless value
        return count(value) if value >= 100
        return "0" if value.zero?

        format("%.#{[2 - Math.log10(value.abs).floor, 0].max}f", value)
      end

      def count(value)
        return "" unless value

        value.round.to_s.reverse.scan(/\d{1,3}/).join(",").reverse
      end
    end

    # The same figures, raw, as JSON for tools (the chart) and comparisons.
    class Json
      attr_reader :path

      def initialize(path)
        @path = path
      end

      def write(run)
        File.write(@path, "#{JSON.pretty_generate(document(run))}\n")
      end

      private

      def document(run)
        {
          command: run.command, mode: run.mode, rounds: run.rounds,
          started_at: run.started_at.utc.iso8601, machine: run.facts.to_h,
          cases: run.results.map { |result| case_document(result) }
        }
      end

      def case_document(result)
        bench_case = result.bench_case
        {
          name: bench_case.name, title: bench_case.title, metric: bench_case.metric,
          reference: result.reference, params: result.params,
          contenders: bench_case.contenders.keys.map { |key| Row.new(result, key).to_h },
          targets: bench_case.targets.map { |target| TargetRow.new(result, target).to_h }
        }
      end
    end
  end
end
