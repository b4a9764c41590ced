# frozen_string_literal: true

require_relative "test_helper"
require "stringio"
require_relative "../fuzz/runner"

# The quick fuzz (issue 8, "Fuzzing") as part of the suite, the same run as
# `rake fuzz:quick`: the saved regressions replayed, each libFuzzer harness
# for FUZZ_SECONDS (20), and the differential check with FUZZ_MUTATIONS
# (8,000) mutations of the seed corpus. A crash, a leak, a hang or a
# disagreement with the reference decoders fails it; the failure names the
# finding and where its input was saved. fuzz/README.md says what each open
# finding is and how FUZZ_ALLOW looks past it.
#
# The harnesses need clang with libFuzzer (bin/setup installs clang and
# libclang-rt-14-dev); without it that test skips and says so. The
# differential check runs here, in this process, on whatever build of the
# extension the suite runs (a sanitizer build under RINGSPUN_SANITIZE).
class TestFuzz < RingspunTest::Case
  SECONDS = Integer(ENV.fetch("FUZZ_SECONDS", "20"))
  MUTATIONS = Integer(ENV.fetch("FUZZ_MUTATIONS", "8000"))
  REF = RingspunFuzz::ChunkedReference

  def setup
    super
    # Three harnesses, their builds and the regressions: well past the
    # watchdog's default minute.
    RingspunTest::Watchdog.arm("#{self.class}##{name}", 3 * SECONDS + 300)
  end

  # Prints the run's report (the execution counts the README quotes) and
  # keeps it for the failure message.
  def report(text)
    $stdout.puts "\n#{text}"
    $stdout.flush
    text
  end

  # ---- the reference chunked decoder itself ------------------------------------------

  def test_the_reference_chunked_decoder_reads_rfc_9112_bodies
    r = REF.decode("4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nExpires: never\r\n\r\nnext request")
    assert_equal [:ok, "Wikipedia", 46], [r.status, r.payload, r.consumed]
    r = REF.decode("0\r\n\r\n")
    assert_equal [:ok, "", 5], [r.status, r.payload, r.consumed]
    r = REF.decode("A \t;x\r\n0123456789\r\n000\r\n\r\n")
    assert_equal [:ok, "0123456789"], [r.status, r.payload]
  end

  def test_the_reference_chunked_decoder_says_where_a_body_goes_wrong
    # [body, status, offset of the first byte no valid body could have]
    { "3\nabc" => 1, "3\r\nabcd\r\n" => 6, "3\r\rabc" => 2, "g\r\n" => 0, "3x\r\n" => 1, "\r\n" => 0,
      "0\r\n\r\r" => 4, "0\r\nT: v\n" => 7, "8000000000000000\r\n" => 15,
      "1;#{'e' * 8193}\r\n" => 2 + 8192, "0\r\n#{'t' * 8193}" => 3 + 8192 }.each do |body, offset|
      r = REF.decode(body)
      assert_equal [:invalid, offset], [r.status, r.offset], body.inspect[0, 40]
    end
    r = REF.decode("7fffffffffffffff\r\nabc")
    assert_equal [:truncated, "abc"], [r.status, r.payload]
    ["", "3", "3\r", "3\r\nab", "3\r\nabc\r", "0\r\n", "0\r\nT: v\r\n", "0\r\n\r"].each do |body|
      assert_equal :truncated, REF.decode(body).status, body.inspect
    end
  end

  # ---- the quick run ---------------------------------------------------------------------

  def test_the_decoders_agree_with_the_reference_decoders
    out = StringIO.new
    diff, problems = RingspunFuzz::Runner.differential(mutations: MUTATIONS, out: out)
    text = report(out.string)
    assert_equal RingspunFuzz::Differential::FAMILIES.sort, diff.keys.sort
    assert_empty problems, "the differential check disagrees with the reference (FUZZ_ALLOW: see fuzz/README.md):\n#{text}"
  end

  def test_the_libfuzzer_harnesses_find_nothing_in_the_quick_run
    skip "fuzz harnesses: #{RingspunFuzz::Runner.compiler_error}" unless RingspunFuzz::Runner.compiler

    out = StringIO.new
    results, problems = RingspunFuzz::Runner.fuzz_all(seconds: SECONDS, out: out)
    text = report(out.string)
    assert_equal RingspunFuzz::Runner.harness_names, results.map(&:name)
    results.each { |r| assert_operator r.execs, :>, 0, "#{r.name} ran no input (see #{r.log})" }
    assert_empty problems, "the quick fuzz found something (FUZZ_ALLOW: see fuzz/README.md):\n#{text}"
  end
end
