# frozen_string_literal: true

# Ringspun's primitives are class methods on IO, implemented in C:
# IO.splice, IO.tee and IO.double_splice. These are their instance forms.
class IO
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
