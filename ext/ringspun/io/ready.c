/* The readiness strategy: waiting for an fd the way the current fiber
 * allows (an op on our backend under a Ringspun scheduler, another
 * scheduler's io_wait, or poll(2) with the GVL released), and the
 * zero-copy steps that always take it: splice(2), tee(2) and sendfile(2)
 * for splice.c and http1_io.c, each a non-blocking call and on EAGAIN a
 * wait for the side that is not ready.
 *
 * Why not IORING_OP_SPLICE: io_uring always runs it in an io-wq worker, and
 * that hop measured 3x slower with 10x the CPU of the syscall for 1 GiB file
 * to loopback socket (kernel 6.18); a splice that waits there would also pin
 * a worker. The poll parks no worker, so idle transfers cost no threads. */
#include "io/io.h"
#include "runtime/errors.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <ruby/fiber/scheduler.h>
#include <ruby/thread.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

static ID id_for_fd, id_autoclose;

bool rs_fd_ready(int fd, short events) {
  struct pollfd p = {.fd = fd, .events = events};
  return poll(&p, 1, 0) > 0;
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
  struct pollfd *pfds;
  long n;
  int timeout_ms;
  int ret, err;
} poll_args;

static void *poll_nogvl(void *p) {
  poll_args *a = p;
  a->ret = poll(a->pfds, (nfds_t)a->n, a->timeout_ms);
  a->err = errno;
  return NULL;
}

/* poll(2) with the GVL released: its result, or -errno. */
static int poll_without_gvl(struct pollfd *pfds, long n, int timeout_ms) {
  poll_args a = {pfds, n, timeout_ms, 0, 0};
  rb_thread_call_without_gvl(poll_nogvl, &a, RUBY_UBF_IO, NULL);
  return a.ret < 0 ? -a.err : a.ret;
}

static int wait_blocking(int fd, short events, int64_t timeout_ns) {
  uint64_t deadline = timeout_ns >= 0 ? rs_now_ns() + (uint64_t)timeout_ns : 0;
  for (;;) {
    struct pollfd pfd = {.fd = fd, .events = events};
    int timeout_ms = -1;
    if (timeout_ns >= 0) {
      uint64_t now = rs_now_ns();
      timeout_ms = now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
    }
    int ret = poll_without_gvl(&pfd, 1, timeout_ms);
    if (ret >= 0) return ret == 0 ? 0 : pfd.revents;
    if (ret != -EINTR) return ret;
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
    int state = rs_park(w->s);
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

int rs_io_wait_any(struct pollfd *pfds, long n, int64_t timeout_ns) {
  rs_sched *s = rs_sched_current();
  if (s) return wait_any_native(s, pfds, n, timeout_ns);
  /* Without a Ringspun scheduler: poll(2) with the GVL released. */
  int ret = poll_without_gvl(pfds, n, timeout_ns < 0 ? -1 : (int)((timeout_ns + 999999) / 1000000));
  if (ret < 0) return ret == -EINTR ? 0 : ret;
  return ret > 0;
}

/* ---- splice, tee, sendfile ------------------------------------------------------ */

long rs_splice_step(int kind, int in, int out, size_t len) {
  if (len > RS_SPLICE_MAX_CHUNK) len = RS_SPLICE_MAX_CHUNK;
  for (;;) {
    ssize_t n = kind == RS_MOVE_TEE ? tee(in, out, len, SPLICE_F_NONBLOCK)
                                  : splice(in, NULL, out, NULL, len, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

/* After EAGAIN: wait for the side that is not ready. Returns 0 or -errno
 * and names the side in *side. */
static int wait_blocked_side(int in, int out, const char **side) {
  if (!rs_fd_ready(in, POLLIN)) {
    *side = "src";
    int r = rs_io_wait_fd(in, POLLIN, -1);
    return r < 0 ? r : 0;
  }
  *side = "dest";
  int r = rs_io_wait_fd(out, POLLOUT, -1);
  return r < 0 ? r : 0;
}

/* Which side an errno belongs to, for the message: a reset or hung-up
 * source says so through poll(2); writing errors are the destination's. */
static const char *side_of(int err, int in) {
  struct stat st;
  if ((err == ECONNRESET || err == ENOTCONN || err == ETIMEDOUT) && fstat(in, &st) == 0 && S_ISSOCK(st.st_mode)) {
    /* Only a socket source can be reset (a pipe whose writer is gone also
     * shows POLLHUP). */
    struct pollfd p = {.fd = in, .events = POLLIN};
    if (poll(&p, 1, 0) > 0 && (p.revents & (POLLERR | POLLHUP))) return "src";
  }
  switch (err) {
  case EPIPE:
  case ECONNRESET:
  case ENOSPC:
  case EDQUOT:
  case EFBIG:
  case ENOTCONN:
    return "dest";
  default:
    return "src";
  }
}

long rs_move_once(int kind, int in, int out, size_t len, const char *call) {
  for (;;) {
    long n = rs_splice_step(kind, in, out, len);
    if (n >= 0) return n;
    if (n != -EAGAIN) rs_raise_side(call, (int)-n, side_of((int)-n, in));
    const char *side = "src";
    int w = wait_blocked_side(in, out, &side);
    if (w < 0) rs_raise_side(call, -w, side);
  }
}

long rs_splice_some(int in, int out, size_t len, const char *call) {
  return rs_move_once(RS_MOVE_SPLICE, in, out, len, call);
}

long rs_sendfile_some(int out, int in, size_t len, const char *call, bool refusable) {
  for (;;) {
    ssize_t n = sendfile(out, in, NULL, len);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    if (refusable && (errno == EINVAL || errno == ENOSYS)) return -errno;
    if (errno != EAGAIN) rs_raise_side(call, errno, side_of(errno, in)); /* EIO: src */
    int w = rs_io_wait_fd(out, POLLOUT, -1);
    if (w < 0) rs_raise_side(call, -w, "dest");
  }
}

void rs_splice_exactly(int in, int out, size_t len, const char *call) {
  while (len > 0) {
    long n = rs_move_once(RS_MOVE_SPLICE, in, out, len, call);
    if (n == 0) rs_raise_side(call, EPIPE, "dest");
    len -= (size_t)n;
  }
}

int rs_pipe_open(int fds[2], size_t want, size_t *cap) {
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) return -errno;
  /* A bigger pipe means fewer, larger splices; the limit for unprivileged
   * users (/proc/sys/fs/pipe-max-size) may refuse it, which is harmless. */
  if (want > 65536) fcntl(fds[1], F_SETPIPE_SZ, (int)(want > 1048576 ? 1048576 : want));
  int sz = fcntl(fds[1], F_GETPIPE_SZ);
  if (cap) *cap = sz > 0 ? (size_t)sz : 65536;
  return 0;
}

void rs_init_io_ready(void) {
  id_for_fd = rb_intern("for_fd");
  id_autoclose = rb_intern("autoclose");
}
