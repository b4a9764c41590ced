# frozen_string_literal: true

# Runs one contender of one case in this (fresh) process and prints one JSON
# line on stdout for the runner: ruby bench/contender.rb CASE CONTENDER PARAMS_JSON
#
# Exit status: 0 measured, 3 skipped (the line says why), anything else failed.

$LOAD_PATH.unshift(File.expand_path("lib", __dir__))
require "json"
require "bench/case"
require "bench/meter"
require "bench/concurrency"

SKIPPED = 3

def main(case_name, key, params_json)
  bench_case = Bench.load_case(case_name)
  contender = bench_case.contenders.fetch(key) { abort "case #{case_name} has no contender #{key}" }
  params = JSON.parse(params_json, symbolize_names: true)
  Bench::Limits.ensure!(**bench_case.needs.call(params))
  meter = Bench::Meter.new(params)
  contender.body.call(params, meter)
  emit(meter.result)
rescue Bench::Skip => e
  emit(skipped: e.message)
  exit SKIPPED
end

def emit(record)
  $stdout.puts(JSON.generate(record))
  $stdout.flush
end

abort "usage: ruby bench/contender.rb CASE CONTENDER PARAMS_JSON" unless ARGV.size == 3
main(*ARGV)
