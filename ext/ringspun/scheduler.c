/* Ringspun::Scheduler: the Fiber::Scheduler class and its hooks, on the
 * runtime's loop (runtime/loop.c) and ops (runtime/op.c). The IO hooks are
 * in sched_io.c. Each hook is compiled in where the Ruby being built for
 * calls it (extconf.rb's have_func checks); the hooks of later Rubies are
 * defined on every Ruby so that their contracts can be tested directly. */
#include "ringspun.h"
#include <errno.h>
#include <poll.h>
#include <ruby/fiber/scheduler.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static VALUE cScheduler, cFiber, non_blocking_kw;
static ID id_new, id_report, id_hook_error_p, id_blocking_pool_iv, id_close;

/* Open, and serving the current thread (adopting it when it may). */
static void check_open(rs_sched *s) {
  if (s->closed) rb_raise(rb_eIOError, "ringspun: scheduler is closed");
  rs_sched_bind_thread(s);
}

static void check_parkable(rs_sched *s) {
  check_open(s);
  if (rb_fiber_current() == s->loop_fiber) rb_raise(rb_eRuntimeError, "ringspun: the loop fiber cannot wait on itself");
}

/* ---- construction, run, close -------------------------------------------------------- */

static VALUE sched_initialize(int argc, VALUE *argv, VALUE self) {
  VALUE opts;
  rb_scan_args(argc, argv, ":", &opts);
  VALUE want = rs_kwarg(opts, "backend");
  if (want == Qundef) want = Qnil;
  if (!NIL_P(want)) Check_Type(want, T_SYMBOL);
  rs_sched *s = rs_sched_get(self);
  rs_sched_write(s, &s->loop_fiber, rb_fiber_current());
  rs_sched_write(s, &s->thread, rb_thread_current());
  rs_sched_start(s, want);
  return self;
}

static VALUE sched_backend(VALUE self) { return rs_sched_backend_name(rs_sched_get(self)); }

/* The loop runs on whichever blocking fiber of the scheduler's thread calls
 * run (or close), as Fiber::Scheduler implementations do: fibers park by
 * switching to it. Two refusals: a non-blocking fiber would park into the
 * loop it runs, and a second run would steal the first one's fibers. */
static VALUE sched_run(VALUE self) {
  rs_sched *s = rs_sched_get(self);
  check_open(s);
  if (s->in_run) rb_raise(rb_eRuntimeError, "ringspun: the scheduler's loop is already running");
  if (!rs_fiber_blocking_p(rb_fiber_current()))
    rb_raise(rb_eRuntimeError, "ringspun: Scheduler#run must be called from a blocking fiber, not one it schedules");
  rs_loop_run(s);
  return self;
}

static VALUE sched_teardown(VALUE self) {
  rs_sched *s = rs_sched_get(self);
  if (s->closed) return Qnil;
  rs_loop_teardown(s);
  /* The Ruby threads that ran blocking_operation_wait's work (scheduler.rb). */
  VALUE pool = rb_attr_get(self, id_blocking_pool_iv);
  if (!NIL_P(pool)) rb_funcall(pool, id_close, 0);
  return Qnil;
}

/* Closes after an interrupted run: every fiber still parked gets
 * Ringspun::RunAborted raised where it waits, so its ensure clauses run
 * (files closed, locks released), then the backend goes. */
static VALUE sched_abandon(VALUE self) {
  rs_sched *s = rs_sched_get(self);
  if (s->closed) return Qnil;
  rs_loop_unwind(s);
  return sched_teardown(self);
}

static VALUE sched_close(VALUE self) {
  rs_sched *s = rs_sched_get(self);
  if (s->closed) return Qnil;
  /* Inside the running loop, or from a fiber it schedules: nothing to run. */
  if (s->closing || s->in_run || !rs_fiber_blocking_p(rb_fiber_current())) return sched_teardown(self);
  s->closing = true;
  rb_ensure(sched_run, self, sched_teardown, self);
  return Qnil;
}

/* Called in a forked child (fork.rb): fetching the state resets it. */
static VALUE sched_after_fork(VALUE self) {
  rs_sched_get(self);
  return self;
}

/* ---- hooks: fibers ------------------------------------------------------------------------ */

static VALUE call_proc(VALUE proc) { return rb_proc_call_with_block(proc, 0, NULL, Qnil); }

static VALUE report_error(VALUE a) {
  return rb_funcall(RARRAY_AREF(a, 0), id_report, 2, RARRAY_AREF(a, 1), RARRAY_AREF(a, 2));
}

static VALUE ask_hook_error(VALUE a) { return rb_funcall(RARRAY_AREF(a, 0), id_hook_error_p, 1, RARRAY_AREF(a, 1)); }

/* scheduler.rb decides; a failure to decide counts as no. */
static bool hook_error_p(VALUE self, VALUE err) {
  int state = 0;
  VALUE r = rb_protect(ask_hook_error, rb_assoc_new(self, err), &state);
  if (state) rb_set_errinfo(Qnil);
  return !state && RTEST(r);
}

static VALUE fiber_body(RB_BLOCK_CALL_FUNC_ARGLIST(yielded, data)) {
  VALUE self = RARRAY_AREF(data, 0);
  rs_sched *s = rs_sched_get(self);
  s->sw->resuming = Qnil;
  s->sw->running = rb_fiber_current();
  int state = 0;
  VALUE result = rb_protect(call_proc, RARRAY_AREF(data, 1), &state);
  rs_sched_forget_fiber(s, rb_fiber_current());
  if (!state) return result;
  VALUE err = rb_errinfo();
  if (state == 6 && rb_obj_is_kind_of(err, rs_eRunAborted)) {
    rb_set_errinfo(Qnil); /* unwound on purpose by sched_abandon */
    return Qnil;
  }
  if (state == 6 /* TAG_RAISE */ && rb_obj_is_kind_of(err, rb_eStandardError) && !hook_error_p(self, err)) {
    /* Like a Thread with report_on_exception: say so and let the others run. */
    rb_set_errinfo(Qnil);
    int ignored = 0;
    rb_protect(report_error, rb_ary_new_from_args(3, self, rb_fiber_current(), err), &ignored);
    if (ignored) rb_set_errinfo(Qnil);
    return Qnil;
  }
  if (state == 6) {
    /* SystemExit, Interrupt and friends end the whole run, and so does an
     * error raised by a hook the application overrode: it is the
     * scheduler's, not the fiber's, and must reach whoever waits on the
     * thread (as with Ruby's reference scheduler). */
    rb_set_errinfo(Qnil);
    rs_sched_write(s, &s->pending_error, err);
    return Qnil;
  }
  rb_jump_tag(state);
  return Qnil;
}

static VALUE sched_fiber(int argc, VALUE *argv, VALUE self) {
  rs_sched *s = rs_sched_get(self);
  rb_need_block();
  check_open(s);
  VALUE data = rb_ary_new_from_args(2, self, rb_block_proc());
  VALUE fiber = rb_funcall_with_block_kw(cFiber, id_new, 1, &non_blocking_kw, rb_proc_new(fiber_body, data),
                                         RB_PASS_KEYWORDS);
  rs_sched_add_fiber(s, fiber);
  VALUE me = rb_fiber_current();
  if (me == s->loop_fiber) {
    s->sw->running = fiber;
    s->sw->resuming = fiber;
    rb_fiber_transfer(fiber, 0, NULL);
    s->sw->running = me;
    s->sw->resuming = Qnil;
    rs_loop_raise_pending(s);
    return fiber;
  }
  /* The creator is runnable again at once; it waits in line behind others. */
  rs_requeue_and_park(s, fiber);
  return fiber;
}

/* ---- hooks: time ---------------------------------------------------------------------------- */

/* Parks in a way `unblock` can end: forever, or until `timeout` expires.
 * Returns true when unblocked, false when the time ran out. */
static VALUE wait_blocked(rs_sched *s, VALUE timeout) {
  check_parkable(s);
  /* Unblocked before it got here: the wake-up is not lost. (Ruby 3.1's
   * Mutex#sleep and ConditionVariable#wait wait in kernel_sleep, later
   * Rubies in block: both end on unblock.) */
  st_data_t key = (st_data_t)rb_fiber_current();
  if (st_delete(s->unblocked, &key, NULL)) return Qtrue;
  rs_op *op = rs_op_new(s, NIL_P(timeout) ? RS_OP_READY : RS_OP_TIMER);
  if (!NIL_P(timeout)) op->timeout_ns = rs_duration_ns(timeout);
  VALUE me = rb_fiber_current();
  st_insert(s->block_ops, (st_data_t)me, (st_data_t)op); /* (op holds the fiber for GC) */
  int ret = rs_op_await(s, op);
  if (ret == -ETIME) return Qfalse;
  if (ret < 0 && ret != -ECANCELED) rs_raise_errno(-ret, "timeout");
  return Qtrue;
}

static VALUE sched_kernel_sleep(int argc, VALUE *argv, VALUE self) {
  rs_sched *s = rs_sched_get(self);
  rb_check_arity(argc, 0, 1);
  wait_blocked(s, argc ? argv[0] : Qnil);
  return Qtrue;
}

static VALUE sched_block(int argc, VALUE *argv, VALUE self) {
  rs_sched *s = rs_sched_get(self);
  rb_check_arity(argc, 1, 2);
  return wait_blocked(s, argc > 1 ? argv[1] : Qnil);
}

static VALUE sched_unblock(VALUE self, VALUE blocker, VALUE fiber) {
  rs_sched *s = rs_sched_get(self);
  st_data_t v;
  if (s->closed) return Qnil;
  if (st_lookup(s->block_ops, (st_data_t)fiber, &v)) {
    /* Only marks and queues; the owner thread cancels any kernel timer. */
    rs_op_finish(s, (rs_op *)v, 0);
    if (rb_thread_current() != s->thread) s->backend.ops->wakeup(&s->backend);
  } else if (RTEST(rb_fiber_alive_p(fiber))) {
    /* Not blocked yet: a thread may signal a Queue or ConditionVariable
     * after the fiber queued itself there and before it calls `block`.
     * Its next `block` returns at once; a wake-up too many is harmless,
     * the callers re-check their condition. */
    st_insert(s->unblocked, (st_data_t)fiber, 0);
    RB_OBJ_WRITTEN(s->self, Qundef, fiber);
  }
  return Qnil;
}

typedef struct timeout_args {
  rs_sched *s;
  rs_op *op;
  VALUE duration;
} timeout_args;

static VALUE timeout_body(VALUE p) { return rb_yield(((timeout_args *)p)->duration); }

static VALUE timeout_ensure(VALUE p) {
  timeout_args *a = (timeout_args *)p;
  rs_op_release(a->s, a->op);
  return Qnil;
}

static VALUE sched_timeout_after(VALUE self, VALUE duration, VALUE klass, VALUE message) {
  rs_sched *s = rs_sched_get(self);
  rb_need_block();
  check_parkable(s);
  rs_op *op = rs_op_new(s, RS_OP_TIMER);
  op->timeout_ns = rs_duration_ns(duration);
  op->action = RS_ACT_RAISE;
  rs_op_write(op, &op->raise_class, klass);
  rs_op_write(op, &op->raise_message, message);
  int ret = rs_op_begin(s, op); /* releases op on failure */
  if (ret < 0) rs_raise_errno(-ret, "timeout_after");
  timeout_args a = {s, op, duration};
  return rb_ensure(timeout_body, (VALUE)&a, timeout_ensure, (VALUE)&a);
}

/* ---- hooks: Ruby 3.4 and 4.0 ---------------------------------------------------------------
 * Each is defined on every Ruby (a Ruby that does not know a hook never
 * calls it), so that 4.0's contracts can be tested by calling them directly
 * on an older Ruby. */

/* fiber_interrupt(fiber, exception), Ruby 4.0: IO#close wakes the fibers
 * waiting on that IO with an IOError. Like unblock it may come from any
 * thread: it only queues a raise, which the owner's loop delivers where
 * the fiber waits; that wait's operation is then cancelled as for any
 * exception (Timeout, Fiber#raise) and nothing is left behind. */
static VALUE sched_fiber_interrupt(VALUE self, VALUE fiber, VALUE exception) {
  rs_sched *s = rs_sched_get(self);
  if (!rb_obj_is_kind_of(exception, rb_eException))
    rb_raise(rb_eTypeError, "exception object expected, got %" PRIsVALUE, rb_obj_class(exception));
  if (s->closed || !RTEST(rb_fiber_alive_p(fiber))) return Qnil;
  if (fiber == rb_fiber_current()) rb_exc_raise(exception);
  rs_op *op = rs_op_queue_runnable(s, fiber);
  op->action = RS_ACT_RAISE;
  rs_op_write(op, &op->raise_class, exception); /* an exception object, raised as it is */
  op->detached = 1; /* nobody releases it: the loop frees it once delivered */
  if (rb_thread_current() != s->thread) s->backend.ops->wakeup(&s->backend);
  return Qnil;
}

typedef struct fd_cancel {
  rs_sched *s;
  int fd;
} fd_cancel;

static void cancel_on_fd(rs_op *op, void *arg) {
  fd_cancel *c = arg;
  if (op->kind == RS_OP_TIMER || op->kind == RS_OP_READY || op->kind == RS_OP_WORK) return;
  if (op->fd == c->fd) rs_op_cancel(c->s, op); /* (only what is in flight) */
}

/* io_close(fd), Ruby 4.0: called by IO#close once the fibers waiting on
 * it were interrupted. Anything still in flight on fd is cancelled (its
 * waiter sees ECANCELED), then fd is closed: a scheduler that answers
 * io_close closes the descriptor itself (Ruby then does not). */
static VALUE sched_io_close(VALUE self, VALUE fd) {
  rs_sched *s = rs_sched_get(self);
  if (!RB_INTEGER_TYPE_P(fd)) rb_raise(rb_eTypeError, "io_close takes a file descriptor (Integer), got %" PRIsVALUE, rb_obj_class(fd));
  fd_cancel c = {s, NUM2INT(fd)};
  if (!s->closed) rs_op_pool_each_live(&s->pool, cancel_on_fd, &c);
  if (s->backend.ops->flush && !s->closed) s->backend.ops->flush(&s->backend);
  if (close(c.fd) < 0 && errno != EINTR) rs_raise_errno(errno, "io_close");
  return Qtrue;
}

/* yield, Ruby 4.0: the fiber gives way to every fiber runnable now and
 * continues after them. From the loop's own fiber there is nobody to give
 * way to. */
static VALUE sched_yield_hook(VALUE self) {
  rs_sched *s = rs_sched_get(self);
  if (s->closed || rs_fiber_blocking_p(rb_fiber_current())) return Qnil;
  check_parkable(s);
  rs_requeue_and_park(s, s->loop_fiber);
  return Qnil;
}

#ifdef HAVE_RB_FIBER_SCHEDULER_BLOCKING_OPERATION_EXTRACT
/* blocking_operation_wait(work), Ruby 4.0: the work's C function runs on
 * the scheduler's own worker threads (work.c); the fiber parks meanwhile. */
static int execute_blocking(void *op) {
  return rb_fiber_scheduler_blocking_operation_execute((rb_fiber_scheduler_blocking_operation_t *)op);
}

static VALUE sched_blocking_operation_wait(VALUE self, VALUE work) {
  rs_sched_get(self);
  rb_fiber_scheduler_blocking_operation_t *op = rb_fiber_scheduler_blocking_operation_extract(work);
  if (!op) rb_raise(rb_eArgError, "blocking_operation_wait: not a blocking operation");
  rs_run_work(execute_blocking, op);
  RB_GC_GUARD(work);
  return Qnil;
}
#endif

/* ---- hooks: processes ------------------------------------------------------------------------ */

typedef struct pidfd_args {
  int fd;
} pidfd_args;

static VALUE pidfd_wait(VALUE p) {
  int ret = rs_io_wait_fd(((pidfd_args *)p)->fd, POLLIN, -1);
  if (ret < 0) rs_raise_errno(-ret, "process_wait");
  return Qnil;
}

static VALUE pidfd_close(VALUE p) {
  close(((pidfd_args *)p)->fd);
  return Qnil;
}

/* Waits for a pidfd to become readable (the child exited), then reaps it
 * without blocking. Returns nil when a pidfd cannot be had. */
static VALUE sched_wait_pidfd(VALUE self, VALUE pid) {
  rs_sched_get(self);
  int fd = (int)syscall(SYS_pidfd_open, NUM2INT(pid), 0);
  if (fd < 0) return Qnil;
  pidfd_args a = {fd};
  rb_ensure(pidfd_wait, (VALUE)&a, pidfd_close, (VALUE)&a);
  return Qtrue;
}

/* ---- introspection ------------------------------------------------------------------------- */

static VALUE sched_pending_operations(VALUE self) { return SIZET2NUM(rs_sched_get(self)->pool.live); }
static VALUE sched_inflight(VALUE self) { return SIZET2NUM(rs_sched_get(self)->inflight); }
static VALUE sched_closed_p(VALUE self) { return rs_sched_get(self)->closed ? Qtrue : Qfalse; }
static VALUE sched_fiber_count(VALUE self) { return LONG2NUM(rs_live_fibers(rs_sched_get(self))); }

static VALUE sched_features(VALUE self) {
  rs_sched *s = rs_sched_get(self);
  VALUE a = rb_ary_new();
  int f = s->backend.probe_flags;
  if (f & RS_FEAT_SPLICE) rb_ary_push(a, ID2SYM(rb_intern("splice")));
  if (f & RS_FEAT_TEE) rb_ary_push(a, ID2SYM(rb_intern("tee")));
  if (f & RS_FEAT_IOWQ_MAX_WORKERS) rb_ary_push(a, ID2SYM(rb_intern("iowq_max_workers")));
  if (f & RS_FEAT_SUBMIT_WAIT_TIMEOUT) rb_ary_push(a, ID2SYM(rb_intern("ext_arg")));
  if (f & RS_FEAT_BUF_RING) rb_ary_push(a, ID2SYM(rb_intern("buf_ring")));
  return a;
}

void rs_init_scheduler(VALUE mRingspun) {
  id_new = rb_intern("new");
  id_report = rb_intern("report_fiber_error");
  id_hook_error_p = rb_intern("hook_error?");
  id_blocking_pool_iv = rb_intern("@blocking_pool");
  id_close = rb_intern("close");

  cFiber = rb_path2class("Fiber");
  /* {blocking: false}, made once. Ruby still hands Fiber.new a copy, so a
   * spin allocates one Hash where it made two. */
  non_blocking_kw = rb_hash_new();
  rb_hash_aset(non_blocking_kw, ID2SYM(rb_intern("blocking")), Qfalse);
  rb_obj_freeze(non_blocking_kw);
  rb_gc_register_mark_object(non_blocking_kw);
  cScheduler = rb_define_class_under(mRingspun, "Scheduler", rb_cObject);
  rb_define_alloc_func(cScheduler, rs_sched_alloc);
  rb_define_method(cScheduler, "initialize", sched_initialize, -1);
  rb_define_method(cScheduler, "backend", sched_backend, 0);
  rb_define_method(cScheduler, "run", sched_run, 0);
  rb_define_method(cScheduler, "close", sched_close, 0);
  rb_define_method(cScheduler, "closed?", sched_closed_p, 0);
  rb_define_method(cScheduler, "abandon", sched_abandon, 0);
  rb_define_method(cScheduler, "fiber", sched_fiber, -1);
  rb_define_method(cScheduler, "kernel_sleep", sched_kernel_sleep, -1);
  rb_define_method(cScheduler, "block", sched_block, -1);
  rb_define_method(cScheduler, "unblock", sched_unblock, 2);
  rb_define_method(cScheduler, "timeout_after", sched_timeout_after, 3);
  rb_define_method(cScheduler, "pending_operations", sched_pending_operations, 0);
  rb_define_method(cScheduler, "inflight_operations", sched_inflight, 0);
  rb_define_method(cScheduler, "fiber_count", sched_fiber_count, 0);
  rb_define_method(cScheduler, "features", sched_features, 0);
  rb_define_private_method(cScheduler, "wait_pidfd", sched_wait_pidfd, 1);
  rb_define_private_method(cScheduler, "after_fork", sched_after_fork, 0);
  rb_define_method(cScheduler, "fiber_interrupt", sched_fiber_interrupt, 2);
  rb_define_method(cScheduler, "io_close", sched_io_close, 1);
  rb_define_method(cScheduler, "yield", sched_yield_hook, 0);
#ifdef HAVE_RB_FIBER_SCHEDULER_BLOCKING_OPERATION_EXTRACT
  rb_define_method(cScheduler, "blocking_operation_wait", sched_blocking_operation_wait, 1);
  rb_define_const(cScheduler, "BLOCKING_OPERATION_WAIT", ID2SYM(rb_intern("native")));
#elif defined(HAVE_RB_FIBER_SCHEDULER_BLOCKING_OPERATION_WAIT)
  /* This Ruby hands over a Proc that must run on a Ruby thread: scheduler.rb. */
  rb_define_const(cScheduler, "BLOCKING_OPERATION_WAIT", ID2SYM(rb_intern("ruby_threads")));
#else
  rb_define_const(cScheduler, "BLOCKING_OPERATION_WAIT", Qnil); /* never called */
#endif
  rs_init_sched_io(cScheduler);
}
