# frozen_string_literal: true

module RingspunFuzz
  # A reference decoder for HTTP/1.1 chunked bodies (RFC 9112, section 7.1),
  # written apart from ext/ringspun/core/http1.c to check IO.http1_splice_unchunked
  # against: it works on the whole body at once, line by line, where the C
  # parser is a byte-at-a-time state machine.
  #
  #   chunked-body = *chunk last-chunk trailer-section CRLF
  #   chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
  #   last-chunk   = 1*("0") [ chunk-ext ] CRLF
  #
  # Ringspun's documented choices, which this decoder shares:
  # - chunk-ext is not parsed: after the size, one of ";", SP or HTAB starts
  #   it and any bytes but CR and LF may follow, at most 8192 of them;
  # - a trailer line is any bytes but CR and LF, at most 8192, not parsed;
  # - a chunk size must be below 2**63;
  # - CR and LF come only as CRLF: a bare LF, or a CR followed by anything
  #   but LF, is an error.
  #
  # decode returns a Result: :ok with the payload and the number of bytes
  # the body took (what follows it is not the body's); :invalid with the
  # payload before the error and the offset of the first byte that cannot
  # be part of a valid body; or :truncated with the payload the input held.
  module ChunkedReference
    MAX_LINE = 8192
    SIZE_LIMIT = 2**63

    Result = Struct.new(:status, :payload, :consumed, :offset, keyword_init: true)

    # Raised inside decode; becomes a Result.
    class Stop < StandardError
      attr_reader :status, :offset

      def initialize(status, offset)
        super("#{status} at #{offset}")
        @status = status
        @offset = offset
      end
    end

    def self.decode(data)
      data = data.b
      payload = +"".b
      pos = 0
      loop do
        size, pos = size_line(data, pos)
        if size.zero?
          pos = trailer_section(data, pos)
          return Result.new(status: :ok, payload: payload, consumed: pos)
        end
        available = [data.bytesize - pos, size].min
        payload << data.byteslice(pos, available)
        raise Stop.new(:truncated, data.bytesize) if available < size

        pos = crlf(data, pos + size)
      end
    rescue Stop => e
      Result.new(status: e.status, payload: payload, offset: e.offset)
    end

    # Expects CRLF at pos; returns the position after it.
    def self.crlf(data, pos)
      [13, 10].each_with_index do |byte, i|
        raise Stop.new(:truncated, data.bytesize) if pos + i >= data.bytesize
        raise Stop.new(:invalid, pos + i) unless data.getbyte(pos + i) == byte
      end
      pos + 2
    end

    # The bytes from pos up to (not including) the next CR or LF, and where
    # that CR or LF is (nil at the end of the input).
    def self.line_at(data, pos)
      stop = data.index(/[\r\n]/n, pos)
      [data.byteslice(pos, (stop || data.bytesize) - pos), stop]
    end

    # A chunk-size line; returns the size and the position after its CRLF.
    def self.size_line(data, pos)
      line, stop = line_at(data, pos)
      digits = line[/\A\h*/n]
      raise Stop.new(:truncated, data.bytesize) if digits.empty? && stop.nil? && line.empty?
      raise Stop.new(:invalid, pos) if digits.empty?

      size = 0
      digits.each_char.with_index do |digit, i|
        size = size * 16 + digit.hex
        raise Stop.new(:invalid, pos + i) if size >= SIZE_LIMIT
      end
      rest = line.byteslice(digits.bytesize..)
      unless rest.empty?
        raise Stop.new(:invalid, pos + digits.bytesize) unless [";", " ", "\t"].include?(rest[0])

        extension = rest.bytesize - 1
        raise Stop.new(:invalid, pos + digits.bytesize + 1 + MAX_LINE) if extension > MAX_LINE
      end
      [size, end_of_line(data, stop)]
    end

    # After the last chunk: trailer lines, then the empty line.
    def self.trailer_section(data, pos)
      loop do
        raise Stop.new(:truncated, data.bytesize) if pos >= data.bytesize
        return crlf(data, pos) if data.getbyte(pos) == 13

        line, stop = line_at(data, pos)
        raise Stop.new(:invalid, pos + MAX_LINE) if line.bytesize > MAX_LINE

        pos = end_of_line(data, stop)
      end
    end

    # The CRLF that ends a line whose terminator (CR or LF) is at stop.
    def self.end_of_line(data, stop)
      raise Stop.new(:truncated, data.bytesize) if stop.nil?
      raise Stop.new(:invalid, stop) if data.getbyte(stop) == 10

      crlf(data, stop)
    end
  end
end
