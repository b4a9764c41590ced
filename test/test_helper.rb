# frozen_string_literal: true

# Shared setup for Ringspun's tests.
#
# - RingspunTest::Modes turns one contract module of tests into one test class
#   per backend (STYLE.md point 13): TestSchedulerIoUring, TestSchedulerEpoll.
# - RingspunTest::Case checks for leaks around every test: the number of open
#   file descriptors (/proc/self/fd) and of threads (/proc/self/task) must be
#   the same after the test as before it.
# - A watchdog ends the process with a clear message when one test hangs, so
#   a scheduler bug cannot hang CI forever.
# - RINGSPUN_TEST_NO_URING=1 re-runs this very command under
#   test/support/no_uring (a seccomp launcher making io_uring_setup fail with
#   EPERM): the io_uring classes skip and everything else must pass on epoll.

require "digest"
require "fileutils"
require "minitest/autorun"
require "rbconfig"
require "socket"
require "timeout"
require "tmpdir"

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "ringspun"

module RingspunTest
  ROOT = File.expand_path("..", __dir__)
  RUBY = RbConfig.ruby

  # A test error class, so a test can tell its own exception from any other.
  class MyError < StandardError; end

  # ---- the seccomp launcher ----------------------------------------------------

  # Compiles test/support/no_uring.c once per process into a private temporary
  # directory; returns its path, or nil (with the reason in .no_uring_error).
  module NoUring
    SOURCE = File.join(ROOT, "test", "support", "no_uring.c")

    class << self
      attr_reader :error

      def path
        return @path if defined?(@path)

        @path = build
      end

      # True in a process started under the launcher (or any seccomp filter).
      def active?
        File.read("/proc/self/status")[/^Seccomp:\s*(\d+)/, 1].to_i == 2
      rescue SystemCallError
        false
      end

      private

      def build
        cc = ENV.fetch("CC", "cc")
        unless system("command -v #{cc} >/dev/null 2>&1")
          @error = "no C compiler (#{cc}) to build test/support/no_uring.c"
          return nil
        end
        dir = Dir.mktmpdir("ringspun-no-uring")
        at_exit { FileUtils.rm_rf(dir) if Process.pid == @owner_pid }
        @owner_pid = Process.pid
        exe = File.join(dir, "no_uring")
        log = File.join(dir, "cc.log")
        unless system(cc, "-O2", "-Wall", "-o", exe, SOURCE, out: log, err: log)
          @error = "#{cc} failed on no_uring.c: #{File.read(log)}"
          return nil
        end
        exe
      end
    end
  end

  # RINGSPUN_TEST_NO_URING=1: start the whole command again under the launcher
  # (the command line is read back from /proc, so any runner works).
  if ENV["RINGSPUN_TEST_NO_URING"] == "1" && !NoUring.active?
    launcher = NoUring.path or abort("RINGSPUN_TEST_NO_URING=1: #{NoUring.error}")
    argv = File.binread("/proc/self/cmdline").split("\0")
    $stdout.flush
    $stderr.flush
    exec(launcher, RUBY, *argv.drop(1))
  end

  # A sanitizer build (Rakefile) preloads its runtime into this process. A
  # Ruby child loads the same extension and needs it; other programs must
  # not get it (curl hangs under the ASan runtime), so it leaves ENV here
  # and Ruby children get it back through RUBY_ENV.
  RUBY_ENV = ENV["RINGSPUN_SANITIZER_PRELOAD"] ? { "LD_PRELOAD" => ENV["RINGSPUN_SANITIZER_PRELOAD"] }.freeze : {}.freeze
  ENV.delete("LD_PRELOAD") unless RUBY_ENV.empty?

  # Why io_uring cannot be used in this process, or nil when it can.
  def self.io_uring_unavailable
    return @io_uring_unavailable if defined?(@io_uring_unavailable)

    @io_uring_unavailable =
      begin
        Ringspun::Scheduler.new(backend: :io_uring).close
        nil
      rescue SystemCallError => e
        "io_uring cannot be set up here (#{e.class}: #{e.message})"
      end
  end

  # ---- leak accounting -----------------------------------------------------------

  def self.fd_count
    Dir.children("/proc/self/fd").size
  end

  # Ruby 3.1 keeps the native thread of a finished Ruby thread in a cache,
  # to be reused, for up to 3 seconds (THREAD_CACHE_TIME in
  # thread_pthread.c): such a task is no leak, and waiting 3 s after every
  # test that used a thread would make the suite crawl. Ruby 3.3 and later
  # have no such cache (the native thread ends right after its Ruby thread,
  # nt_start in 3.4's thread_pthread.c), but it still ends a moment later,
  # which the same rule covers. So a task counts unless it once ran a Ruby
  # thread that has since finished: live Ruby threads count, and so does
  # every task Ruby knows nothing about (io-wq workers of an io_uring, a
  # thread started from C).
  RUBY_TIDS = {} # native thread ids that have run a Ruby thread
  TracePoint.new(:thread_begin) { RUBY_TIDS[Thread.current.native_thread_id] = true }.enable

  def self.tasks
    live = Thread.list.map(&:native_thread_id)
    Dir.children("/proc/self/task").map(&:to_i).reject { |tid| RUBY_TIDS.key?(tid) && !live.include?(tid) }
  end

  def self.thread_count
    tasks.size
  end

  def self.task_list
    tasks.sort.map do |tid|
      "#{tid} #{File.read("/proc/self/task/#{tid}/comm").chomp}"
    rescue SystemCallError
      "#{tid} (gone)"
    end
  end

  def self.fd_list
    Dir.children("/proc/self/fd").sort_by(&:to_i).map do |fd|
      "#{fd} -> #{File.readlink("/proc/self/fd/#{fd}")}"
    rescue SystemCallError
      "#{fd} -> (gone)"
    end
  end

  # [fds, threads]. Unreferenced IO objects are collected first, so an fd the
  # test merely forgot to close is not blamed on the library... unless it
  # stays open.
  def self.counts
    GC.start
    [fd_count, thread_count]
  end

  # Counts again until they match `want`, for up to `patience` seconds: Ruby
  # threads and io_uring's io-wq workers exit asynchronously.
  def self.settled_counts(want, patience: 5.0)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + patience
    loop do
      now = counts
      return now if now == want || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.01
    end
  end

  # ---- watchdog ------------------------------------------------------------------------

  # One thread for the whole run (started before any baseline is taken, so it
  # never shows as a leak). A test that outlives its deadline gets its name
  # and every thread's backtrace printed, and the process exits 1.
  module Watchdog
    LIMIT = Float(ENV.fetch("RINGSPUN_TEST_TIMEOUT", "60"))
    CURRENT = ENV["RINGSPUN_TEST_CURRENT"]
    @lock = Mutex.new
    @deadline = nil
    @name = nil

    class << self
      def arm(name, seconds = LIMIT)
        @lock.synchronize do
          @name = name
          @deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
        end
        # For the Rakefile's limit from outside, which still works when this
        # thread cannot run (C code spinning with the GVL held).
        File.write(CURRENT, name) if CURRENT
      end

      def disarm
        @lock.synchronize { @deadline = nil }
      end

      def start
        @thread ||= Thread.new do
          Thread.current.name = "ringspun-test-watchdog"
          loop do
            sleep 0.25
            expired = @lock.synchronize do
              @deadline && Process.clock_gettime(Process::CLOCK_MONOTONIC) > @deadline && @name
            end
            bark(expired) if expired
          end
        end
      end

      private

      def bark(name)
        $stderr.puts "\nringspun test watchdog: #{name} still running after #{LIMIT}s; aborting."
        Thread.list.each do |t|
          $stderr.puts "--- #{t.inspect}"
          $stderr.puts((t.backtrace || []).first(20).map { |l| "    #{l}" })
        end
        $stderr.flush
        exit!(1)
      end
    end
  end

  # Ruby 3.1 creates its timer thread (and its fds) with the first Thread
  # (3.3 and later at start-up), and the watchdog is a thread of its own:
  # both exist before any test counts.
  Thread.new {}.join
  Watchdog.start
  # Ruby 3.4's Timeout (timeout 0.4) runs every Timeout.timeout outside a
  # scheduler on one "Timeout stdlib thread", started at the first call and
  # kept for the life of the process; it must not count against whichever
  # test calls it first. (Ruby 3.1's starts a thread per call, which ends
  # with it.)
  Timeout.timeout(60) {}

  # ---- the base test class ----------------------------------------------------------------

  # Base of every Ringspun test class: the leak check and the watchdog.
  class Case < Minitest::Test
    make_my_diffs_pretty!

    class << self
      # The backend Ringspun.run uses in this class; nil for classes not tied
      # to one (the default choice, RINGSPUN_BACKEND, no_uring).
      attr_accessor :backend
    end

    def setup
      super
      Watchdog.arm("#{self.class}##{name}")
      @leak_fds = RingspunTest.fd_list
      @leak_tasks = RingspunTest.task_list
      @leak_counts = RingspunTest.counts
    end

    def teardown
      Watchdog.disarm
      return super unless @leak_counts # skipped before the baseline was taken

      after = RingspunTest.settled_counts(@leak_counts)
      unless after == @leak_counts
        fds = RingspunTest.fd_list
        tasks = RingspunTest.task_list
        flunk "resources leaked: [fds, threads] were #{@leak_counts.inspect}, now #{after.inspect}; " \
              "fds opened: #{(fds - @leak_fds).inspect}, fds closed: #{(@leak_fds - fds).inspect}; " \
              "threads started: #{(tasks - @leak_tasks).inspect}, ended: #{(@leak_tasks - tasks).inspect}"
      end
      super
    end

    def backend
      self.class.backend
    end

    # Ruby's own decoders, for checking ours. The bytes go in as a binary
    # String: Ruby 3.1's Zlib.gunzip miscounts a String of another encoding
    # (IO#read with no length returns UTF-8) whose gzip header happens to
    # holds a valid multibyte character (the mtime can) and raises
    # Zlib::DataError on a correct stream.
    def zlib_gunzip(bytes)
      Zlib.gunzip(bytes.b)
    end

    # (see #zlib_gunzip)
    def zlib_inflate(bytes)
      Zlib::Inflate.inflate(bytes.b)
    end

    # Raised into a run that outlived its limit (see #run_rs).
    class RunHung < StandardError; end

    RUN_LIMIT = Float(ENV.fetch("RINGSPUN_TEST_RUN_LIMIT", "20"))

    # Ringspun.run on this class's backend. A run still going after `limit`
    # seconds is interrupted from outside (an exception raised into this
    # thread ends the run), so a hang fails its own test, quickly, instead of
    # the watchdog ending the whole suite.
    def run_rs(limit: RUN_LIMIT, &block)
      Timeout.timeout(limit, RunHung, "Ringspun.run(backend: #{backend.inspect}) still running after #{limit}s") do
        Ringspun.run(backend: backend, &block)
      end
    end

    def scheduler
      Fiber.scheduler
    end

    def now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    # Seconds the block took.
    def elapsed
      t0 = now
      yield
      now - t0
    end

    # Inside a run: nothing waits, so nothing may be held.
    def assert_no_pending_operations(msg = nil)
      assert_equal 0, scheduler.pending_operations, msg || "operations still handed out"
    end

    # Runs a ruby subprocess with this checkout's lib on the load path;
    # returns [stdout, stderr, Process::Status].
    def ruby_subprocess(code, env: {}, launcher: nil, timeout: 30)
      cmd = [*launcher, RUBY, "-I", File.join(ROOT, "lib"), "-rringspun", "-e", code]
      out_r, out_w = IO.pipe
      err_r, err_w = IO.pipe
      pid = Process.spawn(RUBY_ENV.merge(env), *cmd, out: out_w, err: err_w, in: File::NULL)
      out_w.close
      err_w.close
      out = Thread.new { out_r.read }
      err = Thread.new { err_r.read }
      status = wait_child(pid, timeout)
      [out.value, err.value, status]
    ensure
      [out_r, out_w, err_r, err_w].each { |io| io&.close unless io&.closed? }
    end

    # Process.wait2 with a deadline: a hung child is killed and the test fails.
    def wait_child(pid, timeout)
      deadline = now + timeout
      loop do
        _, status = Process.wait2(pid, Process::WNOHANG)
        return status if status

        if now > deadline
          Process.kill(:KILL, pid)
          Process.wait(pid)
          flunk "child #{pid} did not finish within #{timeout}s"
        end
        sleep 0.01
      end
    end
  end

  # ---- modes -----------------------------------------------------------------------------

  # One contract suite, every backend: a module of tests becomes one Case
  # subclass per backend, each running Ringspun.run (through #run_rs) on its
  # backend.
  #
  #   module SchedulerContract
  #     def test_something = run_rs { ... }
  #   end
  #   RingspunTest::Modes.define("TestScheduler", SchedulerContract)
  #   # => TestSchedulerIoUring, TestSchedulerEpoll
  module Modes
    ALL = { "IoUring" => :io_uring, "Epoll" => :epoll }.freeze

    # The io_uring classes skip (saying why) where io_uring cannot be set up.
    module SkipWithoutUring
      def setup
        reason = RingspunTest.io_uring_unavailable
        skip reason if reason && self.class.backend == :io_uring
        super
      end
    end

    # The one class-per-mode definer: a subclass of +base+ per entry of +modes+ (suffix =>
    # mode, read back as the class's +backend+), each including +contract+.
    # @return [Array<Class>]
    def self.define(prefix, contract, base: Case, modes: ALL)
      modes.map do |suffix, mode|
        klass = Class.new(base) do
          include contract
          include SkipWithoutUring
        end
        klass.backend = mode
        Object.const_set("#{prefix}#{suffix}", klass)
      end
    end
  end
end
