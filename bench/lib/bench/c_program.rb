# frozen_string_literal: true

require "fileutils"
require "open3"

module Bench
  # The small C programs under bench/c/: built with the system compiler
  # (CC, else cc) into bench/out/bin/ the first time a contender needs one,
  # and again whenever the source is newer than the binary.
  #
  #   bin = Bench::CProgram.build("msgpack_unpack", pkg: "msgpack")
  #   figures = Bench::CProgram.figures(output)   # "units=10 cpu_s=0.5" => { units: 10, cpu_s: 0.5 }
  #
  # A program that measures the job itself prints one line of key=value
  # pairs last; {.adopt} makes its figures (CPU seconds, peak RSS) the
  # contender's, because the Ruby process that ran it only waited.
  module CProgram
    SOURCE_DIR = File.expand_path("../../c", __dir__)
    BIN_DIR = File.expand_path("../../out/bin", __dir__)
    CFLAGS = %w[-O2 -g -Wall -Wextra -std=gnu11].freeze

    module_function

    # @param name [String] bench/c/NAME.c
    # @param pkg [String, nil] a pkg-config package to compile and link with
    # @return [String] the binary's path
    # @raise [Skip] when there is no compiler or no such package here
    def build(name, pkg: nil)
      source = File.join(SOURCE_DIR, "#{name}.c")
      binary = File.join(BIN_DIR, name)
      return binary if File.exist?(binary) && File.mtime(binary) >= File.mtime(source)

      FileUtils.mkdir_p(BIN_DIR)
      partial = "#{binary}.#{Process.pid}.tmp" # renamed into place: never half a binary
      out, status = run_compiler([compiler, *CFLAGS, "-o", partial, source, *pkg_flags(pkg)])
      raise "#{compiler} failed on #{source}:\n#{out}" unless status.success?

      File.rename(partial, binary)
      binary
    end

    # @return [Hash{Symbol=>Numeric}] the key=value pairs of the last such line
    def figures(output)
      line = output.to_s.lines.reverse.find { |l| l.include?("=") } or raise "no figures in #{output.inspect}"
      line.split.to_h do |pair|
        key, value = pair.split("=", 2)
        [key.to_sym, value.include?(".") ? Float(value) : Integer(value)]
      end
    end

    # Reports a C program's own figures as the contender's: its CPU seconds
    # are added to the (waiting) Ruby process's, and its peak RSS replaces
    # the Ruby process's.
    # @param meter [Meter]
    # @param own [Hash] with :cpu_s and :maxrss_kib, from {.figures}
    def adopt(meter, own)
      meter.define_singleton_method(:result) do
        mine = super()
        mine.merge(cpu_s: mine[:cpu_s] + own.fetch(:cpu_s), rss_peak_kib: own.fetch(:maxrss_kib))
      end
    end

    def compiler = ENV.fetch("CC", "cc")

    def pkg_flags(pkg)
      return [] unless pkg

      out, status = Open3.capture2e("pkg-config", "--cflags", "--libs", pkg)
      raise Skip, "pkg-config has no #{pkg} here (#{out.strip})" unless status.success?

      out.split
    rescue Errno::ENOENT
      raise Skip, "no pkg-config here"
    end

    def run_compiler(argv)
      Open3.capture2e(*argv)
    rescue Errno::ENOENT
      raise Skip, "no C compiler (#{compiler}) here"
    end
  end
end
