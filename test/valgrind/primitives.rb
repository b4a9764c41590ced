# frozen_string_literal: true

# Every primitive once, on both backends and with no scheduler, small sizes:
# what `rake valgrind` runs under memcheck. Exits non-zero on a wrong byte.
#
# Under io_uring the peers are fibers, not threads, and the zlib family is
# left out. valgrind runs one thread at a time under a lock of its own, and
# it keeps that lock through io_uring_enter(2), which it does not know can
# block: a thread the ring waits for (a feeding thread, the scheduler's
# deflate workers) would never run. The zlib family runs on epoll and with
# no scheduler, through the same code after the wait.
require "ringspun"
require "socket"
require "zlib"
require "msgpack"
require "tmpdir"

def check(label, ok)
  return if ok

  warn "valgrind smoke: #{label} failed"
  exit 1
end

# Runs the block beside the caller: a fiber under a scheduler, else a
# thread. Returns a lambda that waits for the block's value.
def beside(&block)
  return Thread.new(&block).method(:value) unless Fiber.scheduler

  Ringspun.spin(&block).method(:value)
end

def exercise(zlib: true)
  data = Random.new(7).bytes(200_000)
  # splice family
  r, w = IO.pipe
  pipe = Ringspun::Pipe.new
  pipe << data.byteslice(0, 1000)
  pipe.close
  check("splice", IO.splice(pipe, w, -4096) == 1000)
  w.close
  check("splice bytes", r.read.b == data.byteslice(0, 1000))
  r.close
  a, b = UNIXSocket.pair
  src = Ringspun::Pipe.new
  writer = beside { src << data; src.close }
  reader = beside { b.read.b }
  check("double_splice", IO.double_splice(src, a) == data.bytesize)
  writer.call
  a.close
  check("double_splice bytes", reader.call == data)
  b.close
  zlib_family(data) if zlib
  loops_and_msgpack(data)
  http1(data)
end

def zlib_family(data)
  gz = String.new
  IO.gzip(data, gz, orig_name: "x", comment: "y")
  out = String.new
  check("gunzip", IO.gunzip(gz, out, {}) == data.bytesize && out == data)
  z = String.new
  IO.deflate(data, z)
  back = String.new
  IO.inflate(z, back)
  check("inflate", back == data)
  begin
    IO.gunzip(gz.byteslice(0, gz.bytesize / 2), String.new)
    check("truncated gunzip raises", false)
  rescue Zlib::BufError
    nil
  end
end

def loops_and_msgpack(data)
  objs = [1, "two", [3.0, nil, true], { "k" => -5 }, "b".b * 100]
  a, b = UNIXSocket.pair
  b.msgpack_write(*objs)
  b.close
  check("msgpack_each", a.msgpack_each.to_a == objs)
  a.close
  a, b = UNIXSocket.pair
  feeder = beside { b.write(data); b.close }
  got = String.new
  a.recv_loop(4096) { |d| got << d }
  check("recv_loop", got == data)
  feeder.call
  a.close
  reused_loops(data)
  msgpack_edges
end

# read_loop into one reused String, and feed_loop's default (reused too).
def reused_loops(data)
  r, w = IO.pipe
  feeder = beside { w.write(data); w.close }
  got = String.new
  r.read_loop(3000, String.new) { |c| got << c }
  check("read_loop(maxlen, buffer)", got == data)
  feeder.call
  r.close
  r, w = IO.pipe
  feeder = beside { w.write(data); w.close }
  got = String.new
  r.feed_loop(->(c) { got << c }, maxlen: 5000)
  check("feed_loop", got == data)
  feeder.call
  r.close
end

def msgpack_edges
  check("msgpack empty key", Ringspun::MessagePack.unpack(MessagePack.pack({ "" => "" })) == { "" => "" })
  begin
    Ringspun::MessagePack.unpack("")
    check("unpack of nothing raises", false)
  rescue EOFError
    nil
  end
end

# Tasks stopped mid-read and a deadline mid-read_loop: each op cancelled,
# each buffer let go once the kernel is done with it.
def tasks_and_deadlines
  r, w = IO.pipe
  reader = Ringspun.spin { r.read(10) }
  sleeper = Ringspun.spin { sleep 10 }
  sleep 0.01
  reader.stop
  sleeper.stop
  check("stopped tasks", reader.value.nil? && sleeper.value.nil?)
  got = String.new
  late = Ringspun.spin { sleep 0.05; w.write("abc"); w.close }
  Ringspun.move_on_after(0.01) { r.read_loop(100) { |c| got << c } }
  late.value
  r.read_loop(100) { |c| got << c }
  check("read_loop after a deadline", got == "abc")
  r.close
end

def http1(data)
  src = Ringspun::Pipe.new
  feeder = beside { src << data; src.close } # more than the pipe holds
  chunked = Ringspun::Pipe.new
  sender = beside { IO.http1_splice_chunked(src, chunked, 10_000); chunked.close }
  body = String.new
  check("unchunked", IO.http1_splice_unchunked(chunked, body) == data.bytesize && body == data)
  sender.call
  feeder.call
  # http1 from a regular file (sendfile) to a socket
  a, b = UNIXSocket.pair
  path = File.join(Dir.tmpdir, "ringspun-valgrind-#{Process.pid}")
  File.binwrite(path, data)
  sender = beside { File.open(path, "rb") { |f| IO.http1_splice_chunked(f, a, 30_000) }; a.close }
  body = String.new
  check("unchunked from a file", IO.http1_splice_unchunked(b, body) == data.bytesize && body == data)
  sender.call
  b.close
  File.delete(path)
end

exercise
Ringspun.run(backend: :io_uring) do
  exercise(zlib: false)
  tasks_and_deadlines
end
Ringspun.run(backend: :epoll) do
  exercise
  tasks_and_deadlines
end
puts "valgrind smoke: all primitives OK"
