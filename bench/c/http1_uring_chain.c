/* The io_uring design issue 6 names for http1_splice_chunked, in C with
 * no runtime around it, to measure the design itself:
 *
 *   http1_uring_chain [MAXLEN] < FILE > SOCKET
 *
 * Each chunk is one submission: a linked pair, the header write (with the
 * previous chunk's CRLF merged in front) then IORING_OP_SPLICE of the chunk
 * from a private pipe to the socket, and beside it the splice of the next
 * chunk from the file into the pipe. The pipe holds two chunks, so the
 * two splices overlap. A header or splice cut short (a full socket breaks
 * the link with -EAGAIN) is finished with write(2)/splice(2) and poll(2).
 * io-wq is capped at 4 workers, as Ringspun caps it.
 *
 * Prints the figures line of figures.h on stderr, with payload=N. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "figures.h"

enum { HEADER = 1, OUT = 2, IN = 3 };

static void die(const char *what, int err) {
  fprintf(stderr, "http1_uring_chain: %s: %s\n", what, strerror(err));
  exit(1);
}

static void wait_writable(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  if (poll(&p, 1, -1) < 0 && errno != EINTR) die("poll", errno);
}

/* The rest of what a broken chain left undone, by plain system calls. */
static void write_rest(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n > 0) {
      buf += n;
      len -= (size_t)n;
    } else if (errno == EAGAIN) {
      wait_writable(fd);
    } else if (errno != EINTR) {
      die("write", errno);
    }
  }
}

static void splice_rest(int pipe_r, int out, size_t len) {
  while (len > 0) {
    ssize_t n = splice(pipe_r, NULL, out, NULL, len, SPLICE_F_NONBLOCK);
    if (n > 0) len -= (size_t)n;
    else if (n < 0 && errno == EAGAIN) wait_writable(out);
    else if (n == 0 || errno != EINTR) die("splice to dest", n == 0 ? EPIPE : errno);
  }
}

static struct io_uring_sqe *sqe(struct io_uring *ring, unsigned long long tag) {
  struct io_uring_sqe *e = io_uring_get_sqe(ring);
  if (!e) die("io_uring_get_sqe", EBUSY);
  e->user_data = tag;
  return e;
}

/* Splice of up to len bytes from the file (its position) into the pipe. */
static void prep_in(struct io_uring *ring, int pipe_w, size_t len) {
  io_uring_prep_splice(sqe(ring, IN), 0, -1, pipe_w, -1, (unsigned)len, 0);
}

/* Submits what is prepared and waits for `want` completions; each result
 * lands in res[tag]. */
static void run(struct io_uring *ring, unsigned want, long res[4]) {
  int ret = io_uring_submit_and_wait(ring, want);
  if (ret < 0) die("io_uring_submit_and_wait", -ret);
  for (unsigned got = 0; got < want; got++) {
    struct io_uring_cqe *c;
    if ((ret = io_uring_wait_cqe(ring, &c)) < 0) die("io_uring_wait_cqe", -ret);
    res[c->user_data] = c->res;
    io_uring_cqe_seen(ring, c);
  }
}

int main(int argc, char **argv) {
  long long start_ns = figures_now_ns();
  size_t maxlen = argc > 1 ? strtoul(argv[1], NULL, 10) : 65536;
  int out = 1, pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) < 0) die("pipe2", errno);
  if (fcntl(pipe_fds[1], F_SETPIPE_SZ, (int)(2 * maxlen)) < 0) die("F_SETPIPE_SZ", errno);
  struct io_uring ring;
  int ret = io_uring_queue_init(8, &ring, 0);
  if (ret < 0) die("io_uring_queue_init", -ret);
  unsigned workers[2] = {4, 4};
  io_uring_register_iowq_max_workers(&ring, workers);

  long res[4] = {0};
  prep_in(&ring, pipe_fds[1], maxlen);
  run(&ring, 1, res);
  long long payload = 0;
  char header[2][32]; /* the one in flight stays untouched */
  for (int k = 0; res[IN] > 0; k ^= 1) {
    long n = res[IN];
    int hl = snprintf(header[k], sizeof(header[k]), "%s%lx\r\n", payload ? "\r\n" : "", n);
    struct io_uring_sqe *h = sqe(&ring, HEADER);
    io_uring_prep_write(h, out, header[k], (unsigned)hl, 0);
    h->flags |= IOSQE_IO_LINK;
    io_uring_prep_splice(sqe(&ring, OUT), pipe_fds[0], -1, out, -1, (unsigned)n, 0);
    prep_in(&ring, pipe_fds[1], maxlen);
    run(&ring, 3, res);
    if (res[HEADER] < 0 && res[HEADER] != -EAGAIN) die("header write", (int)-res[HEADER]);
    long wrote = res[HEADER] > 0 ? res[HEADER] : 0;
    if (wrote < hl) { /* the link broke before the splice */
      write_rest(out, header[k] + wrote, (size_t)(hl - wrote));
      res[OUT] = 0;
    }
    if (res[OUT] < 0 && res[OUT] != -EAGAIN && res[OUT] != -ECANCELED) die("splice to dest", (int)-res[OUT]);
    long moved = res[OUT] > 0 ? res[OUT] : 0;
    if (moved < n) splice_rest(pipe_fds[0], out, (size_t)(n - moved));
    payload += n;
  }
  if (res[IN] < 0) die("splice from src", (int)-res[IN]);
  static const char last[] = "\r\n0\r\n\r\n";
  write_rest(out, last + (payload ? 0 : 2), sizeof(last) - 1 - (payload ? 0 : 2));
  io_uring_queue_exit(&ring);
  fprintf(stderr, "payload=%lld ", payload);
  figures_print(stderr, start_ns, payload, payload);
  return 0;
}
