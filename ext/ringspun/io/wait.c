/* Readiness waits, in the strategy the current fiber allows: an op on
 * our backend under a Ringspun scheduler, another scheduler's io_wait, or
 * poll(2) with the GVL released. */
#include "io/io.h"
#include <errno.h>
#include <poll.h>
#include <ruby/fiber/scheduler.h>
#include <ruby/thread.h>

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

void rs_init_io_wait(void) {
  id_for_fd = rb_intern("for_fd");
  id_autoclose = rb_intern("autoclose");
}
