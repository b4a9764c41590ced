# frozen_string_literal: true

require "fileutils"
require "json"
require "open3"
require "rbconfig"
require_relative "case"
require_relative "child"

module Bench
  # The peer libraries Ringspun is measured against, from their own bundle
  # (bench/peers/Gemfile), one Gemfile group per peer.
  #
  # The runner calls {.install} once before the cases: it installs each group
  # into bench/peers/vendor/ (or finds it there) and writes what happened to
  # bench/out/peers.json. A contender process calls {.load}, which sets up
  # that one group with Bundler and requires the peer, or raises {Skip} with
  # the reason it cannot: the install's own error, or the load's. A peer
  # that does not install is reported as skipped, never faked.
  #
  #   contender(:polyphony, "Polyphony 1.6 IO.double_splice") do |params, meter|
  #     Bench::Peers.load(:polyphony)
  #     ...
  #   end
  module Peers
    DIR = File.expand_path("../../peers", __dir__)
    # Ruby 3.1 keeps the last releases that run on it; later Rubies take the
    # latest (and Falcon), from a Gemfile and lockfile of their own.
    CURRENT = RUBY_VERSION >= "3.2"
    GEMFILE = File.join(DIR, CURRENT ? "current.gemfile" : "Gemfile")
    VENDOR = File.join(DIR, "vendor")
    STATUS = File.expand_path("../../out/peers.json", __dir__)

    Peer = Struct.new(:group, :name, :library, keyword_init: true)

    TIMEOUT_NOTE = "on this Ruby its contender processes define IO#timeout to return nil: Async's " \
                   "IO hooks call it, and Ruby 3.2 added it"

    PEERS = if CURRENT
              { async: Peer.new(group: :async, name: "Async with io-event", library: "async"),
                falcon: Peer.new(group: :falcon, name: "Falcon", library: "falcon"),
                carbon_fiber: Peer.new(group: :carbon_fiber, name: "Carbon Fiber", library: "carbon_fiber") }.freeze
            else
              { polyphony: Peer.new(group: :polyphony, name: "Polyphony 1.6", library: "polyphony"),
                async: Peer.new(group: :async, name: "Async 2.24 with io-event 1.11", library: "async") }.freeze
            end

    # The gems whose locked versions the report gives, by group.
    GEMS = { polyphony: %w[polyphony], async: %w[async io-event], falcon: %w[falcon rack],
             carbon_fiber: %w[carbon_fiber] }.freeze

    module_function

    # Installs every peer's group that can be installed, each on its own so
    # one that fails to build does not take the others down, and records
    # the outcome for the contender processes.
    #
    # @return [Hash{Symbol=>String,nil}] group => why it is missing (nil: installed)
    def install(log: $stderr)
      outcome = PEERS.keys.to_h { |group| [group, install_group(group, log)] }
      FileUtils.mkdir_p(File.dirname(STATUS))
      File.write(STATUS, JSON.pretty_generate(outcome.transform_values { |why| { installed: why.nil?, reason: why } }))
      outcome
    end

    # Makes one peer loadable in this (contender) process and requires it.
    # @param group [Symbol] a key of {PEERS}
    # @raise [Skip] when the peer did not install or does not load here
    def load(group)
      peer = PEERS.fetch(group) { raise Skip, "no #{group} peer on Ruby #{RUBY_VERSION} (#{File.basename(GEMFILE)})" }
      why = recorded_failure(group)
      raise Skip, "#{peer.name} did not install: #{why}" if why

      bundle_env(group).each { |key, value| ENV[key] = value }
      require "bundler"
      Bundler.setup(group)
      prepare(group)
      require peer.library
    rescue LoadError, StandardError => e
      raise if e.is_a?(Skip)

      raise Skip, "#{peer.name} does not load: #{e.class}: #{e.message.lines.first&.strip}"
    end

    # What each peer's install produced, for the report's machine facts:
    # the locked versions of the peers' own gems, or why one is missing.
    # @param outcome [Hash] from {.install}
    # @return [String]
    def summary(outcome)
      locked = File.exist?("#{GEMFILE}.lock") ? File.read("#{GEMFILE}.lock") : ""
      version = ->(gem) { locked[/^    #{Regexp.escape(gem)} \(([^)]+)\)$/, 1] || "?" }
      outcome.map do |group, why|
        gems = GEMS.fetch(group)
        what = why ? "not installed: #{why}" : gems.map { |gem| "#{gem} #{version.call(gem)}" }.join(", ")
        what += " (#{TIMEOUT_NOTE})" if group == :async && !why && !IO.method_defined?(:timeout)
        "#{PEERS.fetch(group).name}: #{what}"
      end.join("; ")
    end

    # The environment to run one of a peer's programs (Falcon's server) in
    # another process, after {.install}.
    # @raise [Skip] when the peer is not in this Ruby's bundle or did not install
    def program_env(group)
      peer = PEERS.fetch(group) { raise Skip, "no #{group} peer on Ruby #{RUBY_VERSION} (#{File.basename(GEMFILE)})" }
      why = recorded_failure(group)
      raise Skip, "#{peer.name} did not install: #{why}" if why

      bundle_env(group)
    end

    # ---- internals ---------------------------------------------------------------------

    def install_group(group, log)
      env = bundle_env(group)
      return nil if bundle(env, "check").first

      log.puts("bench: installing #{PEERS.fetch(group).name} into #{VENDOR}")
      ok, out = bundle(env, "install")
      return nil if ok

      why = out.lines.map(&:strip).reject(&:empty?).last(3).join(" / ")
      log.puts("bench: #{PEERS.fetch(group).name} did not install: #{why}")
      why.empty? ? "bundle install failed" : why
    end

    # The environment for Bundler on the peers' Gemfile with only `group`
    # wanted; it starts from outside any bundle the runner itself runs in.
    def bundle_env(group)
      others = PEERS.keys - [group]
      Child.outside_bundle.merge(
        "BUNDLE_GEMFILE" => GEMFILE, "BUNDLE_PATH" => VENDOR,
        "BUNDLE_APP_CONFIG" => File.join(DIR, ".bundle"), "BUNDLE_WITHOUT" => others.join(":")
      )
    end

    def bundle(env, *args)
      out, status = Open3.capture2e(env, *bundle_command, *args, chdir: DIR)
      [status.success?, out]
    rescue SystemCallError => e
      [false, "cannot run bundle: #{e.message}"]
    end

    # Bundler of the running Ruby: the one on PATH may be another Ruby's
    # (Debian's /usr/bin/bundle is 3.1's), which would resolve for that Ruby.
    def bundle_command
      own = File.join(RbConfig::CONFIG["bindir"], "bundle")
      File.executable?(own) ? [own] : [RbConfig.ruby, "-S", "bundle"]
    end

    def recorded_failure(group)
      return nil unless File.exist?(STATUS)

      entry = JSON.parse(File.read(STATUS))[group.to_s]
      entry && !entry["installed"] ? entry["reason"] : nil
    end

    # What a peer needs on this Ruby before it is required.
    def prepare(group)
      return unless group == :async
      return if IO.method_defined?(:timeout)

      # Async 2.24's io_read/io_write/io_wait hooks call IO#timeout, which
      # Ruby 3.2 added; on 3.1 every IO call under its scheduler raises
      # NoMethodError. This process defines it as "no timeout", which is
      # what 3.2 returns for an IO with none set. RESULTS.md says so.
      IO.class_eval { def timeout = nil }
    end
  end

  # Fibers under Async's scheduler, behind the interface of Bench::Fibers:
  # one Async task per spawn, all inside one top-level Async block.
  class AsyncTasks
    def initialize
      @failures = []
    end

    def check!
      Peers.load(:async)
    end

    def run
      check!
      value = Async do |task|
        @task = task
        yield self
      end.wait
      raise @failures.first unless @failures.empty?

      value
    end

    # A task's error is kept and fails the run once the others have ended
    # (Async would only log it).
    def spawn
      @task.async do
        yield
      rescue StandardError => e
        @failures << e
      end
    end
  end

  # Fibers under Polyphony, behind the interface of Bench::Fibers: one
  # `spin` per spawn, awaited by the main fiber.
  class PolyphonyTasks
    def initialize
      @fibers = []
      @failures = []
    end

    def check!
      Peers.load(:polyphony)
    end

    def run
      check!
      value = yield self
      # Tasks may spawn tasks: await until none is left.
      @fibers.shift.await until @fibers.empty?
      raise @failures.first unless @failures.empty?

      value
    end

    # Polyphony would re-raise a fiber's error in its parent at once; keep
    # it and fail the run once the others have ended.
    def spawn
      @fibers << spin do
        yield
      rescue StandardError => e
        @failures << e
      end
    end
  end
end
