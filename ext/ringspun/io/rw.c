/* Reading and writing with the two strategies:
 * - native: the current fiber runs under a Ringspun scheduler on io_uring:
 *   an RWF_NOWAIT try, else an op on the ring and the fiber parks;
 * - readiness: everything else (Ringspun on epoll, another scheduler, no
 *   scheduler): the non-blocking system call, and on EAGAIN a readiness wait
 *   (ready.c). A blocking fd never blocks the loop on either. */
#include "io/io.h"
#include "runtime/errors.h"
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static rs_sched *native_sched(void) {
  rs_sched *s = rs_sched_current();
  return s && s->backend.ops->native ? s : NULL;
}

/* The data is often already there (or the room, for a write): one
 * RWF_NOWAIT system call then beats a trip through the ring and a fiber
 * switch. Returns -EAGAIN when it would block or the file cannot say. */
static ssize_t try_nowait_at(int kind, int fd, void *buf, size_t len, int64_t off) {
  struct iovec iov = {buf, len};
  for (;;) {
    ssize_t n = kind == RS_OP_READ ? preadv2(fd, &iov, 1, (off_t)off, RWF_NOWAIT) : pwritev2(fd, &iov, 1, (off_t)off, RWF_NOWAIT);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    return errno == EOPNOTSUPP || errno == EINVAL || errno == EWOULDBLOCK ? -EAGAIN : -errno;
  }
}

/* At the file position (read(2)/write(2)). */
static ssize_t try_nowait(int kind, int fd, void *buf, size_t len) { return try_nowait_at(kind, fd, buf, len, -1); }

/* One read or write on the ring, parked on; `keep` owns buf (or Qnil).
 * Interrupted, it waits for the kernel, sets *salvaged (when given) to what
 * a read took meanwhile (the bytes are in buf), and re-raises. */
static int ring_rw(rs_sched *s, int kind, int fd, void *buf, size_t len, int64_t off, VALUE keep, ssize_t *salvaged) {
  rs_op *op = rs_op_new(s, kind);
  op->fd = fd;
  op->buf = buf;
  op->len = len > 0x7ffff000 ? 0x7ffff000 : len; /* what read(2) does at most */
  op->off = off;
  rs_op_write(op, &op->keep, keep);
  int ret = rs_op_begin(s, op); /* releases op on failure */
  if (ret < 0) return ret;
  int result = 0;
  int state = rs_op_wait_salvage(s, op, &result);
  rs_op_release(s, op);
  if (state) {
    if (salvaged) *salvaged = kind == RS_OP_READ && result > 0 ? result : 0;
    rb_jump_tag(state);
  }
  return result;
}

/* off < 0: at the file position, like read(2); else at off, like pread(2).
 * salvaged: see ring_rw (NULL: the bytes of an interrupted read are lost). */
static ssize_t native_rw(rs_sched *s, int kind, int fd, void *buf, size_t len, int64_t off, VALUE keep,
                         ssize_t *salvaged) {
  short events = kind == RS_OP_READ ? POLLIN : POLLOUT;
  ssize_t quick = try_nowait_at(kind, fd, buf, len, off);
  if (quick != -EAGAIN) return quick;
  for (;;) {
    int ret = ring_rw(s, kind, fd, buf, len, off, keep, salvaged);
    if (ret != -EAGAIN) return ret;
    /* The fd is O_NONBLOCK: io_uring honours that, so wait and retry. */
    ret = rs_io_wait_fd(fd, events, -1);
    if (ret < 0) return ret;
  }
}

/* The plain call once poll(2) said ready. A write is capped at PIPE_BUF:
 * a blocking pipe that polls writable has that much room, and no more is
 * promised (write(2) would wait for the rest). */
static ssize_t plain_rw(int kind, int fd, void *buf, size_t len) {
  if (kind == RS_OP_WRITE && len > PIPE_BUF) len = PIPE_BUF;
  for (;;) {
    ssize_t n = kind == RS_OP_READ ? read(fd, buf, len) : write(fd, buf, len);
    if (n >= 0) return n;
    if (errno != EINTR) return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  }
}

/* One attempt that never blocks, whatever the fd's O_NONBLOCK says: an fd
 * Ruby did not make non-blocking ($stdin, an inherited pipe, a socket set
 * blocking) must not stop the loop, every other fiber and, with the GVL
 * held, every other thread. Sockets and pipes honour RWF_NOWAIT on a
 * blocking fd too. Where the file cannot (a tty; a regular file whose
 * pages are not cached, which poll(2) calls ready), the plain call runs
 * only once poll(2) says it will not wait. -EAGAIN: not ready. */
static ssize_t rw_nowait(int kind, int fd, void *buf, size_t len) {
  ssize_t n = try_nowait(kind, fd, buf, len);
  if (n != -EAGAIN || !rs_fd_ready(fd, kind == RS_OP_READ ? POLLIN : POLLOUT)) return n;
  return plain_rw(kind, fd, buf, len);
}

/* A socket's or pipe's EAGAIN is the truth: wait. Only an EAGAIN right
 * after a wait said ready (a regular file, a tty, a spurious wakeup) asks
 * poll(2), so the common wait costs no extra system call. */
static ssize_t ready_rw(int kind, int fd, void *buf, size_t len) {
  short events = kind == RS_OP_READ ? POLLIN : POLLOUT;
  bool waited = false;
  for (;;) {
    ssize_t n = waited ? rw_nowait(kind, fd, buf, len) : try_nowait(kind, fd, buf, len);
    if (n != -EAGAIN) return n;
    int ret = rs_io_wait_fd(fd, events, -1);
    if (ret < 0) return ret;
    waited = true;
  }
}

/* Sets or clears fd's "EAGAIN last time" bit; returns its previous value.
 * The table grows only to set a bit: an fd past its end is clear. */
static bool again_mark(rs_sched *s, int fd, bool on) {
  size_t word = (size_t)fd / 64;
  uint64_t bit = 1ULL << (fd % 64);
  if (word >= s->again_words) {
    if (!on) return false;
    size_t n = word + 1 < 64 ? 64 : 2 * (word + 1);
    s->again_bits = ruby_xrealloc2(s->again_bits, n, sizeof(uint64_t));
    memset(s->again_bits + s->again_words, 0, (n - s->again_words) * sizeof(uint64_t));
    s->again_words = n;
  }
  bool was = (s->again_bits[word] & bit) != 0;
  if (on) s->again_bits[word] |= bit;
  else s->again_bits[word] &= ~bit;
  return was;
}

/* One attempt for Ruby's own read/write (length 0). RWF_NOWAIT's EAGAIN
 * means "wait" for a socket or pipe, but for a regular file it means "not
 * in the page cache" while poll(2) says ready, and returning it would have
 * Ruby wait and retry forever. The first EAGAIN on an fd goes straight
 * back to Ruby, which waits; a second one in a row (a spurious wakeup, or
 * that regular file) asks poll(2), and a ready fd is read through the
 * ring, which does block on the page cache (on epoll: the plain call).
 * Either backend, a blocking fd never blocks the loop here. */
ssize_t rs_io_once(int kind, int fd, void *buf, size_t len, VALUE keep) {
  short events = kind == RS_OP_READ ? POLLIN : POLLOUT;
  rs_sched *s = rs_sched_current();
  if (!s) return rw_nowait(kind, fd, buf, len);
  ssize_t n = try_nowait(kind, fd, buf, len);
  if (n != -EAGAIN) {
    if (fd >= 0) again_mark(s, fd, false);
    return n;
  }
  if (fd < 0 || !again_mark(s, fd, true) || !rs_fd_ready(fd, events)) return n;
  again_mark(s, fd, false);
  /* On epoll the plain call (the fd is ready); on io_uring the ring. */
  return s->backend.ops->native ? native_rw(s, kind, fd, buf, len, -1, keep, NULL) : plain_rw(kind, fd, buf, len);
}

ssize_t rs_io_read_keep(int fd, void *buf, size_t len, VALUE keep) {
  rs_sched *s = native_sched();
  return s ? native_rw(s, RS_OP_READ, fd, buf, len, -1, keep, NULL) : ready_rw(RS_OP_READ, fd, buf, len);
}

ssize_t rs_io_read_salvage(int fd, void *buf, size_t len, VALUE keep, ssize_t *salvaged) {
  rs_sched *s = native_sched();
  /* (Elsewhere an exception comes only while it waits, before the read.) */
  return s ? native_rw(s, RS_OP_READ, fd, buf, len, -1, keep, salvaged) : ready_rw(RS_OP_READ, fd, buf, len);
}

ssize_t rs_io_write_keep(int fd, const void *buf, size_t len, VALUE keep) {
  rs_sched *s = native_sched();
  void *p = (void *)buf; /* the kernel only reads it */
  return s ? native_rw(s, RS_OP_WRITE, fd, p, len, -1, keep, NULL) : ready_rw(RS_OP_WRITE, fd, p, len);
}

ssize_t rs_io_prw_keep(int kind, int fd, void *buf, size_t len, int64_t off, VALUE keep) {
  rs_sched *s = native_sched();
  if (s) return native_rw(s, kind, fd, buf, len, off, keep, NULL);
  /* pread(2) needs a file that can seek, which is always "ready"; a pipe
   * or socket answers ESPIPE. */
  for (;;) {
    ssize_t n = kind == RS_OP_READ ? pread(fd, buf, len, (off_t)off) : pwrite(fd, buf, len, (off_t)off);
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

void rs_write_all_direct(int fd, const void *buf, size_t len, bool more, const char *call) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL | (more ? MSG_MORE : 0));
    if (n < 0 && errno == ENOTSOCK) n = write(fd, p, len);
    if (n >= 0) {
      p += n;
      len -= (size_t)n;
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) rs_raise_side(call, errno, "dest");
    int w = rs_io_wait_fd(fd, POLLOUT, -1);
    if (w < 0) rs_raise_side(call, -w, "dest");
  }
}

/* Bytes Ruby already read into src's buffer precede the fd's: they are
 * written to out first. Returns how many. */
int64_t rs_move_buffered(VALUE src, int out, size_t max, const char *call) {
  VALUE io = rs_io_end_io(src, RS_SIDE_READ);
  if (io == Qundef) return 0;
  size_t total = 0;
  while (total < max) {
    /* Each take is at most RS_TAKE_MAX, so the long never overflows. */
    size_t left = max - total;
    VALUE got = rs_io_take_buffered(io, left > RS_TAKE_MAX ? RS_TAKE_MAX : (long)left);
    if (NIL_P(got)) break;
    rs_write_all_direct(out, RSTRING_PTR(got), (size_t)RSTRING_LEN(got), false, call);
    total += (size_t)RSTRING_LEN(got);
    RB_GC_GUARD(got);
  }
  return (int64_t)total;
}

rs_buf_pool *rs_current_pool(void) {
  rs_sched *s = rs_sched_current();
  return s ? &s->bufs : rs_buf_pool_thread();
}

static ssize_t write_all(int fd, const char *buf, size_t len) {
  size_t off = 0;
  while (off < len) {
    ssize_t n = rs_io_write_keep(fd, buf + off, len - off, Qnil);
    if (n < 0) return n;
    off += (size_t)n;
  }
  return (ssize_t)len;
}

/* p->block and p->pool are set by the caller; buf lies in p->block. */
void rs_pending_start(rs_pending *p, int kind, int fd, void *buf, size_t len) {
  p->s = native_sched();
  p->op = NULL;
  p->kind = kind;
  p->fd = fd;
  p->buf = buf;
  p->len = len;
  p->active = true;
  p->salvaged = 0;
  if (!p->s) return;
  rs_op *op = rs_op_new(p->s, kind);
  op->fd = fd;
  op->buf = buf;
  op->len = len;
  op->off = -1;
  if (rs_op_start(p->s, op) < 0) return; /* finish does it the slow way */
  p->op = op;
  op->block = p->block;
  op->block_pool = p->pool;
  p->op_owns_block = true;
}

ssize_t rs_pending_finish(rs_pending *p) {
  if (!p->active) return 0;
  ssize_t n = -EAGAIN;
  if (p->op) {
    rs_op *op = p->op;
    p->op = NULL;
    int result = 0;
    int state = rs_op_wait_salvage(p->s, op, &result);
    op->block = NULL; /* the kernel is done: the block is the caller's again */
    p->op_owns_block = false;
    rs_op_release(p->s, op);
    if (state) {
      /* A read that completed as the wait was interrupted took bytes from
       * the fd: keep them (in p->buf) for the caller's cleanup. */
      p->salvaged = p->kind == RS_OP_READ && result > 0 ? result : 0;
      p->active = false;
      rb_jump_tag(state);
    }
    n = result;
  }
  p->active = false;
  if (p->kind == RS_OP_READ) return n == -EAGAIN ? rs_io_read_keep(p->fd, p->buf, p->len, Qnil) : n;
  if (n == -EAGAIN) n = 0;
  if (n < 0) return n;
  /* A short write: the rest goes out now. */
  ssize_t rest = write_all(p->fd, p->buf + n, p->len - (size_t)n);
  return rest < 0 ? rest : (ssize_t)p->len;
}

static VALUE wait_value(VALUE p) {
  rs_pending *pd = (rs_pending *)p;
  rs_op *op = pd->op;
  pd->op = NULL;
  return LONG2NUM(rs_op_wait(pd->s, op));
}

ssize_t rs_pending_drain(rs_pending *p) {
  p->active = false;
  if (!p->op) return 0;
  rs_op_cancel(p->s, p->op);
  int state = 0;
  VALUE n = rb_protect(wait_value, (VALUE)p, &state);
  if (state) {
    rb_set_errinfo(Qnil);
    return -EINTR; /* the op keeps its block until its completion */
  }
  p->op_owns_block = false;
  return NUM2LONG(n);
}

