/* The read_loop case's physical limit: read(2) from stdin (the loopback
 * TCP socket the case hands over) into one reused 64 KiB buffer until end
 * of input, as a Ruby read loop does minus Ruby.
 *
 * `read_loop fresh N`: each read goes into a new malloc'd 64 KiB buffer
 * instead, and the buffers are freed N at a time. That is what a new
 * String per chunk costs at best, Ruby or not: Ruby frees Strings in
 * batches when the GC runs (its malloc limit starts at 16 MiB: 256
 * chunks), and memory freed in a batch goes back to the kernel and
 * faults in again for the next ones.
 *
 * Prints one line of figures: units (MiB read), bytes, cpu_s and maxrss_kib
 * of this process. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "figures.h"

#define CHUNK 65536

/* Peak RSS from /proc/self/status: getrusage's ru_maxrss survives
 * execve(2) and would report the forked Ruby process that exec'ed us. */

/* Holds fresh buffers until `batch` of them can be freed together. */
typedef struct fresh {
  int batch, held;
  void **bufs;
} fresh;

static char *next_buffer(fresh *f, char *reused) {
  if (f->batch <= 0) return reused;
  if (f->held == f->batch) {
    for (int i = 0; i < f->held; i++) free(f->bufs[i]);
    f->held = 0;
  }
  char *buf = malloc(CHUNK);
  if (!buf) {
    perror("read_loop: malloc");
    exit(1);
  }
  f->bufs[f->held++] = buf;
  return buf;
}

int main(int argc, char **argv) {
  static char reused[CHUNK];
  fresh f = {0};
  if (argc == 3 && strcmp(argv[1], "fresh") == 0) {
    f.batch = atoi(argv[2]);
    f.bufs = calloc(f.batch > 0 ? (size_t)f.batch : 1, sizeof(void *));
    if (!f.bufs) return 1;
  }
  long long total = 0;
  for (;;) {
    char *buf = next_buffer(&f, reused);
    ssize_t n = read(0, buf, CHUNK);
    if (n > 0) {
      total += n;
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      perror("read_loop: read");
      return 1;
    }
  }
  printf("units=%lld bytes=%lld cpu_s=%.6f maxrss_kib=%ld\n", total >> 20, total, figures_cpu_s(),
         figures_vmhwm_kib());
  return 0;
}
