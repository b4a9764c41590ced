# frozen_string_literal: true

require_relative "test_helper"
require_relative "support/primitive_modes"

# What differs between the Rubies the suite runs on (README: Supported Rubies), checked
# on each of them.
class TestRubies < RingspunTest::Case
  def ruby_at_least?(*version)
    (RUBY_VERSION.split(".").map(&:to_i) <=> version) >= 0
  end

  # test/support/primitive_modes.rb gives Ruby 3.1 an IO#timeout for Async 2.24; from
  # 3.2 on, Ruby has its own, and the patch must not replace it.
  def test_io_timeout_is_rubys_own_from_3_2_and_the_test_patch_only_on_3_1
    timeout = IO.instance_method(:timeout)
    if ruby_at_least?(3, 2)
      assert_equal IO, timeout.owner
      assert_nil timeout.source_location, "IO#timeout on #{RUBY_VERSION} is not Ruby's own (C) method"
      refute_nil IO.instance_method(:timeout=).owner
    else
      assert_equal File.join(__dir__, "support", "primitive_modes.rb"), timeout.source_location&.first
      assert_nil $stdin.timeout
    end
  end

  # Rubies share this checkout; each must load the extension built for it
  # (lib/ringspun/<abi>/ringspun.so), or the one RINGSPUN_EXT names.
  def test_the_loaded_extension_is_this_rubys_build
    dlext = RbConfig::CONFIG["DLEXT"]
    loaded = $LOADED_FEATURES.grep(%r{/ringspun\.#{dlext}\z})
    assert_equal 1, loaded.size, "ringspun.#{dlext} loaded: #{loaded.inspect}"
    expected = ENV.fetch("RINGSPUN_EXT", "")
    expected = File.join(RingspunTest::ROOT, "lib", "ringspun", RbConfig::CONFIG["ruby_version"], "ringspun.#{dlext}") if expected.empty?
    assert_equal File.realpath(expected), File.realpath(loaded.first)
  end
end
