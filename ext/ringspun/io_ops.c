/* IO operations with two strategies (ARCHITECTURE.md, layer 4):
 * - native: the current fiber runs under a Ringspun scheduler on io_uring:
 *   prepare an SQE and park the fiber;
 * - readiness: everything else (Ringspun on epoll, another scheduler, no
 *   scheduler): the non-blocking system call, and on EAGAIN a readiness wait
 *   through whatever scheduler is current, or poll(2) with the GVL released. */
#include "ringspun.h"
#include <errno.h>
#include <poll.h>
#include <ruby/fiber/scheduler.h>
#include <ruby/io.h>
#include <ruby/thread.h>
#include <unistd.h>
#include <limits.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

static ID id_for_fd, id_autoclose, id_to_io, id_read_io, id_write_io, id_readpartial, id_closed_p, id_read;

static VALUE unget_bytes(VALUE p) {
  VALUE *args = (VALUE *)p;
  return rb_io_ungetbyte(args[0], args[1]);
}

VALUE rs_kwarg(VALUE opts, const char *name) {
  if (NIL_P(opts)) return Qundef;
  ID key = rb_intern(name);
  VALUE val;
  rb_get_kwargs(opts, &key, 0, 1, &val);
  return val;
}

int rs_io_fd(VALUE io) {
  if (RB_INTEGER_TYPE_P(io)) {
    int fd = NUM2INT(io);
    if (fd < 0) rb_raise(rb_eArgError, "negative file descriptor %d", fd);
    return fd;
  }
  if (!RB_TYPE_P(io, T_FILE)) {
    if (!rb_respond_to(io, id_to_io))
      rb_raise(rb_eTypeError, "expected an IO or an Integer file descriptor, got %" PRIsVALUE, rb_obj_class(io));
    io = rb_convert_type(io, T_FILE, "IO", "to_io");
  }
  rb_io_t *fptr;
  GetOpenFile(io, fptr); /* raises IOError on a closed stream */
  return rb_io_descriptor(io);
}

static int wait_native(rs_sched *s, int fd, short events, int64_t timeout_ns) {
  rs_op *op = rs_op_new(s, RS_OP_POLL);
  op->fd = fd;
  op->events = (uint32_t)events;
  op->timeout_ns = timeout_ns;
  int ret = rs_op_await(s, op);
  return ret == -ETIME ? 0 : ret;
}

typedef struct poll_args {
  struct pollfd pfd;
  int timeout_ms;
  int ret, err;
} poll_args;

static void *poll_nogvl(void *p) {
  poll_args *a = p;
  a->ret = poll(&a->pfd, 1, a->timeout_ms);
  a->err = errno;
  return NULL;
}

static int wait_blocking(int fd, short events, int64_t timeout_ns) {
  uint64_t deadline = timeout_ns >= 0 ? rs_now_ns() + (uint64_t)timeout_ns : 0;
  for (;;) {
    poll_args a = {.pfd = {.fd = fd, .events = events}, .timeout_ms = -1};
    if (timeout_ns >= 0) {
      uint64_t now = rs_now_ns();
      a.timeout_ms = now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
    }
    rb_thread_call_without_gvl(poll_nogvl, &a, RUBY_UBF_IO, NULL);
    if (a.ret >= 0) return a.ret == 0 ? 0 : a.pfd.revents;
    if (a.err != EINTR) return -a.err;
    rb_thread_check_ints();
  }
}

/* Another scheduler's io_wait, on an IO made for the fd. "Forever" is asked
 * as an hour at a time: Async 2.24 on Ruby 3.1 calls IO#timeout (a Ruby 3.2
 * method) whenever io_wait gets no timeout. */
static int wait_foreign(VALUE scheduler, int fd, short events, int64_t timeout_ns) {
  VALUE kw = rb_hash_new();
  rb_hash_aset(kw, ID2SYM(id_autoclose), Qfalse);
  VALUE args[2] = {INT2NUM(fd), kw};
  VALUE io = rb_funcallv_kw(rb_cIO, id_for_fd, 2, args, RB_PASS_KEYWORDS);
  for (;;) {
    VALUE timeout = DBL2NUM(timeout_ns < 0 ? 3600.0 : (double)timeout_ns / 1e9);
    VALUE r = rb_fiber_scheduler_io_wait(scheduler, io, INT2NUM(events), timeout);
    if (RTEST(r)) return NUM2INT(r);
    if (timeout_ns >= 0) return 0;
  }
}

int rs_io_wait_fd(int fd, short events, int64_t timeout_ns) {
  rs_sched *s = rs_sched_current();
  if (s) return wait_native(s, fd, events, timeout_ns);
  VALUE scheduler = rb_fiber_scheduler_current();
  if (!NIL_P(scheduler)) return wait_foreign(scheduler, fd, events, timeout_ns);
  return wait_blocking(fd, events, timeout_ns);
}

/* ---- waiting for one of several fds ---------------------------------------------- */

typedef struct wait_any {
  rs_sched *s;
  rs_op **ops;
  long n;       /* ops started */
} wait_any;

static VALUE wait_any_park(VALUE p) {
  wait_any *w = (wait_any *)p;
  for (;;) {
    for (long i = 0; i < w->n; i++) {
      rs_op *op = w->ops[i];
      if (!op->done) continue;
      if (op->result < 0 && op->result != -ETIME) return INT2NUM(op->result);
      return INT2NUM(op->kind == RS_OP_TIMER || op->result == -ETIME ? 0 : 1);
    }
    int state = rs_sched_park(w->s);
    if (state) rb_jump_tag(state);
  }
}

/* The polls still in flight are cancelled and waited for, so none
 * outlives the wait (as for any interrupted operation). */
static VALUE wait_any_release(VALUE p) {
  wait_any *w = (wait_any *)p;
  for (long i = 0; i < w->n; i++) rs_op_cancel(w->s, w->ops[i]);
  for (long i = 0; i < w->n; i++) {
    rs_op_drain(w->s, w->ops[i]);
    rs_op_release(w->s, w->ops[i]);
  }
  w->n = 0;
  return Qnil;
}

static VALUE wait_any_start(VALUE p) {
  return rb_ensure(wait_any_park, p, wait_any_release, p);
}

static int wait_any_native(rs_sched *s, struct pollfd *pfds, long n, int64_t timeout_ns) {
  VALUE holder;
  rs_op **ops = ALLOCV_N(rs_op *, holder, n + 1);
  wait_any w = {s, ops, 0};
  int ret = 0;
  for (long i = 0; i <= n && ret >= 0; i++) {
    if (i == n && timeout_ns < 0) break;
    rs_op *op = rs_op_new(s, i < n ? RS_OP_POLL : RS_OP_TIMER);
    if (i < n) {
      op->fd = pfds[i].fd;
      op->events = (uint32_t)pfds[i].events;
      op->timeout_ns = -1;
    } else {
      op->timeout_ns = timeout_ns;
    }
    ret = rs_op_start(s, op); /* releases op on failure */
    if (ret >= 0) ops[w.n++] = op;
  }
  if (ret < 0) {
    wait_any_release((VALUE)&w);
    ALLOCV_END(holder);
    return ret;
  }
  VALUE r = wait_any_start((VALUE)&w);
  ALLOCV_END(holder);
  return NUM2INT(r);
}

typedef struct poll_many {
  struct pollfd *pfds;
  long n;
  int timeout_ms;
  int ret, err;
} poll_many;

static void *poll_many_nogvl(void *p) {
  poll_many *a = p;
  a->ret = poll(a->pfds, (nfds_t)a->n, a->timeout_ms);
  a->err = errno;
  return NULL;
}

int rs_io_wait_any(struct pollfd *pfds, long n, int64_t timeout_ns) {
  rs_sched *s = rs_sched_current();
  if (s) return wait_any_native(s, pfds, n, timeout_ns);
  /* Without a Ringspun scheduler: poll(2) with the GVL released. */
  poll_many a = {pfds, n, timeout_ns < 0 ? -1 : (int)((timeout_ns + 999999) / 1000000), 0, 0};
  rb_thread_call_without_gvl(poll_many_nogvl, &a, RUBY_UBF_IO, NULL);
  if (a.ret < 0) return a.err == EINTR ? 0 : -a.err;
  return a.ret > 0;
}

static VALUE pipe_class(void) {
  static VALUE cPipe = Qundef;
  if (cPipe == Qundef) {
    VALUE m = rb_const_get(rb_cObject, rb_intern("Ringspun"));
    if (!rb_const_defined(m, rb_intern("Pipe"))) return Qnil;
    cPipe = rb_const_get(m, rb_intern("Pipe"));
    rb_gc_register_mark_object(cPipe);
  }
  return cPipe;
}

/* A Delegator (Tempfile is one) forwards every call unchanged to the IO it
 * holds, so its fd carries the same bytes; other wrappers (an SSLSocket)
 * transform what passes through them and are never unwrapped. */
static VALUE delegated_io(VALUE obj) {
  static VALUE cDelegator = Qundef;
  if (cDelegator == Qundef) {
    cDelegator = rb_const_defined(rb_cObject, rb_intern("Delegator")) ? rb_const_get(rb_cObject, rb_intern("Delegator")) : Qnil;
    if (!NIL_P(cDelegator)) rb_gc_register_mark_object(cDelegator);
  }
  if (NIL_P(cDelegator) || !rb_obj_is_kind_of(obj, cDelegator)) return Qnil;
  VALUE target = rb_funcall(obj, rb_intern("__getobj__"), 0);
  return RB_TYPE_P(target, T_FILE) ? target : Qnil;
}

VALUE rs_io_end_io(VALUE obj, int side) {
  if (RB_INTEGER_TYPE_P(obj)) return Qnil;
  if (RB_TYPE_P(obj, T_FILE)) return obj;
  VALUE inner = delegated_io(obj);
  if (!NIL_P(inner)) return inner;
  VALUE cPipe = pipe_class();
  if (!NIL_P(cPipe) && rb_obj_is_kind_of(obj, cPipe))
    return rb_funcall(obj, side == RS_SIDE_READ ? id_read_io : id_write_io, 0);
  return Qundef;
}

/* Ruby's read buffer is reached through supported API only (its rb_io_t
 * fields are deprecated since Ruby 3.3): IO#readpartial hands out buffered
 * bytes without touching the fd whenever there are some, and
 * rb_io_ungetbyte puts bytes back in front. */
static rb_io_t *open_fptr(VALUE io) {
  if (NIL_P(io) || !RB_TYPE_P(io, T_FILE)) return NULL;
  return RFILE(io)->fptr;
}

bool rs_io_has_buffered(VALUE io) {
  rb_io_t *fptr = open_fptr(io);
  return fptr && rb_io_read_pending(fptr);
}

VALUE rs_io_take_buffered(VALUE io, long max) {
  if (max <= 0 || !rs_io_has_buffered(io)) return Qnil;
  /* readpartial allocates max bytes before it knows how many it has. */
  if (max > RS_TAKE_MAX) max = RS_TAKE_MAX;
  return rb_funcall(io, id_readpartial, 1, LONG2NUM(max));
}

/* Everything Ruby buffered, however many readpartial calls that takes. */
static VALUE take_all_buffered(VALUE io) {
  VALUE all = Qnil, part;
  while (!NIL_P(part = rs_io_take_buffered(io, RS_TAKE_MAX))) {
    if (NIL_P(all)) all = part;
    else rb_str_buf_append(all, part);
  }
  return all;
}

static bool try_unget(VALUE io, VALUE bytes) {
  int state = 0;
  VALUE args[2] = {io, bytes};
  rb_protect(unget_bytes, (VALUE)args, &state);
  if (state) rb_set_errinfo(Qnil);
  return state == 0;
}

/* Room asked for when Ruby's read buffer is first made by a give-back. */
#define RS_UNREAD_ROOM (256L * 1024)

VALUE rs_bytes_prepend(VALUE acc, const char *data, long n) {
  if (n <= 0) return acc;
  VALUE s = rb_str_buf_new(n + (NIL_P(acc) ? 0 : RSTRING_LEN(acc)));
  rb_str_buf_cat(s, data, n);
  if (!NIL_P(acc)) rb_str_buf_append(s, acc);
  return s;
}

void rs_io_unread(VALUE io, const char *data, long n) {
  if (n <= 0 || !open_fptr(io) || RTEST(rb_funcall(io, id_closed_p, 0))) return;
  /* Ours come first, then what Ruby still holds; one ungetbyte puts both
   * back, in that order. */
  VALUE back = rb_str_new(data, n);
  VALUE rest = take_all_buffered(io);
  if (!NIL_P(rest)) rb_str_buf_append(back, rest);
  long len = RSTRING_LEN(back);
  /* IO#ungetbyte takes bytes back only up to the capacity of Ruby's read
   * buffer, which Ruby fixes when it first makes the buffer: to 8 KiB on a
   * buffered read, or to the size of the first ungetbyte. So a give-back
   * asks for room to spare (padding in front, read out again at once), and
   * later ones fit in that room; where a buffer made smaller is already
   * there, the bytes alone may still fit. */
  long room = len > RS_UNREAD_ROOM / 2 ? 2 * len : RS_UNREAD_ROOM;
  VALUE padded = rb_str_buf_new(room);
  rb_str_resize(padded, room - len);
  memset(RSTRING_PTR(padded), 0, (size_t)(room - len));
  rb_str_buf_append(padded, back);
  if (try_unget(io, padded)) {
    rb_funcall(io, id_read, 1, LONG2NUM(room - len));
  } else if (!try_unget(io, back)) {
    rb_raise(rb_eIOError,
             "ringspun: %ld bytes read ahead do not fit back into %" PRIsVALUE "'s read buffer "
             "(IO#ungetbyte refused them: Ruby fixed its capacity when it first buffered a read)",
             len, rb_obj_class(io));
  }
  RB_GC_GUARD(back);
  RB_GC_GUARD(padded);
}

int rs_io_end_fd(VALUE obj, int side) {
  VALUE io = rs_io_end_io(obj, side);
  if (io != Qundef) {
    int fd = rs_io_fd(NIL_P(io) ? obj : io);
    /* What Ruby still buffers for this IO goes out before our bytes do
     * (IO#flush: nothing to do when its write buffer is empty). */
    if (side == RS_SIDE_WRITE && !NIL_P(io)) rb_io_flush(io);
    return fd;
  }
  if (rb_respond_to(obj, id_to_io))
    rb_raise(rb_eArgError,
             "%" PRIsVALUE " wraps another IO: splicing would bypass it (and TLS); pass the object to a "
             "primitive that writes through it, or pass a plain IO",
             rb_obj_class(obj));
  rb_raise(rb_eTypeError, "expected an IO, a Ringspun::Pipe or an Integer file descriptor, got %" PRIsVALUE,
           rb_obj_class(obj));
}

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

/* off < 0: at the file position, like read(2); else at off, like pread(2). */
static ssize_t native_rw(rs_sched *s, int kind, int fd, void *buf, size_t len, int64_t off, VALUE keep) {
  short events = kind == RS_OP_READ ? POLLIN : POLLOUT;
  ssize_t quick = try_nowait_at(kind, fd, buf, len, off);
  if (quick != -EAGAIN) return quick;
  for (;;) {
    rs_op *op = rs_op_new(s, kind);
    op->fd = fd;
    op->buf = buf;
    op->len = len > 0x7ffff000 ? 0x7ffff000 : len;
    op->off = off;
    op->keep = keep;
    int ret = rs_op_await(s, op);
    if (ret != -EAGAIN) return ret;
    /* The fd is O_NONBLOCK: io_uring honours that, so wait and retry. */
    ret = wait_native(s, fd, events, -1);
    if (ret < 0) return ret;
  }
}

static bool fd_ready(int fd, short events) {
  struct pollfd p = {.fd = fd, .events = events};
  return poll(&p, 1, 0) > 0;
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
  if (n != -EAGAIN || !fd_ready(fd, kind == RS_OP_READ ? POLLIN : POLLOUT)) return n;
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
  if (fd < 0 || !again_mark(s, fd, true) || !fd_ready(fd, events)) return n;
  again_mark(s, fd, false);
  /* On epoll the plain call (the fd is ready); on io_uring the ring. */
  return s->backend.ops->native ? native_rw(s, kind, fd, buf, len, -1, keep) : plain_rw(kind, fd, buf, len);
}

ssize_t rs_io_read_keep(int fd, void *buf, size_t len, VALUE keep) {
  rs_sched *s = native_sched();
  return s ? native_rw(s, RS_OP_READ, fd, buf, len, -1, keep) : ready_rw(RS_OP_READ, fd, buf, len);
}

ssize_t rs_io_write_keep(int fd, const void *buf, size_t len, VALUE keep) {
  rs_sched *s = native_sched();
  void *p = (void *)buf; /* the kernel only reads it */
  return s ? native_rw(s, RS_OP_WRITE, fd, p, len, -1, keep) : ready_rw(RS_OP_WRITE, fd, p, len);
}

ssize_t rs_io_prw_keep(int kind, int fd, void *buf, size_t len, int64_t off, VALUE keep) {
  rs_sched *s = native_sched();
  if (s) return native_rw(s, kind, fd, buf, len, off, keep);
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

void rs_init_io_ops(VALUE mRingspun) {
  (void)mRingspun;
  id_for_fd = rb_intern("for_fd");
  id_autoclose = rb_intern("autoclose");
  id_to_io = rb_intern("to_io");
  id_read_io = rb_intern("read_io");
  id_write_io = rb_intern("write_io");
  id_readpartial = rb_intern("readpartial");
  id_closed_p = rb_intern("closed?");
  id_read = rb_intern("read");
}
