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

  # One worker process per core (here 2, as asked), each serving; TERM to
  # the server stops every worker and reaps it.
  def test_file_server_runs_worker_processes_and_stops_them_on_term
    skip "curl is not installed" unless system("command -v curl >/dev/null 2>&1")

    Dir.mktmpdir("ringspun-fs") do |root|
      data = Random.new(5).bytes(700_000)
      File.binwrite(File.join(root, "f.bin"), data)
      out_r, out_w = IO.pipe
      pid = Process.spawn(ENV_FOR_EXAMPLES, RingspunTest::RUBY, "-I", File.join(RingspunTest::ROOT, "lib"),
                          File.join(EXAMPLES, "file_server.rb"), root, "0", "2", out: out_w, err: out_w, in: File::NULL)
      out_w.close
      line = out_r.gets.to_s
      assert_match(/listening on 127\.0\.0\.1:\d+ \((io_uring|epoll), 2 worker processes\)/, line)
      url = "http://127.0.0.1:#{line[/:(\d+)/, 1]}/f.bin"
      workers = children_of(pid, want: 2)
      assert_equal 2, workers.size, "worker processes"
      [[], ["--compressed"]].each do |opts|
        got = IO.popen(["curl", "-sS", *opts, url], "rb", &:read)
        assert_equal data, got, "curl #{opts.join(' ')}"
      end
      Process.kill(:TERM, pid)
      status = wait_child(pid, 20)
      assert status.success?, "the server exits 0 after TERM: #{status.inspect}"
      workers.each { |w| refute File.exist?("/proc/#{w}"), "worker #{w} left behind" }
    ensure
      out_r&.close
      out_w&.close unless out_w&.closed?
      Process.kill(:KILL, pid) if pid && !status
    end
  end

  private

  # The child processes of pid, once there are `want` of them (the server
  # says it listens before it forks), or what there are after 5 s.
  def children_of(pid, want:)
    deadline = now + 5
    loop do
      kids = Dir.children("/proc/#{pid}/task").flat_map do |tid|
        File.read("/proc/#{pid}/task/#{tid}/children").split.map(&:to_i)
      end
      return kids if kids.size >= want || now > deadline

      sleep 0.01
    end
  end

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
