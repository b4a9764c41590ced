/* The gunzip case's reference: plain C zlib decompressing a gzip file to
 * stdout (the loopback TCP socket the case hands over): read 64 KiB,
 * inflate, write everything out, repeat.
 *
 *   gunzip_copy FILE [PASSES]
 *
 * PASSES (default 1) decompresses the file that many times, one after the
 * other, down the same socket.
 * inflateInit2 with windowBits 31 reads the gzip wrapper and checks its
 * CRC-32 and length; a member that ends with input left over is followed
 * by another (inflateReset), as gzip -d reads concatenated members. Corrupt
 * or truncated input is an error (exit status 1).
 *
 * Prints one line of figures on stderr (stdout is the socket); see
 * figures.h. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <zlib.h>

#include "figures.h"
#define PROGRAM "gunzip_copy"
#include "copy_io.h"

#define CHUNK 65536

static void fail(z_stream *z, int ret) {
  fprintf(stderr, "gunzip_copy: inflate: %s\n", z->msg ? z->msg : zError(ret));
  exit(1);
}

/* Decompresses one whole gzip file (every member) from src to stdout. */
static void gunzip_file(int src, unsigned char *in, unsigned char *out, long long *in_total, long long *out_total) {
  z_stream z = {0};
  if (inflateInit2(&z, 31) != Z_OK) fail(&z, Z_STREAM_ERROR);
  int ret = Z_OK;
  for (;;) {
    if (z.avail_in == 0) {
      size_t n = read_some(src, in, CHUNK);
      if (n == 0) break;
      *in_total += (long long)n;
      z.next_in = in;
      z.avail_in = (uInt)n;
    }
    if (ret == Z_STREAM_END) inflateReset(&z); /* another member follows */
    /* A full output buffer may leave more output inside zlib: drain it
     * before reading on. */
    do {
      z.next_out = out;
      z.avail_out = CHUNK;
      ret = inflate(&z, Z_NO_FLUSH);
      if (ret != Z_OK && ret != Z_STREAM_END && ret != Z_BUF_ERROR) fail(&z, ret);
      write_all(1, out, CHUNK - z.avail_out, out_total);
    } while (z.avail_out == 0 && ret != Z_STREAM_END);
  }
  /* End of input: the last member must have ended, and nothing be left in zlib. */
  if (ret != Z_STREAM_END) {
    fprintf(stderr, "gunzip_copy: input ends inside a gzip member\n");
    exit(1);
  }
  inflateEnd(&z);
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: gunzip_copy FILE [PASSES]\n");
    return 2;
  }
  long long start_ns = figures_now_ns();
  long passes = argc == 3 ? strtol(argv[2], NULL, 10) : 1;
  int src = open(argv[1], O_RDONLY | O_CLOEXEC);
  if (src < 0) die("open");

  static unsigned char in[CHUNK], out[CHUNK];
  long long in_total = 0, out_total = 0;
  for (long pass = 0; pass < passes; pass++) {
    if (lseek(src, 0, SEEK_SET) < 0) die("lseek");
    gunzip_file(src, in, out, &in_total, &out_total);
  }
  if (close(1) < 0) die("close");
  figures_print(stderr, start_ns, in_total, out_total);
  return 0;
}

