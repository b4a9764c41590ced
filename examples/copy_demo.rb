# frozen_string_literal: true

# Ringspun copy demo: many fibers copying one file over loopback at once.
#
# It writes a test file (pseudo-random bytes mixed with text, the same bytes
# every run) into a temporary directory, starts a TCP server on 127.0.0.1
# inside Ringspun.run that sends the whole file down every connection, and
# lets N client fibers download it at the same time, each computing the
# SHA-256 of what it received. Every checksum must equal the file's. Then it
# does the same job the classic way, one Ruby thread per client and per
# server connection with blocking IO and no scheduler, and prints the two
# side by side.
#
# What it shows: one thread and N fibers under Ringspun do the work of 2N+1
# threads, with stdlib File and Socket calls and no change to the code.
#
#   bundle exec ruby examples/copy_demo.rb [--clients N] [--size MIB] [--backend io_uring|epoll]
#
# CLIENTS and SIZE_MIB in the environment set the defaults (200, 32);
# RINGSPUN_BACKEND picks the backend as everywhere else. The exit status is
# non-zero when any checksum differs.

begin
  require "ringspun"
rescue LoadError
  # Run straight from a checkout without Bundler: use its lib/.
  $LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
  require "ringspun"
end
require "openssl"
require "optparse"
require "socket"
require "tmpdir"

module CopyDemo
  MIB = 1024 * 1024
  CHUNK = 64 * 1024
  Download = Struct.new(:digest, :bytes)

  # The file every client downloads: half pseudo-random bytes, half lines of
  # words, from a fixed seed.
  class TestFile
    WORDS = %w[fiber ring splice socket kernel buffer queue thread loopback
               checksum copy server client stream pipe event submit reap].freeze

    attr_reader :path, :size, :digest

    def initialize(dir, size)
      @path = File.join(dir, "payload.bin")
      @size = size
      @random = Random.new(20_261_122)
      @lines = Array.new(4096) { sentence }
    end

    # Writes the file and notes its SHA-256.
    def write
      sha = OpenSSL::Digest.new("SHA256")
      File.open(@path, "wb") do |file|
        each_block do |block|
          file.write(block)
          sha.update(block)
        end
      end
      @digest = sha.hexdigest
      self
    end

    private

    def each_block
      left = @size
      while left.positive?
        block = block_of([left, MIB].min)
        yield block
        left -= block.bytesize
      end
    end

    def block_of(bytes)
      half = bytes / 2
      text = +""
      text << @lines[@random.rand(@lines.size)] while text.bytesize < bytes - half
      @random.bytes(half) + text.byteslice(0, bytes - half)
    end

    def sentence
      "#{Array.new(@random.rand(4..14)) { WORDS[@random.rand(WORDS.size)] }.join(' ')}.\n"
    end
  end

  # The job both ways run: a server that sends the file on every connection
  # and `clients` downloads at once. It only spawns tasks; the way (fibers
  # or threads) decides what a task is and waits for them all.
  class CopyJob
    def initialize(path, clients)
      @path = path
      @clients = clients
    end

    # @return [Array<Download>] filled in once every task has finished
    def start(tasks)
      server = TCPServer.new("127.0.0.1", 0)
      server.listen(@clients)
      port = server.local_address.ip_port
      tasks.spawn { serve(tasks, server) }
      Array.new(@clients).tap do |downloads|
        @clients.times { |i| tasks.spawn { downloads[i] = download(port) } }
      end
    end

    private

    # Accepts one connection per client, each sent the file by a task of
    # its own, then closes the listening socket.
    def serve(tasks, server)
      @clients.times do
        socket = server.accept
        tasks.spawn { send_file(socket) }
      end
    ensure
      server.close
    end

    def send_file(socket)
      File.open(@path, "rb") { |file| copy(file, socket) }
    ensure
      socket.close
    end

    # The copy loop: IO.double_splice(file, socket) takes its place once the
    # splice primitives land, moving the bytes without entering Ruby.
    def copy(file, socket)
      buffer = String.new(capacity: CHUNK)
      socket.write(buffer) while file.read(CHUNK, buffer)
    end

    def download(port)
      socket = TCPSocket.new("127.0.0.1", port)
      sha = OpenSSL::Digest.new("SHA256")
      buffer = String.new(capacity: CHUNK)
      bytes = 0
      loop do
        socket.readpartial(CHUNK, buffer)
        sha.update(buffer)
        bytes += buffer.bytesize
      end
    rescue EOFError
      Download.new(sha.hexdigest, bytes)
    ensure
      socket&.close
    end
  end

  # N fibers under one Ringspun scheduler, in this thread.
  class Fibers
    attr_reader :backend

    def initialize(backend)
      @backend = backend
    end

    def label = "Ringspun, #{@backend} backend"

    def detail(clients) = "#{2 * clients + 1} fibers in 1 thread"

    def run(job)
      Ringspun.run(backend: @backend) do
        @backend = Fiber.scheduler.backend
        job.start(self)
      end
    end

    def spawn(&block) = Ringspun.spin(&block)
  end

  # One Ruby thread per task, blocking IO, no scheduler.
  class Threads
    def label = "one thread per copy"

    def detail(clients) = "#{2 * clients + 1} threads"

    def run(job)
      @threads = Queue.new
      downloads = job.start(self)
      @threads.pop.join until @threads.empty? # joins re-raise a task's error
      downloads
    end

    def spawn(&block)
      @threads << Thread.new(&block).tap { |t| t.report_on_exception = false }
    end
  end

  # What one way did: its time and how many downloads were right.
  Outcome = Struct.new(:way, :seconds, :bytes, :bad) do
    def rate = bytes / seconds
  end

  module_function

  def options(argv, env)
    opts = { clients: Integer(env.fetch("CLIENTS", "200")), size_mib: Float(env.fetch("SIZE_MIB", "32")),
             backend: nil }
    OptionParser.new do |o|
      o.banner = "usage: ruby examples/copy_demo.rb [options]"
      o.on("--clients N", Integer, "concurrent downloads (default #{opts[:clients]})") { |v| opts[:clients] = v }
      o.on("--size MIB", Float, "file size in MiB (default #{opts[:size_mib]})") { |v| opts[:size_mib] = v }
      o.on("--backend NAME", %w[io_uring epoll auto], "io_uring, epoll or auto") { |v| opts[:backend] = v.to_sym }
    end.parse!(argv)
    opts
  end

  # Raises the soft open-file limit to what 2N sockets and N files need.
  def raise_fd_limit(clients)
    wanted = 3 * clients + 64
    soft, hard = Process.getrlimit(:NOFILE)
    return if soft >= wanted

    abort "#{clients} clients need #{wanted} open files; the hard limit is #{hard} (ulimit -n)" if hard < wanted
    Process.setrlimit(:NOFILE, wanted, hard)
  end

  def measure(way, file, clients)
    GC.start
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    downloads = way.run(CopyJob.new(file.path, clients))
    seconds = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
    bad = downloads.count { |d| d.nil? || d.digest != file.digest || d.bytes != file.size }
    Outcome.new(way, seconds, downloads.sum { |d| d ? d.bytes : 0 }, bad)
  end

  def report(outcomes, file, clients)
    puts format("%d clients each download a %.1f MiB file over loopback (%.2f GiB in all)",
                clients, file.size.fdiv(MIB), (file.size * clients).fdiv(1024 * MIB))
    outcomes.each { |o| puts line(o, clients) }
    fibers, threads = outcomes
    puts format("  %s: %.2fx the throughput of one thread per copy", fibers.way.label, fibers.rate / threads.rate)
  end

  def line(outcome, clients)
    format("  %-28s %7.2f s  %8.1f MiB/s  (%s)", outcome.way.label, outcome.seconds, outcome.rate / MIB,
           outcome.way.detail(clients))
  end

  # @return [Integer] the exit status
  def verdict(outcomes, file, clients)
    bad = outcomes.sum(&:bad)
    if bad.zero?
      puts "  all #{clients} checksums OK, both ways (SHA-256 #{file.digest[0, 16]}...)"
      return 0
    end
    outcomes.each { |o| puts "  #{o.bad} of #{clients} downloads wrong with #{o.way.label}" if o.bad.positive? }
    1
  end

  def main(argv, env)
    opts = options(argv, env)
    raise_fd_limit(opts[:clients])
    Dir.mktmpdir("ringspun-copy-demo") do |dir|
      file = TestFile.new(dir, (opts[:size_mib] * MIB).round).write
      outcomes = [Fibers.new(opts[:backend]), Threads.new].map { |way| measure(way, file, opts[:clients]) }
      report(outcomes, file, opts[:clients])
      verdict(outcomes, file, opts[:clients])
    end
  end
end

exit CopyDemo.main(ARGV, ENV)
