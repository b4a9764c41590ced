/* The concurrent_copies case's floor for one thread: the same 1,000 copies
 * done by a single C thread with no runtime at all, the most any event
 * loop on one thread (Ringspun's included) could do.
 *
 *   concurrent_copies FILE COPIES
 *
 * First COPIES loopback TCP connections are made. Then, in the timed part,
 * every copy opens FILE and sends it down its connection with sendfile(2)
 * (non-blocking), closing both when done, and the other end is read with
 * read(2) into one reused 64 KiB buffer until end of input. The copies are
 * visited round robin, each moving what it can without waiting; poll(2)
 * waits only when a whole round moved nothing. Every copy's byte count is
 * checked against the file's size.
 *
 * Prints one line of figures on stdout (see figures.h); start_ns is when
 * the timed part began. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "figures.h"

#define CHUNK 65536

typedef struct copy {
  int file, out, in; /* -1 once closed */
  long long sent, received;
} copy;

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) die("fcntl");
}

/* COPIES connected pairs: out is the sending end, in the reading end. */
static void connect_all(copy *c, int n) {
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(a);
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, len) < 0 || listen(lfd, 128) < 0) die("listen");
  if (getsockname(lfd, (struct sockaddr *)&a, &len) < 0) die("getsockname");
  for (int i = 0; i < n; i++) {
    c[i].out = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c[i].out < 0 || connect(c[i].out, (struct sockaddr *)&a, sizeof(a)) < 0) die("connect");
    c[i].in = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (c[i].in < 0) die("accept");
    nonblock(c[i].out);
    nonblock(c[i].in);
    c[i].file = -2; /* not opened yet */
  }
  close(lfd);
}

/* Sends what the socket takes; returns whether anything moved. */
static int send_some(copy *c, const char *path, long long size) {
  if (c->out < 0) return 0;
  if (c->file == -2 && (c->file = open(path, O_RDONLY | O_CLOEXEC)) < 0) die("open");
  ssize_t n = sendfile(c->out, c->file, NULL, (size_t)(size - c->sent));
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return 0;
    die("sendfile");
  }
  c->sent += n;
  if (c->sent == size) {
    close(c->file);
    close(c->out);
    c->file = c->out = -1;
  }
  return n > 0;
}

/* Reads what has arrived; returns whether anything moved. */
static int read_some(copy *c, char *buf) {
  int moved = 0;
  while (c->in >= 0) {
    ssize_t n = read(c->in, buf, CHUNK);
    if (n > 0) {
      c->received += n;
      moved = 1;
    } else if (n == 0) {
      close(c->in);
      c->in = -1;
      moved = 1;
    } else if (errno == EAGAIN || errno == EINTR) {
      break;
    } else {
      die("read");
    }
  }
  return moved;
}

/* Nothing moved in a whole round: wait until some copy can go on. */
static void wait_any(copy *c, int n, struct pollfd *p) {
  int k = 0;
  for (int i = 0; i < n; i++) {
    if (c[i].out >= 0) p[k++] = (struct pollfd){.fd = c[i].out, .events = POLLOUT};
    if (c[i].in >= 0) p[k++] = (struct pollfd){.fd = c[i].in, .events = POLLIN};
  }
  if (k > 0 && poll(p, (nfds_t)k, 1000) < 0 && errno != EINTR) die("poll");
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: concurrent_copies FILE COPIES\n");
    return 2;
  }
  const char *path = argv[1];
  int n = atoi(argv[2]);
  struct stat st;
  if (n <= 0 || stat(path, &st) < 0) die("concurrent_copies: arguments");
  copy *c = calloc((size_t)n, sizeof(copy));
  struct pollfd *p = calloc(2 * (size_t)n, sizeof(struct pollfd));
  static char buf[CHUNK];
  if (!c || !p) die("calloc");
  connect_all(c, n);

  long long start_ns = figures_now_ns();
  int open_copies = n;
  while (open_copies > 0) {
    int moved = 0;
    open_copies = 0;
    for (int i = 0; i < n; i++) {
      moved |= send_some(&c[i], path, (long long)st.st_size);
      moved |= read_some(&c[i], buf);
      open_copies += c[i].in >= 0;
    }
    if (!moved && open_copies > 0) wait_any(c, n, p);
  }
  long long total = 0;
  for (int i = 0; i < n; i++) {
    if (c[i].received != (long long)st.st_size) {
      fprintf(stderr, "concurrent_copies: copy %d received %lld bytes, not %lld\n", i, c[i].received,
              (long long)st.st_size);
      return 1;
    }
    total += c[i].received;
  }
  figures_print(stdout, start_ns, total, total);
  return 0;
}
