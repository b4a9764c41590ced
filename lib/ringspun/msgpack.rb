# frozen_string_literal: true

module Ringspun
  # MessagePack with msgpack-c: {pack} and {unpack} for strings, and
  # IO#msgpack_each / IO#msgpack_write for streams. Types: nil, booleans,
  # Integer (64-bit signed and unsigned), Float, String (str as UTF-8, bin
  # as ASCII-8BIT), Symbol (packed as str), Array, Hash and
  # {ExtensionValue}.
  #
  # @!method self.pack(obj)
  #   @param obj [Object]
  #   @return [String] a binary String
  #   @raise [RangeError] for an Integer outside 64 bits
  #   @raise [TypeError] for an object MessagePack cannot represent
  # @!method self.unpack(str, symbolize_keys: false, freeze: false, allow_unknown_ext: false)
  #   @param str [String] exactly one MessagePack object
  #   @return [Object]
  #   @raise [MalformedFormatError] for malformed data or extra bytes
  #   @raise [EOFError] when the data ends inside the object
  #   @raise [UnknownExtTypeError] for an ext type without allow_unknown_ext
  module MessagePack
  end
end

class IO
  # Decodes a stream of MessagePack objects from this IO with msgpack-c,
  # yielding each; an object split across reads is reassembled.
  #
  # @param symbolize_keys [Boolean] map keys as Symbols
  # @param freeze [Boolean] freeze every decoded object
  # @param allow_unknown_ext [Boolean] ext types as
  #   Ringspun::MessagePack::ExtensionValue instead of an error
  # @yieldparam obj [Object]
  # @return [IO, Enumerator] self at end of input; an Enumerator without a block
  # @raise [Ringspun::MessagePack::MalformedFormatError] with the byte offset
  # @raise [EOFError] when the stream ends inside an object
  # @raise [Ringspun::MessagePack::UnknownExtTypeError]
  def msgpack_each(symbolize_keys: false, freeze: false, allow_unknown_ext: false, &block)
    opts = { symbolize_keys: symbolize_keys, freeze: freeze, allow_unknown_ext: allow_unknown_ext }
    return enum_for(:msgpack_each, **opts) unless block

    __msgpack_each(**opts, &block)
  end

  # Packs each object and writes them all with one write.
  #
  # @param objs [Array<Object>]
  # @return [Integer] bytes written
  # @raise [RangeError, TypeError] as Ringspun::MessagePack.pack
  def msgpack_write(*objs)
    write(Ringspun::MessagePack.pack_all(objs))
  end
end
