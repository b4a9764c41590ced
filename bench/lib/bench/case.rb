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

    attr_reader :name, :contenders, :targets

    def initialize(name)
      @name = name.to_s
      @contenders = {}
      @sizes = {}
      @bytes_per_unit = nil
      @needs = ->(_params) { {} }
      @setup = nil
      @targets = []
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

    # Prepares what every contender reads, once per run, in the runner's
    # process: the block gets the case's parameters and a {Fixtures} and
    # returns a Hash (file paths, say) merged into the parameters each
    # contender process receives. The report shows only the sizes.
    def setup(&block)
      block ? @setup = block : @setup
    end

    # A target an issue states, shown as a row with its measured value and
    # whether it is met (see {Target}):
    #
    #   target issue: 3, text: "double_splice at least 0.95x the C loop",
    #          contender: :ringspun_io_uring, rate_vs: :c_splice, at_least: 0.95
    def target(**spec)
      @targets << Target.new(**spec)
    end

    # @!endgroup

    # @return [Hash] extra parameters for the contenders, from {#setup}
    def prepare(params, fixtures)
      @setup ? @setup.call(params, fixtures) : {}
    end

    # @return [Hash] the parameters for `mode` ("quick" or "full")
    def params(mode)
      @sizes.fetch(mode.to_sym) { raise ArgumentError, "case #{@name} has no #{mode} size" }
    end

    def validate!
      raise ArgumentError, "case #{@name}: no contenders" if @contenders.empty?
      raise ArgumentError, "case #{@name}: no metric" unless @metric
      raise ArgumentError, "case #{@name}: reference #{@reference.inspect} is not a contender" unless @contenders.key?(@reference)

      @targets.each do |target|
        unknown = target.contenders - @contenders.keys
        raise ArgumentError, "case #{@name}: target names no contender #{unknown.join(', ')}" unless unknown.empty?
      end
    end
  end

  # A target one of the issues states for a case, as a comparison of one
  # contender's figure:
  #
  # - `rate_vs: other`: the median over rounds of its rate / other's rate;
  # - `cpu_vs: other`: the median over rounds of its CPU seconds per unit /
  #   other's;
  # - `rss_vs: other`: its peak RSS / other's (peaks over every round);
  # - `objects_per_mib: true`: its Ruby objects allocated per MiB (the
  #   median over rounds);
  #
  # against a bound: `at_least:`, `at_most:` or `below:`.
  class Target
    KINDS = %i[rate_vs cpu_vs rss_vs objects_per_mib].freeze

    attr_reader :issue, :text, :contender, :kind, :other, :bound, :comparison

    def initialize(issue:, text:, contender:, at_least: nil, at_most: nil, below: nil, **kind)
      @issue = issue
      @text = text
      @contender = contender.to_s
      raise ArgumentError, "a target compares one figure: one of #{KINDS.join(', ')}" unless kind.size == 1 && KINDS.include?(kind.keys.first)

      @kind, other = kind.first
      @other = @kind == :objects_per_mib ? nil : other.to_s
      bounds = { at_least: at_least, at_most: at_most, below: below }.compact
      raise ArgumentError, "a target needs one bound: at_least, at_most or below" unless bounds.size == 1

      @comparison, @bound = bounds.first
    end

    # @return [Array<String>] the contenders it reads
    def contenders = [@contender, @other].compact

    # @return [Boolean] whether `value` meets the bound
    def met?(value)
      case @comparison
      when :at_least then value >= @bound
      when :at_most then value <= @bound
      when :below then value < @bound
      end
    end

    # "≥ 0.95x", "≤ 1.25x", "< 1"
    def bound_text
      sign = { at_least: ">=", at_most: "<=", below: "<" }.fetch(@comparison)
      @kind == :objects_per_mib ? "#{sign} #{@bound}" : "#{sign} #{format('%.2f', @bound)}x"
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

    # Adds issue targets to a case from outside its file (bench/targets.rb).
    # A case not loaded in this run is passed over; a target that names a
    # contender the case does not have is left out with a warning, and one
    # the case already states is not added twice.
    def add_targets(name, &block)
      bench_case = registry[name.to_s] or return
      extra = Case.new(name)
      extra.instance_eval(&block)
      extra.targets.each do |target|
        missing = target.contenders - bench_case.contenders.keys
        if missing.empty?
          bench_case.targets << target unless bench_case.targets.any? { |t| same_target?(t, target) }
        else
          warn("bench: #{name}: target #{target.text.inspect} left out: no contender #{missing.join(', ')}")
        end
      end
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

    def same_target?(one, other)
      %i[issue contender kind other comparison bound].all? { |field| one.public_send(field) == other.public_send(field) }
    end
  end
end
