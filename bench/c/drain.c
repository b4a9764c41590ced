/* The far end of the double_splice, gzip and gunzip cases: drains stdin
 * (the loopback TCP socket the case hands over) until end of input and
 * counts the bytes.
 *
 * recv(MSG_TRUNC) on TCP discards the data in the kernel without copying it
 * out (tcp(7), since Linux 2.4), so the drain costs next to nothing and the
 * sender's side is what gets measured. On anything that is not a socket
 * (ENOTSOCK) it falls back to read(2) into one reused buffer.
 *
 * Prints one line of figures: bytes and cpu_s of this process. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "figures.h"

#define CHUNK (1 << 20)

static char buf[CHUNK];

/* One discarding receive; returns bytes, 0 at end of input, -1 on error. */
static ssize_t drain_some(int fd, int *use_read) {
  for (;;) {
    ssize_t n = *use_read ? read(fd, buf, sizeof(buf)) : recv(fd, buf, sizeof(buf), MSG_TRUNC);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    if (errno == ENOTSOCK && !*use_read) {
      *use_read = 1;
      continue;
    }
    return -1;
  }
}

int main(void) {
  long long total = 0;
  int use_read = 0;
  for (;;) {
    ssize_t n = drain_some(0, &use_read);
    if (n == 0) break;
    if (n < 0) {
      perror("drain: recv");
      return 1;
    }
    total += n;
  }
  printf("bytes=%lld cpu_s=%.6f\n", total, figures_cpu_s());
  return 0;
}
