# frozen_string_literal: true

# Runs Ruby's own Fiber::Scheduler tests (test/fiber of Ruby's sources, which
# bin/ruby34 keeps in its cache) with Ringspun::Scheduler in place of their
# reference scheduler, and with the reference itself as the baseline. `rake
# test:fiber` runs it on each Ruby with that Ruby's own tests.
#
#   ruby test/ruby_fiber/run.rb --tests DIR [--modes reference,io_uring,epoll]   (or RINGSPUN_FIBER_MODES)
#        [--exclude 'TestClass#test_name=reason']... [--timeout SECONDS]
#        [--only REGEXP] [--log-dir DIR]
#
# DIR holds test/fiber, test/lib and tool/lib of one Ruby's sources; run it
# with that Ruby. Modes: `reference` is Ruby's scheduler.rb as it is;
# `io_uring` and `epoll` load test/ruby_fiber/shim.rb (Ringspun in the
# reference's place) with RINGSPUN_BACKEND set. Each test file runs in its
# own process with Ruby's test framework (tool/lib/test/unit, as `make
# test-all` uses), which reports each test's start and result to this
# process. A test with no result after --timeout seconds (default 30) is
# reported as hung: its process gets SIGUSR1 (it prints every thread's
# backtrace, if its Ruby can still run), then SIGKILL with its process group,
# and the file goes on in a new process without it. A process that dies in a
# test is reported the same way.
#
# Excluded tests (tests of the reference scheduler's internals) run only with
# the reference. Exit status 1 when a test that passes with the reference does
# not pass with Ringspun on some backend; tests failing with the reference too
# are listed but do not count. The full output of every process goes to
# --log-dir (default tmp/ruby_fiber/<ruby version>/<mode>.log).

require "fileutils"
require "io/wait"
require "optparse"
require "rbconfig"

module RubyFiberTests
  ROOT = File.expand_path("../..", __dir__)
  SHIM = File.join(__dir__, "shim.rb")
  PROGRESS_FD = 3 # where a child reports, line by line

  # ---- the child: one test file under Ruby's test/unit ----------------------------

  module Child
    module_function

    def main(file)
      progress = IO.new(Integer(ENV.fetch("RINGSPUN_FIBER_PROGRESS_FD")), "w")
      progress.sync = true
      progress.close_on_exec = true # not into processes the tests start
      @progress = progress

      # The parent sends SIGUSR1 to a test that overran: say where every thread is.
      trap(:USR1) do
        dump = Thread.list.map { |t| "#{t.inspect}\n    #{(t.backtrace || []).first(30).join("\n    ")}" }
        emit(:trace, "-", dump.join("\n"))
      end

      tests_dir = File.expand_path("../..", File.dirname(file)) # test/fiber/x.rb -> DIR
      $LOAD_PATH.unshift(File.join(tests_dir, "tool", "lib"))
      Warning[:experimental] = false
      # What `make test-all` loads around the tests (tool/test/runner.rb).
      require "test/unit"
      %w[tracepointchecker zombie_hunter iseq_loader_checker gc_checker].each { |lib| require lib }
      Test::Unit::TestCase.prepend(ReportStart)
      Test::Unit::Runner.prepend(ReportResult)

      require file
      drop_tests
      ARGV.replace(["-v", "--test-order=sorted"])
      # Test::Unit's at_exit runs the tests.
    end

    def emit(kind, name, *fields)
      @progress.write([kind, name, *fields.map { |f| f.to_s.dump }].join("\t") + "\n")
    rescue IOError, SystemCallError
      nil
    end

    # Removes the tests the parent names in RINGSPUN_FIBER_SKIP (tab-separated
    # Class#method: excluded, or already run by an earlier process for this
    # file), and those not matching RINGSPUN_FIBER_ONLY.
    def drop_tests
      skip = ENV.fetch("RINGSPUN_FIBER_SKIP", "").split("\t").to_h { |name| [name, true] }
      only = ENV["RINGSPUN_FIBER_ONLY"].to_s.empty? ? nil : Regexp.new(ENV["RINGSPUN_FIBER_ONLY"])
      ObjectSpace.each_object(Class).select { |klass| klass < Test::Unit::TestCase && klass.name }.each do |klass|
        klass.public_instance_methods(true).grep(/\Atest/).each do |method|
          name = "#{klass.name}##{method}"
          next unless skip[name] || (only && !only.match?(name))

          klass.instance_methods(false).include?(method) ? klass.send(:remove_method, method) : klass.send(:undef_method, method)
        end
      end
    end

    # Each test's start and end.
    module ReportStart
      def run(runner)
        name = "#{self.class.name}##{__name__}"
        Child.emit(:start, name)
        result = super
        Child.emit(:end, name)
        result
      end
    end

    # Each result Ruby's runner records (more than one for a test whose
    # teardown fails too).
    module ReportResult
      def record(suite, method, _assertions, _time, error, *)
        name = "#{suite.name}##{method}"
        case error
        when nil then Child.emit(:result, name, "pass")
        when Test::Unit::PendedError then Child.emit(:result, name, "skip", Child.describe(error))
        when Test::Unit::AssertionFailedError then Child.emit(:result, name, "fail", Child.describe(error))
        else Child.emit(:result, name, "error", Child.describe(error))
        end
        super
      end
    end

    # "Class: the message's first lines (file:line)", where file:line is the
    # deepest frame in a test/fiber file.
    def describe(error)
      lines = error.message.to_s.lines.map(&:strip).reject(&:empty?)
      message = lines.first(3).join(" | ")
      message = "#{message[0, 400]}..." if message.size > 400
      frame = (error.backtrace || []).find { |l| l.include?("/test/fiber/") } || (error.backtrace || []).first
      where = frame ? " (#{frame.sub(%r{\A.*/test/fiber/}, '')[/\A[^:]+:\d+/]})" : ""
      "#{error.class}: #{message}#{where}"
    end
  end

  # ---- the parent: every file in every mode, watched -------------------------------

  Result = Struct.new(:status, :detail)

  # Worse results win when a runner reports a test twice.
  RANK = { "pass" => 0, "skip" => 1, "fail" => 2, "error" => 3, "hung" => 4, "crashed" => 4 }.freeze

  class Parent
    def initialize(argv)
      @modes = ENV.fetch("RINGSPUN_FIBER_MODES", "reference,io_uring,epoll").split(",")
      @excluded = {}
      @timeout = Float(ENV.fetch("RINGSPUN_FIBER_TEST_TIMEOUT", "30"))
      @only = ENV["RINGSPUN_FIBER_ONLY"]
      @log_dir = nil
      OptionParser.new do |o|
        o.on("--tests DIR") { |d| @tests = File.expand_path(d) }
        o.on("--modes LIST") { |l| @modes = l.split(",") }
        o.on("--exclude NAME_REASON") do |e|
          name, reason = e.split("=", 2)
          @excluded[name] = reason.to_s
        end
        o.on("--timeout SECONDS", Float) { |s| @timeout = s }
        o.on("--only REGEXP") { |r| @only = r }
        o.on("--log-dir DIR") { |d| @log_dir = File.expand_path(d) }
      end.parse!(argv)
      abort "run.rb: --tests DIR is required" unless @tests
      @fiber_dir = File.join(@tests, "test", "fiber")
      @reference = File.join(@fiber_dir, "scheduler.rb")
      abort "run.rb: no #{@reference}; run bin/ruby34" unless File.file?(@reference)
      unknown = @modes - %w[reference io_uring epoll]
      abort "run.rb: unknown mode #{unknown.join(', ')}" unless unknown.empty?
      @log_dir ||= File.join(ROOT, "tmp", "ruby_fiber", RUBY_VERSION)
      @files = Dir[File.join(@fiber_dir, "test_*.rb")].sort
    end

    def main
      puts "Ruby's test/fiber: #{@files.size} files from #{@fiber_dir}, on #{RUBY_DESCRIPTION}"
      results = {}
      times = {}
      @modes.each do |mode|
        started = now
        results[mode] = run_mode(mode)
        times[mode] = now - started
        puts "  #{mode.ljust(9)} #{counts(results[mode])} (#{format('%.1f', times[mode])} s)"
      end
      report(results)
    end

    private

    def now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    def counts(results)
      tally = results.values.map(&:status).tally
      words = %w[pass fail error hung crashed skip].filter_map do |status|
        n = tally.fetch(status, 0)
        label = { "pass" => "passed", "fail" => "failed", "error" => "errors", "skip" => "skipped" }.fetch(status, status)
        "#{n} #{label}" if n.positive? || %w[pass fail].include?(status)
      end
      "#{results.size} tests: #{words.join(', ')}"
    end

    # Environment of a mode's processes: no bundler (Ruby's tests need no gem,
    # and assert_separately starts Rubies with --disable=gems), and for
    # Ringspun the shim through RUBYOPT so that the Rubies the tests start get it too.
    def mode_env(mode)
      env = ENV.to_h.reject { |key, _| key.start_with?("BUNDLE_", "BUNDLER_") || %w[RUBYOPT RUBYLIB].include?(key) }
      env.delete("RINGSPUN_FIBER_ONLY")
      env["RINGSPUN_FIBER_ONLY"] = @only if @only
      return env if mode == "reference"

      lib = File.join(ROOT, "lib")
      [lib, SHIM].each { |path| abort "run.rb: #{path} has a space; RUBYOPT cannot carry it" if path.match?(/\s/) }
      env.merge("RUBYOPT" => "-I#{lib} -r#{SHIM}", "RINGSPUN_FIBER_REFERENCE" => @reference,
                "RINGSPUN_BACKEND" => mode)
    end

    def run_mode(mode)
      FileUtils.mkdir_p(@log_dir)
      log_path = File.join(@log_dir, "#{mode}.log")
      File.write(log_path, "")
      env = mode_env(mode)
      skip = mode == "reference" ? [] : @excluded.keys
      results = {}
      @files.each { |file| run_file(file, env, skip, log_path, results) }
      results
    end

    # Runs one file, in as many processes as hangs and crashes make it take.
    def run_file(file, env, skip, log_path, results)
      done = []
      loop do
        outcome = run_process(file, env.merge("RINGSPUN_FIBER_SKIP" => (skip + done).join("\t")), log_path)
        outcome[:results].each do |name, result|
          results[name] = result
          done << name
        end
        return unless outcome[:again]
      end
    end

    # One child process; returns its results and whether the file must go on
    # in another process (after a hung or crashed test).
    def run_process(file, env, log_path)
      results = {}
      reader, writer = IO.pipe
      log = File.open(log_path, "a")
      log_start = log.pos
      log.puts "==== #{File.basename(file)} (#{env['RINGSPUN_BACKEND'] || 'reference'})"
      log.flush
      pid = Process.spawn(env.merge("RINGSPUN_FIBER_PROGRESS_FD" => PROGRESS_FD.to_s), RbConfig.ruby, __FILE__, "--child", file,
                          PROGRESS_FD => writer, in: File::NULL, out: log, err: log, pgroup: true)
      writer.close
      current = nil
      traces = []
      pending = +""
      last = now
      hung = false
      loop do
        left = last + @timeout - now
        if left <= 0
          hung = true
          break
        end
        unless reader.wait_readable(left)
          hung = true
          break
        end
        chunk = reader.read_nonblock(65_536, exception: false)
        break if chunk.nil? # every writer closed: the child ended
        next if chunk == :wait_readable

        last = now
        pending << chunk
        events(pending).each do |kind, name, *fields|
          case kind
          when "start" then current = name
          when "end" then current = nil
          when "result"
            status, detail = fields
            old = results[name]
            results[name] = Result.new(status, detail) if old.nil? || RANK.fetch(status) > RANK.fetch(old.status)
          when "trace" then traces << fields.first
          end
        end
      end

      if hung
        # Where is it? Then end it, with whatever it started.
        Process.kill(:USR1, pid) rescue nil
        traces.concat(collect_traces(reader, pending, 2.0))
        Process.kill(:KILL, -pid) rescue nil
      end
      _, status = Process.wait2(pid)
      Process.kill(:KILL, -pid) rescue nil # anything the test left in its group
      reader.close
      log.puts traces.map { |t| "---- thread backtraces at the timeout\n#{t}" } unless traces.empty?
      log.close

      again = false
      if current
        detail = hung ? "no result in #{@timeout.round} s" : "its process died (#{status.inspect})#{last_words(log_path, log_start)}"
        detail += "; stuck at #{stuck_frame(traces)}" if hung && stuck_frame(traces)
        results[current] = Result.new(hung ? "hung" : "crashed", detail)
        again = true
      elsif hung || (results.empty? && !status.success?)
        # Nothing ran, or it stuck between tests: report the file itself.
        tail = File.read(log_path)[log_start..].to_s.lines.last(3).map(&:strip).join(" | ")
        reason = hung ? "no progress in #{@timeout.round} s outside any test" : "failed to load (#{status.inspect})"
        results["#{File.basename(file)} (file)"] = Result.new(hung ? "hung" : "error", "#{reason}: #{tail}")
      end
      { results: results, again: again }
    ensure
      # This process failing midway must not leave the child running.
      if pid && status.nil?
        Process.kill(:KILL, -pid) rescue nil
        Process.wait(pid) rescue nil
      end
    end

    # The complete lines in pending (removed from it) as [kind, name, *fields].
    def events(pending)
      list = []
      while (line = pending.slice!(/\A[^\n]*\n/))
        kind, name, *fields = line.chomp.split("\t")
        list << [kind, name, *fields.map { |f| f.undump.force_encoding(Encoding::UTF_8).scrub }]
      end
      list
    end

    # The backtraces a child sends after SIGUSR1, within `seconds`.
    def collect_traces(reader, pending, seconds)
      deadline = now + seconds
      traces = []
      while traces.empty? && (left = deadline - now).positive? && reader.wait_readable(left)
        chunk = reader.read_nonblock(65_536, exception: false)
        break if chunk.nil?
        next if chunk == :wait_readable

        pending << chunk
        events(pending).each { |kind, _, text| traces << text if kind == "trace" }
      end
      traces
    end

    # What a dying Ruby printed about itself in this process's part of the log.
    def last_words(log_path, from)
      line = File.binread(log_path)[from..].to_s.scrub.lines.find { |l| l.match?(/\[BUG\]|[Aa]ssertion.*failed|Segmentation fault/) }
      line ? ": #{line.strip.sub(/\A.*?(\[BUG\])/, '\\1')[0, 300]}" : ""
    end

    # The first frame of the main thread's backtrace inside test/fiber, if any.
    def stuck_frame(traces)
      main = traces.first&.lines&.first(31) || []
      frame = main.find { |l| l.include?("/test/fiber/") && !l.include?("test/unit") }
      frame&.strip&.sub(%r{\A.*/test/fiber/}, "")
    end

    def report(results)
      failed = false
      baseline = results["reference"]
      unless @excluded.empty?
        puts "Excluded on Ringspun (tests of the reference scheduler's internals):"
        @excluded.each do |name, reason|
          found = baseline.nil? || baseline.key?(name) ? "" : " [no such test on this Ruby]"
          puts "  #{name}: #{reason}#{found}"
        end
      end
      (@modes - ["reference"]).each do |mode|
        mine = results[mode]
        names = (mine.keys | (baseline ? baseline.keys - @excluded.keys : [])).sort
        broken = names.reject { |name| mine[name]&.status == "pass" }
        regressions, shared = broken.partition { |name| baseline.nil? || baseline[name]&.status == "pass" }
        unless regressions.empty?
          failed = true
          against = baseline ? "pass with the reference scheduler" : "the reference scheduler was not run"
          puts "FAILING on Ringspun #{mode} (#{regressions.size}; #{against}):"
          regressions.each { |name| puts "  #{name}: #{line_for(mine[name])}" }
        end
        next if shared.empty?

        puts "Not passing on #{mode}, nor with the reference scheduler (not counted):"
        shared.each { |name| puts "  #{name}: #{line_for(mine[name])} [reference: #{line_for(baseline[name])}]" }
      end
      if baseline
        bad = baseline.reject { |_, r| r.status == "pass" }
        puts "Not passing with the reference scheduler: #{bad.map { |n, r| "#{n} (#{r.status})" }.join(', ')}" unless bad.empty?
      end
      puts "logs: #{@log_dir.delete_prefix("#{ROOT}/")}/"
      puts(failed ? "test/fiber on #{RUBY_VERSION}: FAILED" : "test/fiber on #{RUBY_VERSION}: OK")
      failed ? 1 : 0
    end

    def line_for(result)
      return "did not run" unless result

      [result.status, result.detail].compact.reject(&:empty?).join(": ")
    end
  end
end

if ARGV.first == "--child"
  RubyFiberTests::Child.main(File.expand_path(ARGV.fetch(1)))
else
  exit RubyFiberTests::Parent.new(ARGV).main
end
