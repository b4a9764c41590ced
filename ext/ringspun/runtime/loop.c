/* The event loop: resumes the fibers on the ready queue, and when none is
 * runnable hands the queued submissions to the backend together with the
 * wait; then takes what the worker pool finished. Also the end of a
 * scheduler: draining what is in flight, unwinding abandoned fibers. */
#include "runtime/loop.h"
#include "runtime/errors.h"
#include <errno.h>
#include <ruby/thread.h>

static ID id_report_stranded;

/* The backend's wait, then the worker pool's mailbox. */
static int loop_wait(rs_sched *s, int64_t timeout_ns) {
  int ret = s->backend.ops->wait(&s->backend, timeout_ns);
  rs_work_job *job = rs_work_take_done(s->work);
  while (job) {
    rs_work_job *next = job->next;
    rs_op_complete(rs_op_of_job(job), job->result);
    job = next;
  }
  return ret;
}

/* A SystemExit or Interrupt that ended a fiber ends the run too. */
void rs_loop_raise_pending(rs_sched *s) {
  if (s->pending_error == Qnil) return;
  VALUE e = s->pending_error;
  s->pending_error = Qnil;
  rb_exc_raise(e);
}

/* Resumes the fibers runnable now; ones made runnable meanwhile wait for
 * the next turn so IO completions are reaped between rounds. */
static void drain_ready(rs_sched *s) {
  rs_op *last = s->ready_tail;
  while (s->ready_head) {
    rs_op *op = s->ready_head;
    bool was_last = op == last;
    rs_op_resume(s, op);
    rs_loop_raise_pending(s);
    if (was_last) break;
  }
}

static int push_fiber_key(st_data_t key, st_data_t val, st_data_t ary) {
  rb_ary_push((VALUE)ary, (VALUE)key);
  return ST_CONTINUE;
}

static VALUE live_fiber_list(rs_sched *s) {
  VALUE fibers = rb_ary_new_capa(rs_live_fibers(s));
  st_foreach(s->fibers, push_fiber_key, fibers);
  return fibers;
}

/* Fibers alive with nothing that could ever resume them: no operation
 * handed out (no timer, no IO, no `block` another thread may end), none
 * runnable. They left our hands, transferred to elsewhere; waiting for
 * them would wait forever. They are reported and forgotten. */
static bool forget_stranded(rs_sched *s) {
  if (rs_live_fibers(s) == 0 || s->ready_head || s->pool.live > 0 || rs_work_has_done(s->work)) return false;
  VALUE fibers = live_fiber_list(s);
  st_clear(s->fibers);
  rb_funcall(s->self, id_report_stranded, 1, fibers);
  return true;
}

static VALUE loop_body(VALUE p) {
  rs_sched *s = (rs_sched *)p;
  for (;;) {
    drain_ready(s);
    if (rs_live_fibers(s) == 0 && !s->ready_head) break;
    if (forget_stranded(s)) break;
    int ret = loop_wait(s, s->ready_head ? 0 : -1);
    if (ret < 0) rs_raise_errno(-ret, s->backend.ops->name);
    rb_thread_check_ints();
  }
  return Qnil;
}

static VALUE loop_done(VALUE p) {
  ((rs_sched *)p)->in_run = false;
  return Qnil;
}

void rs_loop_run(rs_sched *s) {
  rs_sched_write(s, &s->loop_fiber, rb_fiber_current());
  s->in_run = true;
  rb_ensure(loop_body, (VALUE)s, loop_done, (VALUE)s);
}

/* ---- the end of a scheduler ------------------------------------------------------------ */

static void cancel_live(rs_op *op, void *arg) { rs_op_cancel(arg, op); }

/* Cancels whatever is still in the kernel and waits (bounded) for it, so no
 * completion can write into memory after we let go of it. */
static void drain_inflight(rs_sched *s) {
  if (!s->backend.impl) return;
  rs_op_pool_each_live(&s->pool, cancel_live, s);
  for (int i = 0; i < 200 && s->inflight > 0; i++) loop_wait(s, 10 * 1000000LL);
  rs_work_pool_stop(&s->work); /* after its jobs are done: nothing left for them to wake */
}

void rs_loop_teardown(rs_sched *s) {
  s->closed = true;
  drain_inflight(s);
  rs_sched_backend_destroy(s);
  st_clear(s->unblocked);
}

static VALUE raise_abort(VALUE fiber) {
  VALUE args[2] = {rs_eRunAborted, rb_str_new_cstr("Ringspun.run was aborted")};
  return rb_fiber_raise(fiber, 2, args);
}

static VALUE unwind_fibers(VALUE p) {
  rs_sched *s = (rs_sched *)p;
  VALUE fibers = live_fiber_list(s);
  for (long i = 0; i < RARRAY_LEN(fibers); i++) {
    VALUE f = RARRAY_AREF(fibers, i);
    if (f == rb_fiber_current() || !RTEST(rb_fiber_alive_p(f))) continue;
    s->sw->running = f;
    s->sw->resuming = f;
    int state = 0;
    rb_protect(raise_abort, f, &state);
    if (state) rb_set_errinfo(Qnil);
    s->sw->running = s->loop_fiber;
  }
  /* Their ensure clauses may wait: give them a bounded second. */
  uint64_t deadline = rs_now_ns() + 1000000000ULL;
  while (rs_live_fibers(s) > 0 && rs_now_ns() < deadline) {
    drain_ready(s);
    if (rs_live_fibers(s) == 0) break;
    loop_wait(s, s->ready_head ? 0 : 10 * 1000000LL);
  }
  return Qnil;
}

void rs_loop_unwind(rs_sched *s) {
  if (rb_fiber_current() != s->loop_fiber) return;
  int state = 0;
  rb_protect(unwind_fibers, (VALUE)s, &state);
  if (state) rb_set_errinfo(Qnil);
}

/* ---- work on a worker thread --------------------------------------------------------------- */

typedef struct work_args {
  int (*fn)(void *);
  void *arg;
  int ret;
} work_args;

static void *work_nogvl(void *p) {
  work_args *a = p;
  a->ret = a->fn(a->arg);
  return NULL;
}

int rs_run_work(int (*fn)(void *), void *arg) {
  rs_sched *s = rs_sched_current();
  /* With no other fiber of ours alive, nothing could run while this one
   * waits for a worker: the hand-over and wake-up would only add latency
   * (a tenth of gunzip's time). Ops it has in flight (read-ahead) are in
   * the kernel already. */
  if (s && rs_live_fibers(s) > 1) {
    rs_op *op = rs_op_new(s, RS_OP_WORK);
    op->own.job.fn = fn;
    op->own.job.arg = arg;
    int ret = rs_op_await(s, op);
    if (ret != -EAGAIN) return ret; /* (fn returns >= 0) */
    /* -EAGAIN: no worker thread could be started; do it here. */
  }
  work_args a = {fn, arg, 0};
  rb_thread_call_without_gvl(work_nogvl, &a, NULL, NULL);
  return a.ret;
}

void rs_init_loop(void) { id_report_stranded = rb_intern("report_stranded"); }
