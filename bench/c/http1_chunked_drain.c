/* The far end of the http1_chunked case: drains stdin (the loopback TCP
 * socket the case hands over) until end of input.
 *
 *   http1_chunked_drain raw [FILE]      the bytes as they come
 *   http1_chunked_drain chunked [FILE]  an HTTP/1.1 chunked body: checks the
 *                                       framing (size CRLF data CRLF ...
 *                                       0 CRLF CRLF, then end of input)
 *
 * Without FILE the payload goes into /dev/null with splice(2), so the drain
 * costs next to nothing and the sender is what gets measured (raw mode is
 * the one the case times). With FILE the payload is read and compared with
 * the file's bytes, in order, and must be all of it (the case's untimed
 * check). Chunked framing is read with small read(2) calls; payload bytes
 * that come with it are taken from that buffer.
 * Prints one line: payload_bytes, chunks, wire_bytes, and this process's
 * cpu_s. Exit status 1 with a message on stderr for malformed framing. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "figures.h"

#define PIPE_SIZE (1 << 20)
#define FRAMING_READ 64
#define COMPARE_READ (256 * 1024)
#define MAX_SIZE_DIGITS 16

enum state { SIZE, SIZE_LF, DATA, DATA_CR, DATA_LF, LAST_CR, LAST_LF, DONE };

typedef struct drain {
  int in, pipe_r, pipe_w, null;
  int expect; /* FILE, or -1 */
  enum state state;
  int digits;
  uint64_t size, remaining;
  uint64_t payload, chunks, wire;
} drain;

static void fail(const drain *d, const char *why) {
  fprintf(stderr, "http1_chunked_drain: %s after %llu wire bytes\n", why, (unsigned long long)d->wire);
  exit(1);
}

static void die(const char *call) {
  perror(call);
  exit(1);
}

/* Moves up to len bytes from the socket to /dev/null; 0 at end of input. */
static size_t splice_away(drain *d, size_t len) {
  if (len > PIPE_SIZE) len = PIPE_SIZE;
  ssize_t n;
  do n = splice(d->in, NULL, d->pipe_w, NULL, len, SPLICE_F_MOVE);
  while (n < 0 && errno == EINTR);
  if (n < 0) die("http1_chunked_drain: splice from the socket");
  for (ssize_t left = n; left > 0;) {
    ssize_t m = splice(d->pipe_r, NULL, d->null, NULL, (size_t)left, SPLICE_F_MOVE);
    if (m < 0 && errno == EINTR) continue;
    if (m <= 0) die("http1_chunked_drain: splice to /dev/null");
    left -= m;
  }
  d->wire += (uint64_t)n;
  return (size_t)n;
}

/* Checks payload bytes against FILE at the payload offset so far. */
static void compare(drain *d, const char *data, size_t n) {
  static char want[COMPARE_READ];
  while (n > 0) {
    size_t len = n < sizeof(want) ? n : sizeof(want);
    ssize_t got = pread(d->expect, want, len, (off_t)d->payload);
    if (got < 0) die("http1_chunked_drain: pread FILE");
    if (got == 0) fail(d, "more payload than FILE has");
    if (memcmp(want, data, (size_t)got) != 0) fail(d, "the payload differs from FILE");
    d->payload += (uint64_t)got;
    data += got;
    n -= (size_t)got;
  }
}

/* Takes up to len payload bytes from the socket; 0 at end of input. */
static size_t take_payload(drain *d, size_t len) {
  if (d->expect < 0) {
    size_t n = splice_away(d, len);
    d->payload += n;
    return n;
  }
  static char buf[COMPARE_READ];
  if (len > sizeof(buf)) len = sizeof(buf);
  ssize_t n;
  do n = read(d->in, buf, len);
  while (n < 0 && errno == EINTR);
  if (n < 0) die("http1_chunked_drain: read");
  d->wire += (uint64_t)n;
  compare(d, buf, (size_t)n);
  return (size_t)n;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* One framing (or payload) byte. */
static void step(drain *d, char c) {
  switch (d->state) {
  case SIZE: {
    int v = hex_value(c);
    if (v >= 0) {
      if (++d->digits > MAX_SIZE_DIGITS) fail(d, "chunk size too long");
      d->size = d->size * 16 + (uint64_t)v;
    } else if (c == '\r' && d->digits > 0) {
      d->state = SIZE_LF;
    } else {
      fail(d, "bad chunk size");
    }
    return;
  }
  case SIZE_LF:
    if (c != '\n') fail(d, "no LF after the chunk size");
    if (d->size == 0) {
      d->state = LAST_CR;
    } else {
      d->remaining = d->size;
      d->chunks++;
      d->state = DATA;
    }
    return;
  case DATA:
    if (d->expect >= 0) compare(d, &c, 1);
    else d->payload++;
    if (--d->remaining == 0) d->state = DATA_CR;
    return;
  case DATA_CR:
  case LAST_CR:
    if (c != '\r') fail(d, "no CRLF after a chunk");
    d->state = d->state == DATA_CR ? DATA_LF : LAST_LF;
    return;
  case DATA_LF:
    if (c != '\n') fail(d, "no CRLF after a chunk");
    d->state = SIZE;
    d->size = 0;
    d->digits = 0;
    return;
  case LAST_LF:
    if (c != '\n') fail(d, "no CRLF after the last chunk (trailers are not expected)");
    d->state = DONE;
    return;
  case DONE:
    fail(d, "bytes after the last chunk");
  }
}

static void drain_chunked(drain *d) {
  char buf[FRAMING_READ];
  for (;;) {
    if (d->state == DATA && d->remaining > 0) {
      size_t n = take_payload(d, d->remaining);
      if (n == 0) fail(d, "end of input inside a chunk");
      d->remaining -= n;
      if (d->remaining == 0) d->state = DATA_CR;
      continue;
    }
    ssize_t n = read(d->in, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("http1_chunked_drain: read");
    if (n == 0) {
      if (d->state != DONE) fail(d, "end of input before the last chunk");
      return;
    }
    d->wire += (uint64_t)n;
    for (ssize_t i = 0; i < n; i++) step(d, buf[i]);
  }
}

static void drain_raw(drain *d) {
  while (take_payload(d, PIPE_SIZE) > 0) {
  }
}

int main(int argc, char **argv) {
  bool chunked = argc >= 2 && strcmp(argv[1], "chunked") == 0;
  if (argc < 2 || argc > 3 || (!chunked && strcmp(argv[1], "raw") != 0)) {
    fputs("usage: http1_chunked_drain raw|chunked [FILE] < socket\n", stderr);
    return 2;
  }
  drain d = {.in = 0, .state = SIZE, .expect = -1};
  if (argc == 3 && (d.expect = open(argv[2], O_RDONLY | O_CLOEXEC)) < 0) die("http1_chunked_drain: FILE");
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) < 0) die("http1_chunked_drain: pipe2");
  d.pipe_r = fds[0];
  d.pipe_w = fds[1];
  if (fcntl(d.pipe_w, F_SETPIPE_SZ, PIPE_SIZE) < 0) die("http1_chunked_drain: F_SETPIPE_SZ");
  d.null = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (d.null < 0) die("http1_chunked_drain: /dev/null");
  if (chunked) drain_chunked(&d);
  else drain_raw(&d);
  if (d.expect >= 0 && lseek(d.expect, 0, SEEK_END) != (off_t)d.payload) fail(&d, "less payload than FILE has");
  printf("payload_bytes=%llu chunks=%llu wire_bytes=%llu cpu_s=%.6f\n", (unsigned long long)d.payload,
         (unsigned long long)d.chunks, (unsigned long long)d.wire, figures_cpu_s());
  return 0;
}
