# frozen_string_literal: true

# The same file server as examples/file_server.rb, the plain-Ruby way: one
# thread per connection, IO.copy_stream for plain responses, Zlib::GzipWriter
# and a chunked writer for gzipped ones. The demo measures Ringspun against it.
#
#   ruby -Ilib examples/threaded_file_server.rb ROOT [PORT]
require_relative "file_server"
require "zlib"

# Thread-per-connection variant of FileServer.
class ThreadedFileServer < FileServer
  # Writes each piece as one HTTP/1.1 chunk.
  class ChunkedWriter
    def initialize(io)
      @io = io
    end

    def write(data)
      @io.write("#{data.bytesize.to_s(16)}\r\n", data, "\r\n") unless data.empty?
      data.bytesize
    end

    def finish
      @io.write("0\r\n\r\n")
    end
  end

  def serve(server)
    loop do
      client = server.accept
      Thread.new { handle(client) }
    end
  rescue IOError, Errno::EBADF
    nil
  end

  private

  def send_plain(client, file)
    IO.copy_stream(file, client)
  end

  def send_gzipped(client, file)
    chunked = ChunkedWriter.new(client)
    gz = Zlib::GzipWriter.new(chunked, 6)
    buf = String.new(capacity: 65_536)
    gz.write(buf) while file.read(65_536, buf)
    gz.finish
    chunked.finish
  end
end

if $PROGRAM_NAME == __FILE__
  root = ARGV[0] or abort("usage: #{$PROGRAM_NAME} ROOT [PORT]")
  server = TCPServer.new("127.0.0.1", Integer(ARGV[1] || 0))
  Signal.trap("TERM") { exit }
  $stdout.puts "listening on 127.0.0.1:#{server.addr[1]} (threads)"
  $stdout.flush
  ThreadedFileServer.new(root).serve(server)
end
