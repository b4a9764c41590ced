# frozen_string_literal: true

# Builds and runs the libFuzzer harnesses, replays the saved regressions and
# runs the differential check: what `rake fuzz:quick`, `rake fuzz` and
# test/test_fuzz.rb do.
#
#   ruby -Ilib fuzz/runner.rb quick   each harness 20 s (FUZZ_SECONDS), 8,000 mutations
#   ruby -Ilib fuzz/runner.rb full    each harness FUZZ_SECONDS (300), 40,000 mutations
#
# Environment: FUZZ_SECONDS, FUZZ_MUTATIONS, FUZZ_SEED (the differential's),
# FUZZ_ALLOW (open findings to look past, see fuzz/README.md), FUZZ_CC (the
# clang to build with), FUZZ_ONLY=gunzip,chunked (a subset of harnesses).
#
# Everything it writes goes under tmp/fuzz/: bin/ (harnesses), seeds/ (made
# afresh each run), corpus/ (what libFuzzer keeps, grown run after run),
# findings/ (crash, leak, timeout and out-of-memory inputs), logs/.

require "digest"
require "fileutils"
require "open3"
require "rbconfig"
require "shellwords"
require_relative "seeds"
require_relative "differential"

module RingspunFuzz
  module Runner
    ROOT = File.expand_path("..", __dir__)
    EXT = File.join(ROOT, "ext", "ringspun")
    CORE = File.join(EXT, "core") # the codec cores: no Ruby objects, linked alone
    FUZZ = File.join(ROOT, "fuzz")
    OUT = File.join(ROOT, "tmp", "fuzz")

    # Each harness: the C it links from ext/ringspun/core/, what else it needs, and the
    # largest input libFuzzer makes (room for the seeds that matter: 64 KiB
    # gzip headers, 8 KiB chunk-extension lines, 64 KiB strings).
    HARNESSES = {
      "gunzip" => { sources: %w[zcore.c], libs: %w[-lz], max_len: 131_072 },
      "chunked" => { sources: %w[http1.c], libs: [], max_len: 16_384 },
      "msgpack" => { sources: %w[msgpack_gate.c], pkg: "msgpack", max_len: 65_536 }
    }.freeze

    CFLAGS = %w[-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
                -fno-sanitize-recover=undefined -Wall -Wextra].freeze

    # Per input: longer is a hang. Past the allocation limit, an input that
    # makes a decoder ask for that much memory is a finding.
    TIMEOUT = 10
    RSS_LIMIT_MB = 2048
    MALLOC_LIMIT_MB = 512

    Result = Struct.new(:name, :execs, :seconds, :finding, :log, keyword_init: true)

    # Tools run without the test process's sanitizer runtime: a sanitizer
    # build of the extension preloads GCC's ASan, which clang must not get.
    TOOL_ENV = { "LD_PRELOAD" => nil, "ASAN_OPTIONS" => nil, "UBSAN_OPTIONS" => nil }.freeze

    def self.allowed?(id) = Differential.allowed?(id)

    def self.harness_names
      only = ENV.fetch("FUZZ_ONLY", "").split(",").map(&:strip)
      only.empty? ? HARNESSES.keys : HARNESSES.keys & only
    end

    # ---- the compiler -----------------------------------------------------------------

    # The clang that can build a libFuzzer target, or nil; the reason is in
    # .compiler_error.
    def self.compiler
      return @compiler if defined?(@compiler)

      candidates = ENV["FUZZ_CC"] ? [ENV["FUZZ_CC"]] : %w[clang-14 clang]
      dir = File.join(OUT, "probe")
      FileUtils.mkdir_p(dir)
      src = File.join(dir, "probe.c")
      File.write(src, "#include <stddef.h>\n#include <stdint.h>\n" \
                      "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n")
      errors = []
      @compiler = candidates.find do |cc|
        out, status = Open3.capture2e(TOOL_ENV, cc, "-fsanitize=fuzzer,address,undefined", src, "-o",
                                      File.join(dir, "probe"))
        errors << "#{cc}: #{out.lines.last&.strip || 'failed'}" unless status.success?
        status.success?
      rescue SystemCallError => e
        errors << "#{cc}: #{e.message}"
        false
      end
      @compiler_error = "no clang with libFuzzer (tried #{errors.join('; ')}); bin/setup installs clang and libclang-rt-14-dev" unless @compiler
      @compiler
    end

    def self.compiler_error
      compiler
      @compiler_error
    end

    def self.pkg_flags(pkg)
      out, status = Open3.capture2e(TOOL_ENV, "pkg-config", "--cflags", "--libs", pkg)
      raise "pkg-config #{pkg}: #{out.strip}" unless status.success?

      Shellwords.split(out)
    end

    # ---- building -----------------------------------------------------------------------

    # Builds the harness unless it is up to date with its sources, the
    # headers and the flags; returns the executable's path.
    def self.build(name)
      spec = HARNESSES.fetch(name)
      cc = compiler or raise compiler_error
      sources = [File.join(FUZZ, "#{name}_fuzz.c")] + spec[:sources].map { |s| File.join(CORE, s) }
      extra = spec[:pkg] ? pkg_flags(spec[:pkg]) : spec[:libs]
      args = [*CFLAGS, "-I#{CORE}", "-I#{FUZZ}", *sources, *extra]
      inputs = sources + Dir[File.join(CORE, "*.h")] + [File.join(FUZZ, "fuzz_input.h")]
      stamp_text = ([cc] + args + inputs.sort.map { |f| Digest::SHA256.file(f).hexdigest }).join("\n")
      bin_dir = File.join(OUT, "bin")
      exe = File.join(bin_dir, "#{name}_fuzz")
      stamp = "#{exe}.stamp"
      return exe if File.exist?(exe) && File.exist?(stamp) && File.read(stamp) == stamp_text

      FileUtils.mkdir_p(bin_dir)
      out, status = Open3.capture2e(TOOL_ENV, cc, *args, "-o", exe)
      raise "building #{name}_fuzz failed:\n#{out}" unless status.success?

      File.write(stamp, stamp_text)
      exe
    end

    # ---- running --------------------------------------------------------------------------

    # The harnesses' environment: their own sanitizer runtime (none of the
    # test process's LD_PRELOAD), leak detection on, and UBSan stack traces.
    # With msgpack-huge-alloc allowed, an allocation past the limit fails
    # (returns NULL, as malloc may) instead of being a finding.
    def self.harness_env
      asan = %w[detect_leaks=1]
      asan += %W[allocator_may_return_null=1 max_allocation_size_mb=#{MALLOC_LIMIT_MB}] if allowed?("msgpack-huge-alloc")
      TOOL_ENV.merge("ASAN_OPTIONS" => asan.join(":"), "UBSAN_OPTIONS" => "print_stacktrace=1")
    end

    # Runs a command with a wall-clock limit; returns [output, exit status].
    # The child is the only process ended, by its pid.
    def self.capture(env, cmd, limit:, log:)
      FileUtils.mkdir_p(File.dirname(log))
      pid = File.open(log, "w") { |f| Process.spawn(env, *cmd, out: f, err: f) }
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + limit
      status = nil
      loop do
        _, status = Process.wait2(pid, Process::WNOHANG)
        break if status
        if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
          Process.kill("KILL", pid)
          _, status = Process.wait2(pid)
          File.open(log, "a") { |f| f.puts "\nrunner: killed after #{limit} s" }
          break
        end
        sleep 0.2
      end
      [File.read(log), status]
    end

    # The part of a libFuzzer log that says what was found: from the first
    # report line on, with the stack frames outside our code and libFuzzer's
    # own notes left out.
    def self.finding_text(log)
      lines = log.lines
      start = lines.index { |l| l =~ /^(FINDING|==\d+==\s*ERROR|.*runtime error:|.*Sanitizer:)/ } || [lines.size - 30, 0].max
      noise = /\A(\s*$|NOTE:|\s+Combine|\s+To change|MS: |base unit:|0x|\\|artifact_prefix|Base64:|stat::|==\d+==ABORTING)/
      kept = lines[start..].select do |l|
        next false if l =~ noise
        l !~ /^\s+#\d+ / || l =~ %r{fuzz/\w+_fuzz\.c|ext/ringspun/|libmsgpackc|libz\.so}
      end
      kept.first(25).map { |l| "  #{l}" }.join
    end

    def self.fuzz(name, seconds)
      exe = build(name)
      spec = HARNESSES.fetch(name)
      corpus = File.join(OUT, "corpus", name)
      seeds = File.join(OUT, "seeds", name)
      findings = File.join(OUT, "findings", name)
      FileUtils.mkdir_p([corpus, findings])
      cmd = [exe, "-max_total_time=#{seconds}", "-timeout=#{TIMEOUT}", "-rss_limit_mb=#{RSS_LIMIT_MB}",
             "-malloc_limit_mb=#{MALLOC_LIMIT_MB}", "-max_len=#{spec[:max_len]}", "-print_final_stats=1",
             "-artifact_prefix=#{findings}/", corpus, seeds]
      log_path = File.join(OUT, "logs", "#{name}.log")
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      log, status = capture(harness_env, cmd, limit: seconds + 300, log: log_path)
      elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
      execs = log[/stat::number_of_executed_units:\s*(\d+)/, 1]&.to_i || log.scan(/^#(\d+)\s/).flatten.last.to_i
      finding = nil
      unless status.success?
        artifact = log[/Test unit written to (\S+)/, 1]
        finding = "#{finding_text(log)}\n  input: #{artifact || '(none written)'}\n  log: #{log_path}"
      end
      Result.new(name: name, execs: execs, seconds: elapsed, finding: finding, log: log_path)
    end

    # Runs each saved crash input once; returns the failures as text.
    def self.replay(name)
      files = Dir[File.join(FUZZ, "regressions", name, "*")].select { |f| File.file?(f) }.sort
      return [0, []] if files.empty?

      exe = build(name)
      failures = files.filter_map do |file|
        log, status = capture(harness_env, [exe, "-timeout=#{TIMEOUT}", "-rss_limit_mb=#{RSS_LIMIT_MB}",
                                            "-malloc_limit_mb=#{MALLOC_LIMIT_MB}", file],
                              limit: 120, log: File.join(OUT, "logs", "replay-#{name}-#{File.basename(file)}.log"))
        next if status.success?

        "regression #{file.delete_prefix("#{ROOT}/")} still fails:\n#{finding_text(log)}"
      end
      [files.size, failures]
    end

    def self.group(n)
      n.to_s.reverse.scan(/\d{1,3}/).join(",").reverse
    end

    # Seeds made afresh by our encoders, regressions replayed, then every
    # harness for `seconds`. Prints as it goes; returns the Results and the
    # problems (short texts, empty when nothing was found).
    def self.fuzz_all(seconds:, out: $stdout)
      problems = []
      counts = Seeds.write(File.join(OUT, "seeds"))
      out.puts "seeds: #{counts.map { |h, n| "#{h} #{n}" }.join(', ')} (tmp/fuzz/seeds)"
      allow = ENV.fetch("FUZZ_ALLOW", "")
      out.puts "FUZZ_ALLOW=#{allow}: these open findings are looked past" unless allow.empty?
      harness_names.each do |name|
        n, failures = replay(name)
        out.puts "regressions #{name}: #{n} replayed, #{failures.size} failing"
        failures.each { |f| out.puts f }
        problems << "#{name}: #{failures.size} regression(s) failing" unless failures.empty?
      end
      results = harness_names.map do |name|
        r = fuzz(name, seconds)
        verdict = r.finding ? "FINDING" : "no finding"
        out.puts format("fuzz %-8s %13s executions in %4.0f s: %s", name, group(r.execs), r.seconds, verdict)
        if r.finding
          out.puts r.finding
          problems << "#{name}: finding"
        end
        r
      end
      [results, problems]
    end

    # The differential check; returns its per-family counts and the problems.
    def self.differential(mutations:, seed: 1, out: $stdout)
      diff = Differential.run(mutations: mutations, seed: seed, out: out)
      problems = diff.filter_map { |family, (_, bad)| "differential #{family}: #{bad} disagreements" if bad.positive? }
      [diff, problems]
    end

    # The whole run: fuzz_all, then the differential check with `mutations`,
    # then a summary. Returns true when nothing was found.
    def self.run(seconds:, mutations:, seed: 1, out: $stdout)
      results, problems = fuzz_all(seconds: seconds, out: out)
      diff, more = differential(mutations: mutations, seed: seed, out: out)
      problems += more
      summary(results, diff, problems, out)
      problems.empty?
    end

    def self.summary(results, diff, problems, out)
      out.puts "---"
      results.each do |r|
        out.puts format("%-8s %13s executions, %s", r.name, group(r.execs), r.finding ? "a finding" : "no finding")
      end
      inputs = diff.values.sum(&:first)
      bad = diff.values.sum(&:last)
      out.puts "differential: #{group(inputs)} inputs, #{bad.zero? ? 'no disagreement' : "#{bad} disagreements"}"
      out.puts problems.empty? ? "RESULT: no finding" : "RESULT: #{problems.size} problem(s): #{problems.join('; ')}"
    end
  end
end

if $PROGRAM_NAME == __FILE__
  $LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
  require "ringspun"
  mode = ARGV.fetch(0, "quick")
  abort "usage: ruby fuzz/runner.rb quick|full" unless %w[quick full].include?(mode)
  seconds = Integer(ENV.fetch("FUZZ_SECONDS", mode == "quick" ? "20" : "300"))
  mutations = Integer(ENV.fetch("FUZZ_MUTATIONS", mode == "quick" ? "8000" : "40000"))
  seed = Integer(ENV.fetch("FUZZ_SEED", "1"))
  unless RingspunFuzz::Runner.compiler
    warn "fuzz: #{RingspunFuzz::Runner.compiler_error}"
    exit 1
  end
  $stdout.sync = true
  ok = RingspunFuzz::Runner.run(seconds: seconds, mutations: mutations, seed: seed)
  exit(ok ? 0 : 1)
end
