# frozen_string_literal: true

require "etc"
require "rbconfig"
require "open3"

module Bench
  # Facts about the machine and the code measured, for the report: figures
  # are only comparable with these beside them.
  module Machine
    ROOT = File.expand_path("../../..", __dir__)

    module_function

    # Taken when the run starts, so the commit is the one measured even if
    # the checkout moves on meanwhile.
    # @return [Array<Array(String, String)>] label, value
    def facts
      [
        ["nproc", Etc.nprocessors.to_s],
        ["CPU", cpu_model],
        ["memory", memory],
        ["kernel", File.read("/proc/sys/kernel/osrelease").strip],
        ["ruby -v", RUBY_DESCRIPTION],
        ["liburing", command("pkg-config", "--modversion", "liburing")],
        ["code", code_version]
      ]
    end

    # Other work on the machine skews every figure; the report says how busy it was.
    def load_average
      File.read("/proc/loadavg").split.first
    end

    def cpu_model
      line = File.foreach("/proc/cpuinfo").find { |l| l.start_with?("model name") }
      line ? line.split(":", 2).last.strip : "unknown"
    end

    def memory
      kib = File.foreach("/proc/meminfo").find { |l| l.start_with?("MemTotal:") }.split[1].to_i
      format("%.1f GiB", kib / 1024.0 / 1024.0)
    end

    # The commit, and whether the runtime (ext/, lib/) differs from it or
    # the compiled extension is older than its sources. With BENCH_LIB the
    # checkout's runtime is not what ran: BENCH_LABEL says what did.
    def code_version
      commit = command("git", "-C", ROOT, "rev-parse", "--short", "HEAD")
      label = ENV["BENCH_LABEL"]
      if ENV["BENCH_LIB"]
        return "Ringspun from BENCH_LIB=#{ENV['BENCH_LIB']}#{label ? ": #{label}" : ''} (checkout at #{commit})"
      end

      notes = checkout_notes
      notes << label if label
      notes.empty? ? "commit #{commit}" : "commit #{commit} (#{notes.join('; ')})"
    end

    def checkout_notes
      notes = []
      notes << "ext/ or lib/ modified since" unless runtime_clean?
      notes << "lib/ringspun/#{RbConfig::CONFIG['ruby_version']}/ringspun.so older than ext/ sources" if stale_extension?
      notes
    end

    def runtime_clean?
      _, status = Open3.capture2e("git", "-C", ROOT, "diff", "--quiet", "HEAD", "--", "ext", "lib")
      status.success?
    end

    def stale_extension?
      so = File.join(ROOT, "lib/ringspun", RbConfig::CONFIG["ruby_version"], "ringspun.#{RbConfig::CONFIG['DLEXT']}")
      return true unless File.exist?(so)

      newest = Dir[File.join(ROOT, "ext/ringspun/**/*.{c,h}")].map { |f| File.mtime(f) }.max
      newest && newest > File.mtime(so)
    end

    def command(*argv)
      out, status = Open3.capture2e(*argv)
      status.success? ? out.strip : "unknown"
    rescue SystemCallError
      "unknown"
    end
  end
end
