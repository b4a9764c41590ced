# frozen_string_literal: true

module Bench
  # Raised inside a contender process that cannot run here (io_uring refused,
  # a peer gem missing); the suite reports the contender as skipped, with
  # the reason, instead of failing or faking a number.
  class Skip < StandardError; end

  # One benchmark case: the job, its sizes, its contenders and the one the
  # others are compared against. A file under bench/cases/ describes one:
  #
  #   Bench.define(:fiber_roundtrip) do
  #     title "Fiber round trip over a pipe pair"
  #     metric "round trips/s"
  #     sizes quick: { round_trips: 100_000 }, full: { round_trips: 1_000_000 }
  #     reference :threads
  #     contender(:threads, "two threads") { |params, meter| meter.measure { ... } }
  #   end
  #
  # The runner reads the description in its own process; each contender's
  # block runs only in a fresh child process (bench/contender.rb).
  class Case
    Contender = Struct.new(:key, :label, :body)

    attr_reader :name, :contenders

    def initialize(name)
      @name = name.to_s
      @contenders = {}
      @sizes = {}
      @bytes_per_unit = nil
      @needs = ->(_params) { {} }
    end

    # @!group Description (called from the case file)

    def title(text = nil)
      text ? @title = text : @title || @name
    end

    # What the case shows and how each contender does the job (Markdown).
    def about(text = nil)
      text ? @about = text : @about.to_s
    end

    # The unit of the measured rate, e.g. "messages/s".
    def metric(text = nil)
      text ? @metric = text : @metric
    end

    # Payload bytes per unit of work; when set, the report adds CPU s/GiB
    # and objects/MiB.
    def bytes_per_unit(bytes = nil)
      bytes ? @bytes_per_unit = bytes : @bytes_per_unit
    end

    def sizes(by_mode = nil)
      by_mode ? @sizes = by_mode : @sizes
    end

    # The contender the ratios are taken against.
    def reference(key = nil)
      key ? @reference = key.to_s : @reference
    end

    # Resources a contender process needs, from the case's parameters:
    # { fds: Integer, threads: Integer }. The child raises its limits to
    # match before the work starts.
    def needs(&block)
      block ? @needs = block : @needs
    end

    def contender(key, label, &body)
      @contenders[key.to_s] = Contender.new(key.to_s, label, body)
    end

    # @!endgroup

    # @return [Hash] the parameters for `mode` ("quick" or "full")
    def params(mode)
      @sizes.fetch(mode.to_sym) { raise ArgumentError, "case #{@name} has no #{mode} size" }
    end

    def validate!
      raise ArgumentError, "case #{@name}: no contenders" if @contenders.empty?
      raise ArgumentError, "case #{@name}: no metric" unless @metric
      return if @contenders.key?(@reference)

      raise ArgumentError, "case #{@name}: reference #{@reference.inspect} is not a contender"
    end
  end

  CASE_DIR = File.expand_path("../../cases", __dir__)

  class << self
    # Defines a case; called by the files under bench/cases/.
    def define(name, &block)
      bench_case = Case.new(name)
      bench_case.instance_eval(&block)
      bench_case.validate!
      registry[bench_case.name] = bench_case
    end

    # @param only [Array<String>] case names; empty means every case
    # @return [Array<Case>] in file name order
    def load_cases(only = [])
      Dir[File.join(CASE_DIR, "*.rb")].sort.each { |path| require path }
      return registry.values if only.empty?

      only.map { |name| registry.fetch(name) { raise ArgumentError, "no case #{name} in #{CASE_DIR}" } }
    end

    # Loads only the case's own file: one case per file, named after it.
    def load_case(name)
      path = File.join(CASE_DIR, "#{name}.rb")
      raise ArgumentError, "no case #{name} in #{CASE_DIR}" unless File.file?(path)

      require path
      registry.fetch(name.to_s)
    end

    private

    def registry
      @registry ||= {}
    end
  end
end
