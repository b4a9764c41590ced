# frozen_string_literal: true

module Ringspun
  # Both ends of a kernel pipe in one object. Every primitive takes it as
  # +src+ (its read end is used) or +dest+ (its write end is used), so the
  # splice examples read naturally:
  #
  #   pipe = Ringspun::Pipe.new
  #   Ringspun.spin { IO.splice(src, pipe, -2**14); pipe.close }
  #   IO.splice(pipe, dest, -2**14)
  class Pipe
    # fcntl commands for the pipe's capacity (linux/fcntl.h).
    F_SETPIPE_SZ = 1031
    F_GETPIPE_SZ = 1032

    # @return [IO] the read end
    attr_reader :read_io
    # @return [IO] the write end
    attr_reader :write_io

    # @param size [Integer, nil] the pipe's capacity in bytes (rounded up by
    #   the kernel to a power-of-two number of pages); nil keeps the default
    # @raise [Errno::EPERM] when size exceeds /proc/sys/fs/pipe-max-size for
    #   an unprivileged process
    def initialize(size: nil)
      @read_io, @write_io = IO.pipe # O_CLOEXEC, as every fd Ruby opens
      @read_io.binmode
      @write_io.binmode
      self.size = size if size
    end

    # Closes the write end, so the reader sees end of input once the pipe
    # is drained. Closing again does nothing.
    # @return [nil]
    def close
      @write_io.close unless @write_io.closed?
      nil
    end

    # Closes the read end.
    # @return [nil]
    def close_read
      @read_io.close unless @read_io.closed?
      nil
    end

    # @return [Boolean] true once the write end is closed
    def closed?
      @write_io.closed?
    end

    # Reads like IO#read.
    # @param args [Array] as for IO#read
    # @return [String, nil]
    def read(*args)
      @read_io.read(*args)
    end

    # Reads like IO#readpartial.
    # @param args [Array] as for IO#readpartial
    # @return [String]
    # @raise [EOFError] at end of input
    def readpartial(*args)
      @read_io.readpartial(*args)
    end

    # Writes like IO#write.
    # @param data [Array<String>]
    # @return [Integer] bytes written
    def write(*data)
      @write_io.write(*data)
    end

    # Writes like IO#<<.
    # @param data [String]
    # @return [Pipe] self
    def <<(data)
      @write_io << data
      self
    end

    # Yields each chunk read until end of input.
    # @param maxlen [Integer] the largest chunk
    # @yieldparam data [String] a binary string
    # @return [Pipe] self
    def read_loop(maxlen = 65_536, &block)
      @read_io.read_loop(maxlen, &block)
      self
    end

    # @return [Integer] the pipe's capacity in bytes
    def size
      @write_io.fcntl(F_GETPIPE_SZ)
    end

    # Sets the pipe's capacity.
    # @param bytes [Integer]
    # @return [Integer] the capacity asked for
    def size=(bytes)
      raise ArgumentError, "pipe size must be positive" unless bytes.is_a?(Integer) && bytes.positive?

      @write_io.fcntl(F_SETPIPE_SZ, bytes)
    end

    # @return [Array<IO>] the two ends, read end first
    def to_a
      [@read_io, @write_io]
    end
  end
end
