/* The gzip case's reference: plain C zlib compressing a file to stdout (the
 * loopback TCP socket the case hands over), the way a program written for
 * this one job would: read 64 KiB, deflate, write everything out, repeat.
 *
 *   gzip_copy FILE [LEVEL]        LEVEL 0..9, default 6
 *
 * deflateInit2 with windowBits 31 writes the gzip wrapper (RFC 1952) with
 * zlib's default header; memLevel 8 and the default strategy, as
 * Zlib::GzipWriter and IO.gzip use.
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
#define PROGRAM "gzip_copy"
#include "copy_io.h"

#define CHUNK 65536

int main(int argc, char **argv) {
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: gzip_copy FILE [LEVEL]\n");
    return 2;
  }
  long long start_ns = figures_now_ns();
  int level = argc == 3 ? atoi(argv[2]) : 6;
  int src = open(argv[1], O_RDONLY | O_CLOEXEC);
  if (src < 0) die("open");

  static unsigned char in[CHUNK], out[CHUNK];
  z_stream z = {0};
  if (deflateInit2(&z, level, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    fprintf(stderr, "gzip_copy: deflateInit2 failed\n");
    return 1;
  }
  long long in_total = 0, out_total = 0;
  int flush;
  do {
    size_t n = read_some(src, in, sizeof(in));
    in_total += (long long)n;
    flush = n == 0 ? Z_FINISH : Z_NO_FLUSH;
    z.next_in = in;
    z.avail_in = (uInt)n;
    do {
      z.next_out = out;
      z.avail_out = sizeof(out);
      int ret = deflate(&z, flush);
      if (ret == Z_STREAM_ERROR) {
        fprintf(stderr, "gzip_copy: deflate: %s\n", z.msg ? z.msg : "stream error");
        return 1;
      }
      write_all(1, out, sizeof(out) - z.avail_out, &out_total);
    } while (z.avail_out == 0);
  } while (flush != Z_FINISH);
  deflateEnd(&z);
  if (close(1) < 0) die("close");
  figures_print(stderr, start_ns, in_total, out_total);
  return 0;
}
