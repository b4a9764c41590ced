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
        cpu_s: cpu_s, allocated: allocated, rss_mib: rss_mib, threads_peak: threads,
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
        parts = [header(run), machine(run.facts)]
        parts.concat(run.results.map { |result| case_section(result) })
        "#{parts.join("\n")}\n"
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
        MD
      end

      def reference_label(result)
        result.bench_case.contenders.fetch(result.reference).label
      end

      def table(bench_case, rows)
        per_byte = bench_case.bytes_per_unit
        head = ["contender", "median #{bench_case.metric}", "min", "max", "ratio vs reference",
                "CPU s", "peak RSS MiB", "peak threads", "objects"]
        head += ["CPU s/GiB", "objects/MiB"] if per_byte
        lines = [row_line(head), row_line(["---"] + ["---:"] * (head.size - 1))]
        lines.concat(rows.map { |row| row_line(cells(row, per_byte, head.size)) })
        lines.join("\n")
      end

      def cells(row, per_byte, width)
        return [row.label, "#{skipped_or_failed(row)}: #{row.missing}"] + [""] * (width - 2) if row.missing

        cells = [label_cell(row), rate(row.median), rate(row.min), rate(row.max), ratio(row.ratio),
                 fixed(row.cpu_s, 2), fixed(row.rss_mib, 0), row.threads.to_s, count(row.allocated)]
        cells += [fixed(row.cpu_per_gib, 1), count(row.objects_per_mib)] if per_byte
        cells
      end

      def label_cell(row)
        failed = row.failed_rounds
        failed.zero? ? row.label : "#{row.label} (#{failed} round(s) failed)"
      end

      def skipped_or_failed(row)
        row.failed_rounds.positive? ? "failed" : "skipped"
      end

      def row_line(cells) = "| #{cells.map { |c| c.to_s.gsub('|', '\\|') }.join(' | ')} |"

      def rate(value)
        return "" unless value

        value >= 100 ? count(value) : format("%.2f", value)
      end

      def ratio(value) = value ? format("%.2fx", value) : ""

      def fixed(value, digits) = value ? format("%.#{digits}f", value) : ""

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
          contenders: bench_case.contenders.keys.map { |key| Row.new(result, key).to_h }
        }
      end
    end
  end
end
