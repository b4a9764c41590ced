# frozen_string_literal: true

# Ringspun's primitives are methods on IO, implemented in C (ext/ringspun).
# Each works in three places: inside Ringspun.run (io_uring or epoll), under
# any other Fiber::Scheduler, and with no scheduler (the GVL released while
# it waits). Arguments named src/dest take an IO, a Ringspun::Pipe (the
# right end is used) or an Integer file descriptor; a closed IO raises
# IOError; an object that wraps another IO (an OpenSSL::SSL::SSLSocket) is
# refused with ArgumentError, since splicing under it would bypass TLS.
# Failures raise the failing call's Errno::* with the call and side in the
# message ("splice: dest"). Byte counts are 64-bit Integers.
class IO
  # @!method self.splice(src, dest, maxlen)
  #   Moves bytes between two descriptors in the kernel; one must be a pipe.
  #   @param src [IO, Ringspun::Pipe, Integer]
  #   @param dest [IO, Ringspun::Pipe, Integer]
  #   @param maxlen [Integer] > 0: one splice of up to maxlen bytes;
  #     < 0: splice in chunks of |maxlen| until end of input
  #   @return [Integer] bytes moved (0 at end of input; the total for maxlen < 0)
  #   @raise [ArgumentError] maxlen is 0, or dest/src wraps another IO
  #   @raise [Errno::EINVAL] neither src nor dest is a pipe
  #   @raise [Errno::EPIPE, Errno::ECONNRESET] dest's peer has gone

  # @!method self.tee(src, dest, maxlen)
  #   Duplicates up to maxlen bytes from one pipe into another without
  #   consuming them.
  #   @param src [IO, Ringspun::Pipe, Integer] a pipe
  #   @param dest [IO, Ringspun::Pipe, Integer] a pipe
  #   @param maxlen [Integer] > 0
  #   @return [Integer] bytes duplicated, 0 at end of input
  #   @raise [Errno::EINVAL] either side is not a pipe

  # @!method self.double_splice(src, dest, chunk_size: 65536)
  #   Moves everything from src to dest (any two descriptors: files, pipes,
  #   sockets) through a private pipe, both halves progressing as readiness
  #   allows, until end of input. The private pipe is O_CLOEXEC and closed
  #   exactly once, whatever happens. From a regular file to a non-blocking
  #   socket or pipe no pipe is needed: sendfile(2) moves the file straight
  #   to dest.
  #   @param src [IO, Ringspun::Pipe, Integer]
  #   @param dest [IO, Ringspun::Pipe, Integer]
  #   @param chunk_size [Integer] bytes per splice, and the pipe's size (for
  #     sendfile, the least asked of one call: at least 1 MiB is)
  #   @return [Integer] bytes moved
  #   @raise [Errno::EPIPE, Errno::ECONNRESET] dest's peer has gone

  # @!method self.gzip(src, dest, level: 6, strategy: nil, mtime: nil, orig_name: nil, comment: nil)
  #   Compresses src into dest in gzip format (RFC 1952), streaming: end of
  #   input is a read of 0 bytes, never a short read.
  #   @param src [IO, Ringspun::Pipe, Integer, String, #readpartial]
  #   @param dest [IO, Ringspun::Pipe, Integer, String, #write] a String is appended to
  #   @param level [Integer] -1..9, as Zlib's
  #   @param strategy [Integer, nil] Zlib::FILTERED, HUFFMAN_ONLY, RLE, FIXED, DEFAULT_STRATEGY
  #   @param mtime [Integer, Time, nil, false] nil: now; false or 0: none
  #   @param orig_name [String, nil] the FNAME field
  #   @param comment [String, nil] the FCOMMENT field
  #   @return [Integer] bytes written to dest
  #   @raise [ArgumentError] a bad level, strategy, mtime or name
  #   @raise [FrozenError] dest is a frozen String

  # @!method self.gunzip(src, dest, info = nil)
  #   Decompresses gzip data, every member (as gzip -d does), verifying each
  #   CRC-32 and ISIZE; zero padding after a member is accepted.
  #   @param src [IO, Ringspun::Pipe, Integer, String, #readpartial]
  #   @param dest [IO, Ringspun::Pipe, Integer, String, #write]
  #   @param info [Hash, nil] receives :mtime, :orig_name, :comment, :os and
  #     :level (9 or 1 when the header says, else nil) of the first member
  #   @return [Integer] bytes written to dest
  #   @raise [Zlib::DataError] corrupt data
  #   @raise [Zlib::BufError] the input ends inside a member
  #   @raise [Zlib::GzipFile::CRCError, Zlib::GzipFile::LengthError] a trailer mismatch
  #   @raise [Zlib::GzipFile::Error] a bad header, no input, or trailing garbage

  # @!method self.deflate(src, dest, level: 6)
  #   Compresses in zlib format (RFC 1950).
  #   @param src [IO, Ringspun::Pipe, Integer, String, #readpartial]
  #   @param dest [IO, Ringspun::Pipe, Integer, String, #write]
  #   @param level [Integer] -1..9
  #   @return [Integer] bytes written to dest

  # @!method self.inflate(src, dest)
  #   Decompresses zlib format data (RFC 1950); bytes after the stream are ignored.
  #   @param src [IO, Ringspun::Pipe, Integer, String, #readpartial]
  #   @param dest [IO, Ringspun::Pipe, Integer, String, #write]
  #   @return [Integer] bytes written to dest
  #   @raise [Zlib::DataError] corrupt data
  #   @raise [Zlib::BufError] the input ends early

  # @!method self.http1_splice_chunked(src, dest, maxlen = 65536)
  #   Sends everything from src to dest as an HTTP/1.1 chunked body
  #   ("<hex size>\r\n", the bytes, "\r\n", ..., "0\r\n\r\n"), the bytes
  #   spliced, never read into Ruby. From a regular file to a non-blocking
  #   socket each chunk is what is left of the file (at most maxlen); the
  #   headers and the file's pages are staged in a private pipe and handed
  #   to dest up to 1 MiB at a time, and a file that grows while it is sent
  #   is followed to its new end. A body of one such chunk goes out as its
  #   header and one sendfile(2), a TCP dest corked (TCP_CORK) meanwhile
  #   and uncorked when the call returns or raises, unless the caller had
  #   corked it already. If the call raises midway, what was staged but not
  #   yet sent is dropped: the body is cut short either way.
  #   @param src [IO, Ringspun::Pipe, Integer]
  #   @param dest [IO, Ringspun::Pipe, Integer]
  #   @param maxlen [Integer] the largest chunk
  #   @return [Integer] payload bytes sent
  #   @raise [ArgumentError] maxlen <= 0
  #   @raise [EOFError] a file src shrank under a chunk already announced
  #   @raise [Errno::EPIPE, Errno::ECONNRESET] the client has gone

  # @!method self.http1_splice_unchunked(src, dest)
  #   Reads an HTTP/1.1 chunked body from src (bytes already in src's Ruby
  #   buffer included) and writes its payload to dest. Chunk extensions are
  #   ignored and trailers consumed; the bytes after the body stay unread.
  #   @param src [IO, Ringspun::Pipe, Integer]
  #   @param dest [IO, Ringspun::Pipe, Integer, String]
  #   @return [Integer] payload bytes
  #   @raise [Ringspun::HTTP1::ParseError] malformed framing, with its byte offset
  #   @raise [EOFError] the input ends inside the body

  # @!method read_loop(maxlen = 65536, buffer = nil)
  #   Reads until end of input, yielding each chunk as a binary String read
  #   straight into it (no copy), the bytes Ruby already buffered for this
  #   IO (after a +gets+, say) first.
  #
  #   Without +buffer+ each chunk is a new String the block may keep. With a
  #   +buffer+ (a String; it is made binary) every chunk is that one String,
  #   overwritten by the next read, as +readpartial(maxlen, buffer)+ reuses
  #   its buffer: it is valid only inside the block, so copy what must
  #   outlive it (+chunk.dup+ is such a copy: it keeps its bytes). At the
  #   end of input the buffer is left empty. Reusing saves a String and its
  #   memory per chunk.
  #   @param maxlen [Integer] the largest chunk
  #   @param buffer [String, nil] a String to reuse for every chunk
  #   @yieldparam data [String] ASCII-8BIT
  #   @return [IO] self
  #   @raise [FrozenError] +buffer+ is frozen (or the block froze it)
  #   @raise [SystemCallError] the failing read's Errno, naming read_loop

  # @!method feed_loop(receiver, method = :call, maxlen: 65536, reuse: true, &block)
  #   For each chunk read until end of input, calls
  #   receiver.public_send(method, chunk, &block): for example
  #   io.feed_loop(MessagePack::Unpacker.new, :feed_each) { |obj| ... }.
  #
  #   A parser copies or consumes what it is fed (MessagePack::Unpacker#feed,
  #   Zlib::Inflate#<<, an HTTP parser's <<), so by default every chunk is
  #   one reused String, overwritten by the next read, as with
  #   {#read_loop}'s buffer. A receiver that keeps the Strings it is given
  #   (an Array's <<) needs +reuse: false+: a new String per chunk. On a
  #   socket under io_uring it receives with multishot receive.
  #   @param receiver [Object]
  #   @param method [Symbol]
  #   @param maxlen [Integer] the largest chunk
  #   @param reuse [Boolean] one reused String (true) or a new one per chunk
  #   @return [IO] self

  # Splices from +src+ into this IO: IO.splice(src, self, maxlen).
  #
  # @param src [IO, Ringspun::Pipe, Integer]
  # @param maxlen [Integer] > 0: one splice of up to maxlen bytes; < 0:
  #   splice in chunks of |maxlen| until end of input
  # @return [Integer] the bytes moved (0 at end of input)
  # @raise [ArgumentError] when maxlen is 0
  # @raise [SystemCallError] the failing call's Errno
  def splice_from(src, maxlen)
    IO.splice(src, self, maxlen)
  end

  # Splices from this IO into +dest+: IO.splice(self, dest, maxlen).
  #
  # @param dest [IO, Ringspun::Pipe, Integer]
  # @param maxlen [Integer] as for {#splice_from}
  # @return [Integer] the bytes moved (0 at end of input)
  # @raise [ArgumentError] when maxlen is 0
  # @raise [SystemCallError] the failing call's Errno
  def splice_to(dest, maxlen)
    IO.splice(self, dest, maxlen)
  end
end

class BasicSocket
  # @!method recv_loop(maxlen = 65536, buffer = nil)
  #   IO#read_loop for sockets: under Ringspun.run on io_uring (kernel 6.0+)
  #   it uses multishot receive into a bounded, shared buffer ring, so a slow
  #   consumer makes the kernel stop rather than queue (each chunk is then
  #   copied out of the ring into the String). +buffer+ as for
  #   {IO#read_loop}.
  #   @param maxlen [Integer] the largest chunk
  #   @param buffer [String, nil] a String to reuse for every chunk
  #   @yieldparam data [String] ASCII-8BIT
  #   @return [BasicSocket] self
end
