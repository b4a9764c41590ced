# frozen_string_literal: true

# Soak: many concurrent transfers through every primitive for a long time,
# checking every byte, watching memory (issue 8).
#
#   bundle exec rake soak SOAK_SECONDS=600
#   ruby -Ilib soak/soak.rb                  (the same, without compiling)
#
# One Ringspun.run. SOAK_FIBERS (2,000) worker fibers each run transfers one
# after another until SOAK_SECONDS (60) have passed: a random primitive
# (test/support/faults.rb has them all as source -> destination transfers),
# over random streams (loopback TCP, UNIX socket pairs, pipes), a random
# payload size (log-uniform, 1 B to 256 KiB, random or compressible bytes),
# a source that trickles in random pieces with random pauses, and, in about
# one transfer in three, a fault: the destination's reader closes or resets,
# the source stops early or resets, a Timeout fires, or an exception is
# raised into the transfer. Each transfer adds its feeder and sink fibers,
# so about three times SOAK_FIBERS fibers are alive; at most about eight fds
# per worker (the open-file limit here is 20,000).
#
# Every SOAK_REPORT_EVERY (10) seconds one line: transfers done, bytes
# delivered, errors by class, RSS, the Ruby heap's pages, fds, fibers,
# operations in flight. At the end a summary; the exit status is 0 only
# with no checksum mismatch, no unexpected error and an RSS whose last
# sample during the run is within 10 % of the first sample after the
# warm-up. With 2,000 workers the Ruby heap, malloc's arenas and the buffer
# pools take a few minutes to reach their working size, longer on a busy
# machine, so the warm-up lasts the first fifth of the run (at least 20 s)
# and then until RSS grew less than 2 % in a minute; an RSS that never
# settles fails the run.
#
# Expected outcomes, per fault (anything else is an unexpected error):
#   none                  completes, output checksum = payload checksum
#   destination closes    EPIPE/ECONNRESET, or completes if every byte was
#   or resets             already in the kernel's buffers
#   source cut short      an encoder or a plain copy completes with exactly
#                         the bytes fed; a decoder raises its truncation
#                         error (Zlib::BufError, EOFError)
#   source resets         ECONNRESET
#   Timeout               completes (checksum) or Timeout::Error
#   raise into it         the raised exception
# Output of a failed plain copy must be a prefix of the payload.

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
$LOAD_PATH.unshift(File.expand_path("../test", __dir__))
require "ringspun"
require "openssl"
require "support/faults"

module Soak
  include RingspunTest::Faults

  SECONDS = Float(ENV.fetch("SOAK_SECONDS", "60"))
  FIBERS = Integer(ENV.fetch("SOAK_FIBERS", "2000"))
  REPORT_EVERY = Float(ENV.fetch("SOAK_REPORT_EVERY", "10"))
  SEED = Integer(ENV.fetch("SOAK_SEED", Random.new_seed.to_s[0, 9]))
  # The warm-up lasts at least this long, and until RSS grew less than
  # SETTLED_GROWTH over the last SETTLED_WINDOW seconds.
  WARMUP = [SECONDS / 5, 20.0].max
  SETTLED_WINDOW = 60.0
  SETTLED_GROWTH = 0.02

  # Relative weights of the faults.
  FAULTS = { none: 66, dst_close: 6, dst_reset: 4, src_cut: 7, src_reset: 5, timeout: 8, raise: 4 }.freeze
  FAULT_TABLE = FAULTS.flat_map { |f, w| [f] * w }.freeze

  class Interrupted < StandardError; end

  class Stats
    attr_reader :transfers, :bytes, :errors, :mismatches, :unexpected, :faults, :per_spec

    def initialize
      @transfers = 0
      @bytes = 0
      @errors = Hash.new(0)
      @faults = Hash.new(0)
      @per_spec = Hash.new(0)
      @mismatches = []
      @unexpected = []
    end

    def record(spec, fault, error, delivered)
      @transfers += 1
      @bytes += delivered
      @faults[fault] += 1
      @per_spec[spec.name] += 1
      @errors[error.class.name] += 1 if error
    end

    def mismatch(what)
      @mismatches << what
      warn "MISMATCH #{what}"
    end

    def unexpected_error(what)
      @unexpected << what
      warn "UNEXPECTED #{what}"
    end
  end

  module_function

  def now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def rss_kib
    File.read("/proc/self/status")[/^VmRSS:\s+(\d+)/, 1].to_i
  end

  def fd_count
    Dir.children("/proc/self/fd").size
  end

  def sha(data)
    OpenSSL::Digest::SHA256.digest(data)
  end

  # 1 B to 256 KiB, log-uniform; random bytes or a compressible repetition.
  def payload(rng)
    size = (2**(rng.rand * 18)).to_i
    return rng.bytes(size) if rng.rand < 0.5

    unit = rng.bytes(1 + rng.rand(200))
    (unit * ((size / unit.bytesize) + 1)).byteslice(0, size)
  end

  # [fault, src kind, dst kind], the fault dropped to :none when the
  # primitive cannot take the streams it needs (a reset needs TCP).
  def plan(spec, rng)
    fault = FAULT_TABLE[rng.rand(FAULT_TABLE.size)]
    combos = spec.combos
    case fault
    when :dst_reset then combos = combos.select { |_, d| d == :tcp }
    when :src_reset then combos = combos.select { |s, _| s == :tcp }
    end
    return [fault, *combos[rng.rand(combos.size)]] unless combos.empty?

    [:none, *spec.combos[rng.rand(spec.combos.size)]]
  end

  def rig_options(fault, rng)
    pieces = Array.new(3) { 256 + rng.rand(64 * KIB) }
    pause = rng.rand < 0.5 ? 0 : rng.rand * 0.005
    case fault
    when :dst_close then { sink: :close, pieces: pieces, pause: pause }
    when :dst_reset then { sink: :reset, pieces: pieces, pause: pause }
    when :src_cut then { feed: :cut }
    when :src_reset then { feed: :reset }
    when :raise then { feed: :stall }
    else { pieces: pieces, pause: pause }
    end
  end

  # Runs the call under the fault: returns the error or nil.
  def call_under(fault, rig, rng)
    case fault
    when :timeout
      Timeout.timeout(0.0005 + (rng.rand * 0.05)) { rig.call }
    when :raise
      worker = Task.new { rig.call }
      rig.progress(0.05)
      status, error = worker.interrupt(Interrupted, "raised by the soak")
      raise error if status == :error
    else
      rig.call
    end
    nil
  rescue StandardError => e
    e
  end

  def one_transfer(stats, rng)
    spec = SPECS[rng.rand(SPECS.size)]
    fault, sk, dk = plan(spec, rng)
    data = payload(rng)
    rig = Rig.new(spec, sk, dk, data, **rig_options(fault, rng)).start
    error = call_under(fault, rig, rng)
    feeder, sink = rig.finish
    delivered = sink[0] == :ok ? sink[1].bytesize : 0
    stats.record(spec, fault, error, delivered)
    judge(stats, "#{spec} #{sk}->#{dk} #{fault} (#{data.bytesize} B)", spec, fault, rig, data, error, feeder, sink)
  ensure
    rig&.close_all
  end

  def judge(stats, what, spec, fault, rig, data, error, feeder, sink)
    return stats.unexpected_error("#{what}: the sink failed: #{Checks.describe(sink[1])}") unless sink[0] == :ok

    want = data
    ok_errors =
      case fault
      when :none then []
      when :dst_close, :dst_reset then PEER_GONE
      when :src_cut
        want = rig.input.byteslice(0, rig.cut_at) if spec.truncated == :prefix
        spec.truncated == :prefix ? [] : spec.truncated
      when :src_reset then [Errno::ECONNRESET]
      when :timeout then [Timeout::Error]
      when :raise then [Interrupted]
      end
    # The sink of a broken destination stopped reading: whatever the
    # outcome, it only holds a prefix.
    if error || %i[dst_close dst_reset].include?(fault)
      return stats.unexpected_error("#{what}: #{Checks.describe(error)}") if error && !ok_errors.include?(error.class)
      return unless Checks.identity?(spec) && !data.start_with?(sink[1])

      return stats.mismatch("#{what}: the #{sink[1].bytesize} bytes out are not a prefix of the payload")
    end
    return stats.unexpected_error("#{what}: completed, but #{ok_errors.map(&:name).join(' or ')} was due") if %i[src_reset raise].include?(fault) || (fault == :src_cut && spec.truncated != :prefix)
    return stats.unexpected_error("#{what}: the feeder ended with #{feeder.inspect}") if fault == :none && feeder != %i[ok fed]

    bytes, problem = Checks.decoded(spec, sink)
    return stats.mismatch("#{what}: #{problem}") if problem
    return if sha(bytes) == sha(want)

    stats.mismatch("#{what}: SHA-256 of the #{bytes.bytesize} bytes out differs from the #{want.bytesize} bytes' in")
  end

  def report(stats, began, samples)
    t = now - began
    rss = rss_kib
    samples << [t, rss]
    errors = stats.errors.sort_by { |_, n| -n }.map { |k, n| "#{k}=#{n}" }.join(" ")
    sched = Fiber.scheduler
    heap = GC.stat(:heap_allocated_pages) * 16 / 1024.0 # 16 KiB pages
    puts format("[%6.1fs] transfers %d  bytes %.1f MiB  mismatches %d  unexpected %d  rss %.1f MiB  " \
                "ruby heap %.1f MiB  fds %d  fibers %d  ops %d  errors: %s",
                t, stats.transfers, stats.bytes / 1048576.0, stats.mismatches.size, stats.unexpected.size,
                rss / 1024.0, heap, fd_count, sched ? sched.fiber_count : 0, sched ? sched.pending_operations : 0,
                errors.empty? ? "none" : errors)
    $stdout.flush
  end

  def run
    stats = Stats.new
    samples = []
    began = now
    deadline = began + SECONDS
    backend = nil
    puts "soak: #{FIBERS} worker fibers, #{SECONDS.round} s, seed #{SEED}, pid #{Process.pid}"
    Ringspun.run do
      backend = Fiber.scheduler.backend
      puts "soak: backend #{backend}"
      workers = Array.new(FIBERS) do |i|
        rng = Random.new(SEED + i)
        Ringspun.spin do
          sleep rng.rand * 0.5 # stagger the start
          one_transfer(stats, rng) while now < deadline
        rescue Exception => e # rubocop:disable Lint/RescueException -- a worker must never die silently
          stats.unexpected_error("worker #{i} died: #{e.class}: #{e.message}\n  #{e.backtrace.first(8).join("\n  ")}")
        end
      end
      reporter = Ringspun.spin do
        loop do
          sleep REPORT_EVERY
          report(stats, began, samples)
        end
      rescue Interrupted
        nil
      end
      sleep 0.1 while workers.any?(&:alive?)
      reporter.raise(Interrupted) if reporter.alive?
    end
    # After the run: the totals. Its RSS sample is not part of the verdict
    # (the fibers and their buffers are gone by then).
    report(stats, began, [])
    summary(stats, samples, began, backend)
  end

  # The samples after the warm-up: from the first one, past WARMUP, whose
  # RSS is within SETTLED_GROWTH of the RSS SETTLED_WINDOW seconds before.
  # How long the heap takes to reach its working size depends on how much
  # work was done, so on the machine's load, not on the clock alone. A run
  # whose RSS never settles has no samples after the warm-up: not flat.
  def after_warmup(samples)
    settled = samples.index do |t, rss|
      earlier = samples.select { |u, _| u <= t - SETTLED_WINDOW }.last
      t >= WARMUP && earlier && rss <= earlier.last * (1 + SETTLED_GROWTH)
    end
    settled ? samples.drop(settled) : []
  end

  def summary(stats, samples, began, backend)
    took = now - began
    after = after_warmup(samples)
    first = after.first&.last
    last = after.last&.last
    growth = first && last ? (last - first) * 100.0 / first : nil
    flat = growth && growth <= 10.0
    puts "soak summary: #{took.round} s on #{backend}, #{FIBERS} worker fibers, seed #{SEED}"
    puts "soak summary: #{stats.transfers} transfers, #{(stats.bytes / 1048576.0).round(1)} MiB delivered, " \
         "#{(stats.transfers / took).round} transfers/s"
    puts "soak summary: per primitive: #{stats.per_spec.sort.map { |k, n| "#{k}=#{n}" }.join(' ')}"
    puts "soak summary: faults injected: #{stats.faults.sort.map { |k, n| "#{k}=#{n}" }.join(' ')}"
    puts "soak summary: errors by class: #{stats.errors.sort.map { |k, n| "#{k}=#{n}" }.join(' ')}"
    puts "soak summary: checksum mismatches: #{stats.mismatches.size}; unexpected errors: #{stats.unexpected.size}"
    stats.unexpected.first(20).each { |u| puts "  unexpected: #{u}" }
    stats.mismatches.first(20).each { |m| puts "  mismatch: #{m}" }
    if growth
      puts format("soak summary: RSS first after warm-up (%.0f s) %.1f MiB, last %.1f MiB, peak %.1f MiB: %+.1f%% -> %s",
                  after.first.first, first / 1024.0, last / 1024.0, samples.map(&:last).max / 1024.0, growth,
                  flat ? "flat (within 10%)" : "NOT flat")
    elsif took < WARMUP + SETTLED_WINDOW + (2 * REPORT_EVERY)
      puts "soak summary: RSS: too short a run for a verdict (warm-up at least #{WARMUP.round} s)"
    else
      puts format("soak summary: RSS never settled (grew more than %d%% a minute to the end): %s MiB -> NOT flat",
                  (SETTLED_GROWTH * 100).round, samples.map { |_, r| (r / 1024.0).round }.join(" "))
    end
    short = took < WARMUP + SETTLED_WINDOW + (2 * REPORT_EVERY)
    ok = stats.mismatches.empty? && stats.unexpected.empty? && (flat || (short && growth.nil?))
    puts "soak summary: #{ok ? 'PASS' : 'FAIL'}"
    ok
  end
end

exit(Soak.run ? 0 : 1) if $PROGRAM_NAME == __FILE__
