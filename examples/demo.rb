# frozen_string_literal: true

# The demo the README's first command runs: Ringspun serving files over HTTP
# to real clients, checked byte for byte and timed beside plain Ruby.
#
# 1. Makes a test folder: a large file of mixed text and binary data.
# 2. Starts examples/file_server.rb (Ringspun) on a free loopback port.
# 3. Fetches the file with several curl processes at once, half of them with
#    --compressed (gzip + chunked on the fly), and checks every SHA-256.
# 4. Does the same against examples/threaded_file_server.rb (one thread per
#    connection, IO.copy_stream, Zlib::GzipWriter), and prints both.
#
#   bundle exec ruby examples/demo.rb [--size MiB] [--clients N] [--rounds N]
require "digest"
require "fileutils"
require "optparse"
require "rbconfig"
require "tmpdir"

# Runs the demo; see the header comment.
class Demo
  ROOT = File.expand_path("..", __dir__)
  Result = Struct.new(:name, :seconds, :bytes, :ok, :total)

  def initialize(argv)
    @size_mib = 64
    @clients = 8
    @rounds = 3
    OptionParser.new do |o|
      o.on("--size MIB", Integer, "test file size (default 64)") { |v| @size_mib = v }
      o.on("--clients N", Integer, "concurrent curl clients (default 8)") { |v| @clients = v }
      o.on("--rounds N", Integer, "rounds per server (default 3)") { |v| @rounds = v }
    end.parse!(argv)
    abort "curl is needed (apt-get install curl)" unless system("command -v curl >/dev/null")
  end

  def run
    Dir.mktmpdir("ringspun-demo") do |dir|
      www = File.join(dir, "www")
      FileUtils.mkdir_p(www)
      digest = make_file(File.join(www, "big.dat"))
      puts "test file: #{@size_mib} MiB, sha256 #{digest[0, 16]}..."
      results = [measure("Ringspun (#{backend_name})", "file_server.rb", www, dir, digest),
                 measure("plain Ruby, a thread per client", "threaded_file_server.rb", www, dir, digest)]
      report(results)
      exit(results.all? { |r| r.ok == r.total } ? 0 : 1)
    end
  end

  private

  def backend_name
    `#{RbConfig.ruby} -I#{ROOT}/lib -rringspun -e 'Ringspun.run { print Fiber.scheduler.backend }'`
  end

  # Deterministic data: lines of text (compressible) and random blocks.
  def make_file(path)
    rng = Random.new(2024)
    sha = Digest::SHA256.new
    File.open(path, "wb") do |f|
      (@size_mib * 4).times do |i|
        block = i.even? ? Array.new(5000) { |n| "line #{i}:#{n} the quick brown fox #{rng.rand(1000)}\n" }.join.byteslice(0, 262_144) : rng.bytes(262_144)
        block = block.ljust(262_144, "\n")
        f.write(block)
        sha << block
      end
    end
    sha.hexdigest
  end

  def start_server(script, www)
    r, w = IO.pipe
    pid = Process.spawn(RbConfig.ruby, "-I#{ROOT}/lib", File.join(__dir__, script), www, "0", out: w, err: $stderr)
    w.close
    line = r.gets or abort("#{script} did not start")
    r.close
    [pid, Integer(line[/:(\d+)/, 1])]
  end

  def stop_server(pid)
    Process.kill(:TERM, pid)
    Process.wait(pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end

  # Every round: @clients curls at once; half ask for gzip.
  def measure(name, script, www, dir, digest)
    pid, port = start_server(script, www)
    url = "http://127.0.0.1:#{port}/big.dat"
    ok = total = bytes = 0
    secs = Array.new(@rounds) do
      t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      outs = fetch_all(url, dir)
      elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
      outs.each do |out|
        total += 1
        ok += 1 if File.exist?(out) && Digest::SHA256.file(out).hexdigest == digest
        bytes += File.size?(out).to_i
        File.delete(out) if File.exist?(out)
      end
      elapsed
    end
    Result.new(name, secs.sort[secs.size / 2], bytes / @rounds, ok, total)
  ensure
    stop_server(pid) if pid
  end

  def fetch_all(url, dir)
    outs = Array.new(@clients) { |i| File.join(dir, "out#{i}") }
    pids = outs.each_with_index.map do |out, i|
      args = ["curl", "-sS", "-o", out]
      args << "--compressed" if i.odd?
      Process.spawn(*args, url)
    end
    pids.each { |p| Process.wait(p) }
    outs
  end

  def report(results)
    puts
    puts format("%-36s %10s %12s %10s", "server", "seconds", "MiB/s", "checksums")
    results.each do |r|
      puts format("%-36s %10.3f %12.1f %10s", r.name, r.seconds, r.bytes / r.seconds / 2**20, "#{r.ok}/#{r.total}")
    end
    ratio = results[1].seconds / results[0].seconds
    puts
    puts format("Ringspun is %.2fx the threaded server (median of %d rounds, %d clients, half gzip).",
                ratio, @rounds, @clients)
    puts(results.all? { |r| r.ok == r.total } ? "all checksums OK" : "CHECKSUM MISMATCH")
  end
end

Demo.new(ARGV).run if $PROGRAM_NAME == __FILE__
