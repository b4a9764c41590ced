/* The read and write loops the zlib reference programs (gzip_copy.c,
 * gunzip_copy.c) share: read(2) and write(2) retried on EINTR, any other
 * failure fatal. Each program defines PROGRAM (its name, for messages)
 * before including this. */
#ifndef BENCH_COPY_IO_H
#define BENCH_COPY_IO_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Prints "PROGRAM: what: strerror(errno)" and exits 1. */
static void die(const char *what) {
  fprintf(stderr, "%s: ", PROGRAM);
  perror(what);
  exit(1);
}

/* Writes all len bytes; adds them to *total. */
static void write_all(int fd, const unsigned char *p, size_t len, long long *total) {
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("write");
    }
    p += n;
    len -= (size_t)n;
    *total += n;
  }
}

/* One read of up to len bytes; 0 at end of input. */
static size_t read_some(int fd, unsigned char *p, size_t len) {
  for (;;) {
    ssize_t n = read(fd, p, len);
    if (n >= 0) return (size_t)n;
    if (errno != EINTR) die("read");
  }
}

#endif
