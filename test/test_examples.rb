# frozen_string_literal: true

require_relative "test_helper"

# Every program in examples/ runs here, on the Ruby running the suite, as a
# user would run it (small sizes): the demo (which starts file_server.rb and
# threaded_file_server.rb and fetches from both with curl) and the copy demo
# on each backend. Each must exit 0, which they do only when every checksum
# matched.
class TestExamples < RingspunTest::Case
  EXAMPLES = File.join(RingspunTest::ROOT, "examples")
  # The examples run on the plain build: they start curl, which hangs under
  # a sanitizer runtime, and LD_PRELOAD has left ENV (test_helper.rb).
  ENV_FOR_EXAMPLES = { "RINGSPUN_EXT" => nil, "RINGSPUN_SANITIZER_PRELOAD" => nil }.freeze

  def test_every_example_is_run_here
    ran = %w[demo.rb file_server.rb threaded_file_server.rb copy_demo.rb]
    assert_equal ran.sort, Dir.children(EXAMPLES).grep(/\.rb\z/).sort
  end

  def test_demo_serves_files_to_curl_byte_exact
    skip "curl is not installed" unless system("command -v curl >/dev/null 2>&1")

    out, status = run_example("demo.rb", "--size", "4", "--clients", "4", "--rounds", "1")
    assert status.success?, "demo.rb failed:\n#{out}"
    assert_match(/all checksums OK/, out)
    assert_equal 2, out.scan(%r{ 4/4\n}).size, out
  end

  def test_copy_demo_on_each_backend
    %w[io_uring epoll].each do |backend|
      next if backend == "io_uring" && RingspunTest.io_uring_unavailable

      out, status = run_example("copy_demo.rb", "--clients", "20", "--size", "2", "--backend", backend)
      assert status.success?, "copy_demo.rb --backend #{backend} failed:\n#{out}"
      assert_match(/all 20 checksums OK, both ways/, out)
      assert_match(/Ringspun, #{backend} backend/, out)
    end
  end

  private

  # Runs examples/<name> in a fresh Ruby; returns [stdout and stderr, status].
  def run_example(name, *args, timeout: 180)
    r, w = IO.pipe
    pid = Process.spawn(ENV_FOR_EXAMPLES, RingspunTest::RUBY, "-I", File.join(RingspunTest::ROOT, "lib"),
                        File.join(EXAMPLES, name), *args, out: w, err: w, in: File::NULL)
    w.close
    out = Thread.new { r.read }
    status = wait_child(pid, timeout)
    [out.value, status]
  ensure
    r&.close
    w&.close unless w&.closed?
  end
end
