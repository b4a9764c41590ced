# frozen_string_literal: true

# Every primitive once, on both backends and with no scheduler, small sizes:
# what `rake valgrind` runs under memcheck. Exits non-zero on a wrong byte.
require "ringspun"
require "socket"
require "zlib"
require "msgpack"

def check(label, ok)
  return if ok

  warn "valgrind smoke: #{label} failed"
  exit 1
end

def exercise
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
  writer = Thread.new { src << data; src.close }
  reader = Thread.new { b.read.b }
  check("double_splice", IO.double_splice(src, a) == data.bytesize)
  writer.join
  a.close
  check("double_splice bytes", reader.value == data)
  b.close
  # zlib family
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
  # loops and msgpack
  objs = [1, "two", [3.0, nil, true], { "k" => -5 }, "b".b * 100]
  a, b = UNIXSocket.pair
  b.msgpack_write(*objs)
  b.close
  check("msgpack_each", a.msgpack_each.to_a == objs)
  a.close
  a, b = UNIXSocket.pair
  Thread.new { b.write(data); b.close }
  got = String.new
  a.recv_loop(4096) { |d| got << d }
  check("recv_loop", got == data)
  a.close
  # http1
  src = Ringspun::Pipe.new
  src << data
  src.close
  chunked = Ringspun::Pipe.new
  sender = Thread.new { IO.http1_splice_chunked(src, chunked, 10_000); chunked.close }
  body = String.new
  check("unchunked", IO.http1_splice_unchunked(chunked, body) == data.bytesize && body == data)
  sender.join
end

exercise
Ringspun.run(backend: :io_uring) { exercise }
Ringspun.run(backend: :epoll) { exercise }
puts "valgrind smoke: all primitives OK"
