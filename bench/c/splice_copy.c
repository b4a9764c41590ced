/* The double_splice case's reference: a plain C splice loop moving a file
 * to stdout (the loopback TCP socket the case hands over) through a pipe,
 * with blocking splice(2) calls, as a program written for this one job
 * would.
 *
 *   splice_copy FILE [CHUNK [PASSES]]
 *
 * CHUNK (default 65536, IO.double_splice's default chunk_size) is the most
 * moved into the pipe per call; a CHUNK above 64 KiB also grows the pipe to
 * it with F_SETPIPE_SZ, as IO.double_splice does. PASSES (default 1) sends
 * the file that many times, one after the other, down the same socket.
 *
 * Prints one line of figures on stderr (stdout is the socket); see
 * figures.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "figures.h"

static void die(const char *what) {
  perror(what);
  exit(1);
}

/* One blocking splice, retried on EINTR; dies on an error. */
static size_t splice_some(int in, int out, size_t len, unsigned flags, const char *what) {
  for (;;) {
    ssize_t n = splice(in, NULL, out, NULL, len, flags);
    if (n >= 0) return (size_t)n;
    if (errno != EINTR) die(what);
  }
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 4) {
    fprintf(stderr, "usage: splice_copy FILE [CHUNK [PASSES]]\n");
    return 2;
  }
  long long start_ns = figures_now_ns();
  size_t chunk = argc >= 3 ? strtoul(argv[2], NULL, 10) : 65536;
  if (chunk == 0) chunk = 65536;
  long passes = argc == 4 ? strtol(argv[3], NULL, 10) : 1;
  int src = open(argv[1], O_RDONLY | O_CLOEXEC);
  if (src < 0) die("splice_copy: open");
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) < 0) die("splice_copy: pipe2");
  if (chunk > 65536 && fcntl(fds[1], F_SETPIPE_SZ, (int)chunk) < 0) die("splice_copy: F_SETPIPE_SZ");

  long long total = 0;
  for (long pass = 0; pass < passes; pass++) {
    if (lseek(src, 0, SEEK_SET) < 0) die("splice_copy: lseek");
    for (;;) {
      size_t in_pipe = splice_some(src, fds[1], chunk, SPLICE_F_MOVE, "splice_copy: splice file");
      if (in_pipe == 0) break;
      while (in_pipe > 0) {
        size_t n = splice_some(fds[0], 1, in_pipe, SPLICE_F_MOVE, "splice_copy: splice socket");
        in_pipe -= n;
        total += (long long)n;
      }
    }
  }
  if (close(1) < 0) die("splice_copy: close");
  figures_print(stderr, start_ns, total, total);
  return 0;
}
