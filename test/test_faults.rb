# frozen_string_literal: true

require_relative "test_helper"
require_relative "support/faults"

# Fault injection (issue 8): every primitive, broken from every side it has.
#
# Per primitive, in Ringspun.run on io_uring and on epoll and with no
# scheduler at all: the destination's reader closes or resets mid-transfer,
# the source's writer stops early or resets, a Timeout fires at a random
# point (1,000 times in each mode, GC.compact between runs, a round under
# GC.stress), a Timeout interrupts a read that is then simply called again
# (no byte may be lost), an exception is raised into the parked task, and
# the thread running it is killed. After each: the right exception class,
# the next transfer on the same scheduler delivers every byte, and the leak
# check of RingspunTest::Case finds every fd closed and no thread left.
# Then: io_uring refused at setup, fork in the middle of busy transfers
# (scheduler modes), and flat memory over 100,000 gzip/gunzip/double_splice
# calls.
#
# Problems are collected per test and reported together, one line each, so
# one broken primitive does not hide the state of the others.
#
# The primitives as transfers, and the rig that breaks them, are in
# test/support/faults.rb.
#
# FAULTS=full runs the numbers of the spec where the default is smaller to
# keep the file under ~90 s on two cores: GC.compact after every timeout
# run instead of every tenth, and the GC.stress round over every stream
# pairing of every primitive instead of one pairing each (without a
# scheduler, where the helper threads and Timeout's own thread allocate
# under the stress too, at ~15 ms a collection: one pairing of every
# primitive instead of one primitive in six). It takes about 4 minutes;
# on a busy machine give each test more than the watchdog's default 60 s
# (RINGSPUN_TEST_TIMEOUT=180).
module RingspunTest
  module FaultScale
    FULL = ENV["FAULTS"] == "full"
    # FAULTS_TIMEOUTS=N: N per mode instead (the sanitizer pass of `rake test`).
    TIMEOUTS = %i[io_uring epoll blocking].to_h { |mode| [mode, Integer(ENV.fetch("FAULTS_TIMEOUTS", "1000"))] }.freeze
    COMPACT_EVERY = FULL ? 1 : 10
    MEMORY_ITERATIONS = Integer(ENV.fetch("FAULTS_MEMORY_ITERATIONS", "100000"))
  end

  # One class per mode: io_uring, epoll, no scheduler.
  class FaultCase < Case
    include Faults

    MODES = { "IoUring" => :io_uring, "Epoll" => :epoll, "Blocking" => :blocking }.freeze

    def self.define(prefix, contract, modes: MODES)
      Modes.define(prefix, contract, base: self, modes: modes)
    end

    def mode
      self.class.backend
    end

    def scheduled?
      mode != :blocking
    end

    def in_mode(limit: 60, &block)
      scheduled? ? run_rs(limit: limit, &block) : block.call
    end

    # Cancelled timers and polls complete asynchronously: give them a turn
    # before counting what is still handed out.
    def settle_and_assert_no_pending_operations
      return unless scheduled?

      sleep 0.01
      assert_no_pending_operations
    end

    def assert_no_problems(problems)
      problems = problems.flatten.compact
      flunk "#{problems.size} problem(s) in #{mode}:\n  #{problems.join("\n  ")}" unless problems.empty?
      pass
    end
  end

  module FaultContract
    include Faults

    # ---- the peer goes away ----------------------------------------------------------

    def test_destination_peer_closes_mid_transfer
      problems = []
      in_mode do
        SPECS.each do |spec|
          spec.dst.each_with_index do |dk, i|
            sk, = spec.combo(dst_kind: dk, index: i)
            problems << Checks.broken_destination(spec, sk, dk, :close)
          end
        end
        settle_and_assert_no_pending_operations
      end
      assert_no_problems problems
    end

    def test_destination_peer_resets_mid_transfer
      problems = []
      in_mode do
        SPECS.each_with_index do |spec, i|
          sk, = spec.combo(dst_kind: :tcp, index: i)
          next unless sk # tee: pipes only

          problems << Checks.broken_destination(spec, sk, :tcp, :reset)
        end
        settle_and_assert_no_pending_operations
      end
      assert_no_problems problems
    end

    def test_source_ends_early
      problems = []
      in_mode do
        SPECS.each do |spec|
          spec.src.each_with_index do |sk, i|
            _, dk = spec.combo(src_kind: sk, index: i)
            problems << Checks.source_cut(spec, sk, dk)
          end
        end
        settle_and_assert_no_pending_operations
      end
      assert_no_problems problems
    end

    def test_source_peer_resets_mid_transfer
      problems = []
      in_mode do
        SPECS.each_with_index do |spec, i|
          _, dk = spec.combo(src_kind: :tcp, index: i)
          next unless dk # tee: pipes only

          problems << Checks.source_reset(spec, dk)
        end
        settle_and_assert_no_pending_operations
      end
      assert_no_problems problems
    end

    # ---- interruption ----------------------------------------------------------------

    def test_timeouts_at_random_points
      rng = Random.new(Integer(ENV.fetch("FAULTS_SEED", "8")))
      iterations = FaultScale::TIMEOUTS.fetch(mode)
      outcomes = Hash.new(0)
      problems = []
      in_mode(limit: 120) do
        iterations.times do |i|
          spec = SPECS[i % SPECS.size]
          sk, dk = spec.combos[rng.rand(spec.combos.size)]
          outcome, found = Checks.timeout(spec, sk, dk, rng)
          outcomes[outcome] += 1
          problems << found
          GC.compact if (i % FaultScale::COMPACT_EVERY).zero?
        end
        settle_and_assert_no_pending_operations
      end
      assert_no_problems problems
      assert_equal iterations, outcomes[:completed] + outcomes[:timed_out]
      # Both ends of the race were exercised.
      assert_operator outcomes[:completed], :>, iterations / 20, outcomes.inspect
      assert_operator outcomes[:timed_out], :>, iterations / 20, outcomes.inspect
    end

    # Small transfers (a full GC at every allocation is slow), each pairing
    # of streams once with FAULTS=full, fewer otherwise (see FaultScale).
    def test_timeouts_under_gc_stress
      rng = Random.new(9)
      problems = []
      in_mode(limit: 120) do
        GC.compact
        SPECS.each_with_index do |spec, i|
          next unless FaultScale::FULL || scheduled? || (i % 6).zero?

          pairs = FaultScale::FULL && scheduled? ? spec.combos : [spec.combos[i % spec.combos.size]]
          pairs.each do |sk, dk|
            _, found = Checks.timeout(spec, sk, dk, rng, limit: 0.0005 + (rng.rand * 0.02), stress: true)
            problems << found
          end
        end
        GC.compact
        settle_and_assert_no_pending_operations
      end
      assert_no_problems problems
    end

    # A Timeout around a primitive that reads a stream must not cost a
    # byte: whatever it had read ahead goes back to the IO, so calling it
    # again picks up exactly where it stopped.
    def test_interrupted_reads_resume_without_losing_a_byte
      rng = Random.new(12)
      problems = []
      timeouts = 0
      in_mode(limit: 120) do
        Checks::RESUMABLE.each_key do |name|
          Faults.spec(name).src.each do |sk|
            8.times do
              n, found = Checks.resume_after_timeouts(name, sk, rng)
              timeouts += n
              problems << found
            end
          end
        end
        settle_and_assert_no_pending_operations
      end
      assert_no_problems problems
      assert_operator timeouts, :>, 50, "the timeouts hardly ever fired"
    end

    def test_exception_raised_into_a_parked_transfer
      problems = []
      in_mode do
        SPECS.each_with_index do |spec, i|
          sk, dk = spec.combos[i % spec.combos.size]
          problems << Checks.raise_into(spec, sk, dk, MyError)
        end
        settle_and_assert_no_pending_operations
      end
      assert_no_problems problems
    end

    # The thread running the transfers is killed while every primitive is
    # mid-stream: the thread ends, the primitives' own fds (double_splice's
    # pipe, the chunked encoder's pipe) are closed by their ensure clauses,
    # and a new run works.
    def test_thread_kill_mid_transfer
      rigs = []
      problems = []
      if scheduled?
        problems << kill_a_running_scheduler(rigs)
      else
        problems << kill_blocked_threads(rigs)
      end
      rigs.each(&:close_all)
      in_mode do
        SPECS.each_with_index do |spec, i|
          sk, dk = spec.combos[i % spec.combos.size]
          problems << Checks.clean(spec, sk, dk, after: "Thread#kill")
        end
      end
      assert_no_problems problems
    end

    private

    def kill_a_running_scheduler(rigs)
      ready = Queue.new
      runner = Thread.new do
        Ringspun.run(backend: mode) do
          SPECS.each_with_index do |spec, i|
            sk, dk = spec.combos[i % spec.combos.size]
            rig = Rig.new(spec, sk, dk, Checks.payload(i, 256 * KIB), feed: :stall)
            rigs << rig.start
            Ringspun.spin { rig.call }
          end
          ready << rigs.map(&:progress)
          sleep
        end
      rescue Exception => e # rubocop:disable Lint/RescueException -- reported below
        ready << e
        raise
      end
      moving = ready.pop
      return ["the run failed before the kill: #{Checks.describe(moving)}"] unless moving.is_a?(Array)

      sleep 0.005 # let them park
      runner.kill
      problems = []
      problems << "the killed thread did not end within 10 s" unless runner.join(10)
      SPECS.zip(moving).each { |spec, moved| problems << "#{spec}: no byte moved before the kill" unless moved }
      problems
    end

    def kill_blocked_threads(rigs)
      SPECS.each_with_index.map do |spec, i|
        sk, dk = spec.combos[i % spec.combos.size]
        rig = Rig.new(spec, sk, dk, Checks.payload(i, 256 * KIB), feed: :stall)
        rigs << rig.start
        worker = Thread.new do
          Thread.current.report_on_exception = false
          rig.call
        end
        moved = rig.progress
        sleep 0.002
        worker.kill
        ended = worker.join(10)
        rig.finish if ended
        next "#{spec}: the killed thread did not end within 10 s" unless ended
        next "#{spec}: no byte moved before the kill" unless moved

        nil
      end
    end
  end

  FaultCase.define("TestFaults", FaultContract)

  # Only with a scheduler: fork from inside a run.
  module ForkFaultContract
    include Faults

    # Every primitive busy in the parent (trickling sources), then fork. The
    # parent's transfers complete with every byte; the child, with a fresh
    # backend, runs every primitive in a Ringspun.run of its own and exits 0.
    def test_fork_in_the_middle_of_busy_transfers
      problems = []
      child_report = nil
      status = nil
      in_mode do
        rigs = SPECS.each_with_index.map do |spec, i|
          sk, dk = spec.combos[i % spec.combos.size]
          Rig.new(spec, sk, dk, Checks.payload(100 + i, 512 * KIB), pieces: [16 * KIB], pause: 0.001).start
        end
        workers = rigs.map { |rig| Faults::Task.new { rig.call } }
        rigs.each { |rig| problems << "#{rig.spec}: nothing moved before the fork" unless rig.progress }
        r, w = IO.pipe
        pid = fork do
          r.close
          report = child_transfers
          w.write(Marshal.dump(report))
          w.close
          exit!(report.empty? ? 0 : 1)
        end
        w.close
        rigs.zip(workers).each do |rig, worker|
          status_, error = worker.result
          feeder, sink = rig.finish
          what = "#{rig.spec} #{rig.src_kind}->#{rig.dst_kind} in the parent"
          problems << "#{what}: raised #{Checks.describe(error)}" if status_ == :error
          problems << "#{what}: the feeder ended with #{feeder.inspect}" unless feeder == %i[ok fed]
          problem = Checks.output_problem(Checks.decoded(rig.spec, sink), Checks.payload(100 + SPECS.index(rig.spec), 512 * KIB))
          problems << "#{what}: #{problem}" if problem
        end
        child_report = Marshal.load(r.read) # rubocop:disable Security/MarshalLoad -- our own child
        r.close
        status = Process.wait2(pid)[1]
        settle_and_assert_no_pending_operations
      end
      problems.concat(child_report.map { |p| "child: #{p}" })
      assert_no_problems problems
      assert_equal 0, status.exitstatus, "the child's exit status"
    end

    private

    # In the forked child: every primitive once, in a run of its own. Never
    # raises: the problems are the report.
    def child_transfers
      Ringspun.run(backend: mode) do
        backend = Fiber.scheduler.backend
        found = backend == mode ? [] : ["the child's run is on #{backend}, not #{mode}"]
        SPECS.each_with_index do |spec, i|
          sk, dk = spec.combos[i % spec.combos.size]
          found.concat(Checks.clean(spec, sk, dk, size: 64 * KIB, seed: 7))
        end
        found
      end
    rescue Exception => e # rubocop:disable Lint/RescueException -- the report is all the parent sees
      ["raised #{Checks.describe(e)}"]
    end
  end

  FaultCase.define("TestFaultsFork", ForkFaultContract, modes: FaultCase::MODES.except("Blocking"))
end

  # io_uring refused at setup: the seccomp launcher makes io_uring_setup(2)
  # fail with EPERM (as Docker's default profile does); the default backend
  # choice must fall back to epoll, and every primitive must work and fail
  # the same way there.
class TestFaultsNoUring < RingspunTest::Case
    SMOKE = <<~'RUBY'
      require "support/faults"
      include RingspunTest::Faults
      rng = Random.new(11)
      backend = nil
      problems = Ringspun.run do
        backend = Fiber.scheduler.backend
        found = []
        SPECS.each_with_index do |spec, i|
          spec.combos.each { |sk, dk| found.concat(Checks.clean(spec, sk, dk, size: 40_000)) }
          sk, dk = spec.combos[i % spec.combos.size]
          found.concat(Checks.broken_destination(spec, sk, dk, :close))
          found.concat(Checks.source_cut(spec, sk, dk))
          _, tk = spec.combo(src_kind: :tcp)
          found.concat(Checks.source_reset(spec, tk)) if tk
          found.concat(Checks.raise_into(spec, sk, dk, RingspunTest::Faults::Stopped))
          5.times { found.concat(Checks.timeout(spec, sk, dk, rng).last) }
        end
        found
      end
      print Marshal.dump([backend, problems])
    RUBY

    def test_every_primitive_on_the_epoll_fallback_under_seccomp
      launcher = RingspunTest::NoUring.path or skip("io_uring refusal not testable: #{RingspunTest::NoUring.error}")
      code = "$LOAD_PATH.unshift(#{File.join(RingspunTest::ROOT, 'test').inspect}); #{SMOKE}"
      out, err, status = ruby_subprocess(code, launcher: [launcher], timeout: 60)
      assert status.success?, "the smoke run failed: #{err}"
      backend, problems = Marshal.load(out) # rubocop:disable Security/MarshalLoad -- our own child
      assert_equal :epoll, backend
      flunk "#{problems.size} problem(s) under no_uring:\n  #{problems.join("\n  ")}" unless problems.empty?
    end
  end

  # Memory: 100,000 rounds of gzip + gunzip of a tiny payload and a
  # double_splice of it, in a subprocess (this process's own growth would
  # blur the numbers), on io_uring where it can be set up. VmRSS is sampled
  # 50 times; after a warm-up (the first fifth) the peak stays within 10 %
  # of the first sample.
class TestFaultsMemory < RingspunTest::Case
    SCRIPT = <<~'RUBY'
      require "zlib"
      iterations = Integer(ARGV.fetch(0))
      def rss = File.read("/proc/self/status")[/^VmRSS:\s+(\d+)/, 1].to_i
      payload = ("tiny payload, " * 6).b
      dir = Dir.mktmpdir("ringspun-memory")
      path = File.join(dir, "src.txt")
      File.binwrite(path, payload)
      samples = []
      every = [iterations / 50, 1].max
      began = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      backend = Ringspun.run do
        File.open(path, "rb") do |src|
          File.open(File::NULL, "wb") do |null|
            iterations.times do |i|
              src.rewind
              gz = String.new
              IO.gzip(src, gz)
              back = String.new
              IO.gunzip(gz, back)
              raise "gunzip gave #{back.bytesize} bytes at #{i}" unless back == payload
              src.rewind
              moved = IO.double_splice(src, null)
              raise "double_splice moved #{moved} bytes at #{i}" unless moved == payload.bytesize
              samples << rss if (i % every).zero?
            end
          end
        end
        Fiber.scheduler.backend
      end
      took = Process.clock_gettime(Process::CLOCK_MONOTONIC) - began
      FileUtils.rm_rf(dir)
      print Marshal.dump([backend, samples, took])
    RUBY

    def test_rss_stays_flat_over_100_000_gzip_gunzip_and_double_splice_calls
      # ASan holds freed memory in its quarantine (256 MiB) before reusing
      # it, so RSS climbs until that fills whatever the extension does.
      skip "RSS means nothing under AddressSanitizer" unless RingspunTest::RUBY_ENV.empty?

      iterations = RingspunTest::FaultScale::MEMORY_ITERATIONS
      code = "require 'tmpdir'; require 'fileutils'; ARGV.replace([#{iterations}]); #{SCRIPT}"
      out, err, status = ruby_subprocess(code, timeout: 120)
      assert status.success?, "the memory run failed: #{err}"
      backend, samples, took = Marshal.load(out) # rubocop:disable Security/MarshalLoad -- our own child
      warm = samples.drop(samples.size / 5)
      first = warm.first
      peak = warm.max
      note = "#{iterations} rounds on #{backend} in #{took.round(1)} s; VmRSS (KiB) after warm-up: " \
             "first #{first}, peak #{peak}, last #{warm.last}; all samples: #{samples.join(' ')}"
      puts "\n#{name}: #{note}" if ENV["FAULTS_VERBOSE"]
      assert_operator peak, :<=, first * 1.10, "RSS grew more than 10 % after warm-up: #{note}"
    end
  end

  # Ringspun::MessagePack.pack/unpack work on Strings: no peer, nothing to
  # time out. Their faults are cut input, under compaction and GC.stress.
class TestFaultsMessagePackStrings < RingspunTest::Case
    def test_unpack_of_every_truncation_raises_eof_error_and_the_next_call_works
      obj = { "name" => "ringspun", "list" => [1, -2, 3.5, nil, true, "x" * 300, "b".b * 70_000], "map" => { "k" => 2**40 } }
      packed = Ringspun::MessagePack.pack(obj)
      cuts = (0...packed.bytesize).step(97).to_a + [packed.bytesize - 1]
      GC.compact
      cuts.each do |len|
        assert_raises(EOFError, "cut at #{len}") { Ringspun::MessagePack.unpack(packed.byteslice(0, len)) }
      end
      GC.compact
      assert_equal obj, Ringspun::MessagePack.unpack(packed)
      begin
        GC.stress = true
        stressed = [Ringspun::MessagePack.pack(obj["map"])]
        stressed << (Ringspun::MessagePack.unpack(packed.byteslice(0, 40)) rescue $!.class) # rubocop:disable Style/RescueModifier
        stressed << Ringspun::MessagePack.unpack(stressed.first)
      ensure
        GC.stress = false
      end
      assert_equal [Ringspun::MessagePack.pack(obj["map"]), EOFError, obj["map"]], stressed
    end
  end
