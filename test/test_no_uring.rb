# frozen_string_literal: true

require_relative "test_helper"

# io_uring refused: where io_uring_setup(2) fails (Docker's default seccomp
# profile, kernel.io_uring_disabled) Ringspun must pick epoll by itself and
# work. test/support/no_uring.c makes that happen honestly: a seccomp filter
# makes the real system call fail with EPERM, then it execs the command.
#
# The whole suite can run that way too: RINGSPUN_TEST_NO_URING=1 (see
# test_helper.rb) restarts the test command under the launcher; the
# io_uring classes then skip.
class TestNoUring < RingspunTest::Case
  def launcher
    RingspunTest::NoUring.path || skip("io_uring refusal not testable: #{RingspunTest::NoUring.error}")
  end

  # Runs code in `ruby -Ilib -rringspun` under the launcher; returns stdout
  # after checking the process ended well.
  def run_refused(code, env: {}, expect_success: true)
    out, err, status = ruby_subprocess(code, env: env, launcher: [launcher])
    assert_equal expect_success, status.success?, "under no_uring: #{err}"
    [out, err, status]
  end

  def test_the_launcher_really_refuses_io_uring_setup
    # io_uring_setup(8, NULL) straight through syscall(2): the kernel says
    # EFAULT (no params to read), unless the filter answers EPERM first. Any
    # other system call still works.
    code = <<~RUBY
      result = begin
        syscall(425, 8, 0)
        "no error"
      rescue SystemCallError => e
        e.class.name
      end
      print result, " ", File.read("/proc/self/status")[/^Seccomp:\\s*(\\d+)/, 1], " ", IO.pipe.size
    RUBY
    out, = run_refused(code, env: { "RUBYOPT" => "-W0" })
    assert_equal "Errno::EPERM 2 2", out
    unless RingspunTest.io_uring_unavailable || RingspunTest::NoUring.active?
      plain, _, status = ruby_subprocess(code, env: { "RUBYOPT" => "-W0" })
      assert_equal ["Errno::EFAULT 0 2", true], [plain, status.success?]
    end
  end

  def test_auto_picks_epoll_and_the_runtime_works
    code = <<~'RUBY'
      require "socket"
      require "timeout"
      result = Ringspun.run do
        # pipe IO between fibers
        r, w = IO.pipe
        Ringspun.spin { w.write("x" * 1_500_000); w.close }
        piped = r.read.bytesize
        r.close
        # sleep, and a timeout around a read that never completes
        slept = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        sleep 0.02
        slept = Process.clock_gettime(Process::CLOCK_MONOTONIC) - slept >= 0.019
        idle_r, idle_w = IO.pipe
        timed_out = begin
          Timeout.timeout(0.02) { idle_r.read(1) }
        rescue Timeout::Error
          :timeout
        end
        idle_r.close
        idle_w.close
        # a small echo server with concurrent clients
        server = TCPServer.new("127.0.0.1", 0)
        Ringspun.spin do
          20.times do
            c = server.accept
            Ringspun.spin { c.write(c.read); c.close }
          end
        end
        sizes = []
        echoed = 20.times.map do |i|
          Ringspun.spin do
            s = TCPSocket.new("127.0.0.1", server.local_address.ip_port)
            s.write("client #{i}" * 1000)
            s.close_write
            sizes[i] = s.read.bytesize
            s.close
          end
        end
        q = Queue.new
        Thread.new { q << :from_thread }
        from_thread = q.pop
        sleep 0.01 while echoed.any?(&:alive?)
        server.close
        [Fiber.scheduler.backend, piped, slept, timed_out, sizes.compact.size, sizes.sum, from_thread,
         Fiber.scheduler.pending_operations]
      end
      print result.inspect
    RUBY
    expected_sizes = 20.times.sum { |i| "client #{i}".bytesize * 1000 }
    out, = run_refused(code)
    assert_equal [:epoll, 1_500_000, true, :timeout, 20, expected_sizes, :from_thread, 0].inspect, out
  end

  def test_forcing_io_uring_raises_eperm
    code = <<~RUBY
      a = begin
        Ringspun::Scheduler.new(backend: :io_uring)
        "no error"
      rescue SystemCallError => e
        e.class.name
      end
      b = begin
        Ringspun.run(backend: :io_uring) { 1 }
      rescue SystemCallError => e
        e.class.name
      end
      print a, " ", b, " ", Fiber.scheduler.inspect, " ", Ringspun.run(backend: :auto) { Fiber.scheduler.backend }
    RUBY
    out, = run_refused(code)
    assert_equal "Errno::EPERM Errno::EPERM nil epoll", out
  end

  def test_ringspun_backend_io_uring_under_refusal_fails_with_eperm
    code = 'print Ringspun.run { Fiber.scheduler.backend }'
    _, err, status = run_refused(code, env: { "RINGSPUN_BACKEND" => "io_uring" }, expect_success: false)
    assert_equal 1, status.exitstatus
    assert_match(/Errno::EPERM/, err)
    out, = run_refused(code, env: { "RINGSPUN_BACKEND" => "auto" })
    assert_equal "epoll", out
  end

  def test_forked_child_under_refusal_gets_an_epoll_backend
    code = <<~'RUBY'
      result = Ringspun.run do
        r, w = IO.pipe
        pid = fork do
          r.close
          inner = Ringspun.run { a, b = IO.pipe; Ringspun.spin { b.write("c" * 70_000); b.close }; [Fiber.scheduler.backend, a.read.bytesize] }
          w.write(inner.inspect)
          exit!(0)
        end
        w.close
        said = r.read
        [said, Process.wait2(pid)[1].exitstatus]
      end
      print result.inspect
    RUBY
    out, = run_refused(code)
    assert_equal ['[:epoll, 70000]', 0].inspect, out
  end
end
