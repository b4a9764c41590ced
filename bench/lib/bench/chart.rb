# frozen_string_literal: true

require "open3"
require_relative "report"

module Bench
  module Report
    # bench/results.png: one panel per case, a horizontal bar per contender
    # for its ratio to the case's reference (the median of per-round
    # ratios, as in the table), a grey line at 1x (the reference) and a red
    # dashed line at each throughput target stated against the reference.
    # Drawn by gnuplot (Debian's gnuplot-nox) from a script written next to
    # the JSON (bench/out/results.gp), which can be rerun by hand.
    class Chart
      COLUMNS = 2
      PANEL_W = 820
      BAR_H = 24
      PANEL_PAD = 90 # title, axis and gap of a panel, in pixels
      HEADER = 90
      LABEL_CHARS = 40
      # Colours by what a contender is, read from its label.
      KINDS = [
        [:reference, "#9e9e9e", "the reference (1x)"],
        [:peer, "#e6862e", "Polyphony, Async"],
        [:ringspun, "#2f6db5", "Ringspun"],
        [:c, "#7b4fa0", "C"],
        [:other, "#4f9a4f", "plain Ruby, threads, others"]
      ].freeze
      # Ringspun's own methods, as contender labels name them.
      RINGSPUN = /Ringspun|IO[.#](double_splice|splice|tee|gzip|gunzip|deflate|inflate|read_loop|feed_loop|
                  msgpack_each|http1_splice_chunked|http1_splice_unchunked)\b|recv_loop/x

      attr_reader :path

      def initialize(path, work_dir:)
        @path = path
        @script = File.join(work_dir, "results.gp")
      end

      def write(run)
        File.write(@script, script(run))
        out, status = Open3.capture2e("gnuplot", @script)
        warn("bench: gnuplot failed, no chart: #{out.strip}") unless status.success?
      rescue Errno::ENOENT
        warn("bench: no gnuplot here (Debian: apt-get install gnuplot-nox), no chart")
      end

      private

      def script(run)
        rows = (run.results.size + COLUMNS - 1) / COLUMNS
        panel_h = PANEL_PAD + BAR_H * [run.results.map { |r| r.bench_case.contenders.size }.max.to_i, 1].max
        height = HEADER + rows * panel_h
        lines = [
          "set terminal pngcairo size #{PANEL_W * COLUMNS},#{height} font 'DejaVu Sans,9' noenhanced",
          "set output #{quote(@path)}",
          "set multiplot",
          header(run, height)
        ]
        run.results.each_with_index do |result, i|
          col = i % COLUMNS
          row = i / COLUMNS
          origin_x = col.fdiv(COLUMNS)
          origin_y = 1.0 - (HEADER + (row + 1) * panel_h).fdiv(height)
          lines << panel(result, origin_x, origin_y, 1.0 / COLUMNS, panel_h.fdiv(height))
        end
        lines << "unset multiplot"
        "#{lines.join("\n")}\n"
      end

      def header(run, height)
        legend = KINDS.map { |_, colour, what| [what, colour] }
        y = 1.0 - 28.0 / height
        labels = [
          "set label 1 #{quote('Ringspun benchmarks: each bar is a contender\'s rate / its case\'s reference rate (median of per-round ratios; higher is faster)')} " \
          "at screen 0.01,#{y} font ',12'",
          "set label 2 #{quote("#{run.command}   (#{run.mode} mode, #{run.rounds} rounds, #{run.started_at.utc.strftime('%Y-%m-%d %H:%M UTC')}); " \
                                'dashed red: a throughput target')} at screen 0.01,#{y - 22.0 / height}"
        ]
        x = 0.01
        legend.each_with_index do |(what, colour), i|
          labels << "set label #{3 + i} #{quote("■ #{what}")} at screen #{x},#{y - 44.0 / height} textcolor rgb #{quote(colour)}"
          x += 0.03 + what.size * 0.0042
        end
        # An empty plot carries the header labels.
        [*labels, "unset border; unset xtics; unset ytics; set margins 0,0,0,0",
         "set origin 0,0; set size 1,1; plot [0:1][0:1] NaN notitle",
         "unset label; set border; set xtics; set ytics"].join("\n")
      end

      def panel(result, x, y, width, height)
        bench_case = result.bench_case
        keys = bench_case.contenders.keys
        rows = keys.map { |key| Row.new(result, key) }
        ratios = rows.map(&:ratio)
        bounds = bench_case.targets.select { |t| t.kind == :rate_vs && t.other == result.reference }.map(&:bound).uniq
        xmax = ([1.0, *ratios.compact, *bounds].max * 1.3).round(2)
        data = rows.each_with_index.map do |row, i|
          colour = colour_of(row, result.reference)
          ratio = row.ratio
          value = ratio ? format("%.2fx", ratio) : (row.failed_rounds.positive? ? "failed" : "skipped")
          "#{i} #{ratio || 0} #{colour} #{quote(" #{value}")}"
        end
        ytics = rows.each_with_index.map { |row, i| "#{quote(short(row.label))} #{i}" }.join(", ")
        arrows = bounds.map do |bound|
          "set arrow from #{bound}, graph 0 to #{bound}, graph 1 nohead dashtype 2 linewidth 1.5 linecolor rgb '#d62728' front"
        end
        <<~GP
          set origin #{x},#{y}
          set size #{width},#{height}
          set lmargin at screen #{x + width * 0.41}
          set rmargin at screen #{x + width * 0.97}
          set tmargin 2.5
          set bmargin 2.5
          set title #{quote("#{bench_case.name}: #{bench_case.title}")} font ',10'
          set yrange [#{keys.size - 0.5}:-0.5]
          set xrange [0:#{xmax}]
          set ytics (#{ytics}) scale 0
          set xtics nomirror
          set grid xtics linecolor rgb '#e0e0e0'
          set style fill solid 0.85 noborder
          unset arrow
          set arrow from 1, graph 0 to 1, graph 1 nohead linewidth 1.5 linecolor rgb '#555555' back
          #{arrows.join("\n")}
          $data#{result.object_id} << EOD
          #{data.join("\n")}
          EOD
          plot $data#{result.object_id} using ($2/2):1:($2/2):(0.36):3 with boxxyerror linecolor rgb variable notitle, \\
               $data#{result.object_id} using 2:1:4 with labels left notitle
        GP
      end

      def colour_of(row, reference)
        kind = if row.key == reference then :reference
               elsif row.label.match?(/Polyphony|\AAsync/) then :peer
               elsif row.label.match?(RINGSPUN) then :ringspun
               elsif row.label.match?(/\AC\b/) then :c
               else :other
               end
        Integer(KINDS.assoc(kind)[1].delete_prefix("#"), 16)
      end

      def short(label)
        label.size > LABEL_CHARS ? "#{label[0, LABEL_CHARS - 1]}…" : label
      end

      def quote(text) = "\"#{text.gsub('\\', '\\\\\\\\').gsub('"', '\\"')}\""
    end
  end
end
