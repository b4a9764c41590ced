/* Ringspun::Scheduler: a Ruby 3.1 Fiber::Scheduler on top of a backend.
 *
 * Fibers switch only by transfer. A fiber that waits parks by transferring to
 * the loop fiber (the blocking fiber that runs #run); the loop resumes
 * runnable fibers from the ready list, and when none is runnable hands the
 * queued submissions to the backend together with the wait. */
#include "ringspun.h"
#include <errno.h>
#include <poll.h>
#include <ruby/fiber/scheduler.h>
#include <ruby/io.h>
#include <ruby/io/buffer.h>
#include <ruby/thread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <liburing/io_uring.h>

static VALUE cScheduler, cFiber, non_blocking_kw;
static ID id_new, id_report, id_io_uring, id_epoll, id_auto, id_blocking_p, id_hook_error_p, id_report_stranded;

/* Bumped in every forked child, so a scheduler notices it was inherited. */
static volatile unsigned long fork_generation;
static void on_fork_child(void) { fork_generation++; }

uint64_t rs_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- TypedData -------------------------------------------------------------- */

typedef struct sched_wrap {
  rs_sched s;
  unsigned long generation;
  VALUE pending_error; /* non-StandardError that escaped a fiber */
} sched_wrap;

static VALUE eRunAborted;

static void mark_op(rs_op *op, void *arg) {
  (void)arg;
  rb_gc_mark(op->fiber);
  rb_gc_mark(op->keep);
  rb_gc_mark(op->raise_class);
  rb_gc_mark(op->raise_message);
}

static int mark_fiber_key(st_data_t key, st_data_t val, st_data_t arg) {
  (void)val;
  (void)arg;
  rb_gc_mark((VALUE)key);
  return ST_CONTINUE;
}

static void sched_mark(void *p) {
  sched_wrap *w = p;
  /* Fibers are pinned (rb_gc_mark): block_ops is keyed by their address. */
  rb_gc_mark(w->s.loop_fiber);
  rb_gc_mark(w->s.running);
  rb_gc_mark(w->s.resuming);
  rb_gc_mark(w->s.thread);
  rb_gc_mark(w->pending_error);
  if (w->s.fibers) st_foreach(w->s.fibers, mark_fiber_key, 0);
  if (w->s.unblocked) st_foreach(w->s.unblocked, mark_fiber_key, 0);
  rs_op_pool_each_live(&w->s.pool, mark_op, NULL);
}

static void backend_destroy(rs_sched *s) {
  if (s->backend.impl) s->backend.ops->destroy(&s->backend);
  s->backend.impl = NULL;
}

static void sched_free(void *p) {
  sched_wrap *w = p;
  if (w->generation == fork_generation) rs_work_pool_stop(&w->s);
  backend_destroy(&w->s);
  rs_op_pool_destroy(&w->s.pool);
  rs_buf_pool_destroy(&w->s.bufs);
  if (w->s.block_ops) st_free_table(w->s.block_ops);
  if (w->s.fibers) st_free_table(w->s.fibers);
  if (w->s.unblocked) st_free_table(w->s.unblocked);
  xfree(w->s.again_bits);
  xfree(w);
}

static size_t sched_size(const void *p) {
  const sched_wrap *w = p;
  return sizeof(*w) + w->s.pool.nslabs * 256 * sizeof(rs_op) + (w->s.bufs.nfree + w->s.bufs.out) * RS_BLOCK_SIZE;
}

static const rb_data_type_t sched_type = {
    "Ringspun::Scheduler",
    {sched_mark, sched_free, sched_size, NULL, {0}},
    NULL,
    NULL,
    RUBY_TYPED_FREE_IMMEDIATELY,
};

static VALUE sched_alloc(VALUE klass) {
  sched_wrap *w;
  VALUE self = TypedData_Make_Struct(klass, sched_wrap, &sched_type, w);
  w->s.self = self;
  w->s.loop_fiber = w->s.running = w->s.resuming = w->s.thread = Qnil;
  w->pending_error = Qnil;
  w->s.fibers = st_init_numtable();
  w->s.unblocked = st_init_numtable();
  w->s.backend.wake_fd = -1;
  rs_op_pool_init(&w->s.pool);
  w->s.block_ops = st_init_numtable();
  pthread_mutex_init(&w->s.remote_lock, NULL);
  return self;
}

static void after_fork_child(sched_wrap *w);

rs_sched *rs_sched_get(VALUE self) {
  sched_wrap *w = rb_check_typeddata(self, &sched_type);
  if (w->generation != fork_generation) after_fork_child(w);
  return &w->s;
}

static sched_wrap *wrap_of(rs_sched *s) { return (sched_wrap *)s; }

static long live_fibers(const rs_sched *s) { return (long)s->fibers->num_entries; }

static void bind_thread(rs_sched *s);

rs_sched *rs_sched_current(void) {
  VALUE cur = rb_fiber_scheduler_current();
  if (NIL_P(cur) || !rb_typeddata_is_kind_of(cur, &sched_type)) return NULL;
  rs_sched *s = rs_sched_get(cur);
  if (s->closed) return NULL;
  bind_thread(s);
  return s;
}

static bool fiber_blocking_p(VALUE fiber) { return RTEST(rb_funcall(fiber, id_blocking_p, 0)); }

/* A scheduler serves the thread it was installed on, which need not be the
 * thread that made it (Fiber.set_scheduler takes any object): the first
 * hook called on a new thread adopts it, while nothing of the old one is
 * alive. Other threads still call `unblock`, which never binds. */
static void bind_thread(rs_sched *s) {
  VALUE th = rb_thread_current();
  if (s->thread == th) return;
  if (live_fibers(s) > 0 || s->pool.live > 0 || s->in_run)
    rb_raise(rb_eRuntimeError, "ringspun: this scheduler is serving another thread; a scheduler serves one thread");
  s->thread = th;
  /* Hooks run on the thread's current fiber; a blocking one runs the loop. */
  VALUE cur = rb_fiber_current();
  if (fiber_blocking_p(cur)) s->loop_fiber = cur;
}

/* ---- ready list --------------------------------------------------------------- */

void rs_sched_ready_push(rs_sched *s, rs_op *op) {
  if (op->queued) return;
  op->queued = 1;
  op->next = NULL;
  op->prev = s->ready_tail;
  if (s->ready_tail) s->ready_tail->next = op;
  else s->ready_head = op;
  s->ready_tail = op;
}

static void ready_unlink(rs_sched *s, rs_op *op) {
  if (!op->queued) return;
  if (op->prev) op->prev->next = op->next;
  else s->ready_head = op->next;
  if (op->next) op->next->prev = op->prev;
  else s->ready_tail = op->prev;
  op->next = op->prev = NULL;
  op->queued = 0;
}

/* ---- op lifecycle ---------------------------------------------------------------- */

rs_op *rs_op_new(rs_sched *s, int kind) {
  rs_op *op = rs_op_pool_get(&s->pool);
  if (!op) rb_raise(rb_eNoMemError, "ringspun: cannot allocate an operation");
  op->sched = s;
  op->kind = kind;
  return op;
}

static void msq_recycle_all(rs_sched *s, rs_msq *q);

static void op_maybe_free(rs_sched *s, rs_op *op) {
  if (op->waiting || op->kernel_refs || op->in_backend || op->queued) return;
  /* The kernel is done with the block: now it may be reused. */
  if (op->kind == RS_OP_RECV_MULTI && op->block) msq_recycle_all(s, op->block);
  if (op->block) rs_buf_put(op->block_pool, op->block);
  op->block = NULL;
  rs_op_pool_put(&s->pool, op);
}

/* Forgets that op's fiber may be unblocked, if op is what it waits on. */
static void unregister_block(rs_sched *s, rs_op *op) {
  st_data_t key = (st_data_t)op->fiber, v;
  if (op->fiber != Qnil && st_lookup(s->block_ops, key, &v) && (rs_op *)v == op) st_delete(s->block_ops, &key, NULL);
}

/* Marks op finished with `result` and makes its fiber runnable. */
static void op_finish(rs_sched *s, rs_op *op, int result) {
  if (op->done) return;
  op->done = 1;
  op->result = result;
  if (op->waiting) rs_sched_ready_push(s, op);
}

void rs_op_complete(rs_op *op, int result, uint32_t cqe_flags) {
  rs_sched *s = op->sched;
  if (!op->done) op->cqe_flags = cqe_flags;
  op_finish(s, op, result);
  rs_op_kernel_done(op);
}

static int park(rs_sched *s, VALUE target);

/* An op that only makes `fiber` runnable: queued now, already done. */
static rs_op *queue_runnable(rs_sched *s, VALUE fiber) {
  rs_op *op = rs_op_new(s, RS_OP_READY);
  op->fiber = fiber;
  op->waiting = 1;
  op->done = 1;
  rs_sched_ready_push(s, op);
  return op;
}

/* The current fiber waits in line behind the fibers runnable now, while
 * `target` runs. */
static void requeue_and_park(rs_sched *s, VALUE target) {
  rs_op *op = queue_runnable(s, rb_fiber_current());
  int state = park(s, target);
  rs_op_release(s, op);
  if (state) rb_jump_tag(state);
}

static void msq_recycle_all(rs_sched *s, rs_msq *q) {
  for (; q->len > 0; q->len--, q->head = (q->head + 1) % RS_MSQ_CAP)
    if (q->flags[q->head] & IORING_CQE_F_BUFFER)
      s->backend.ops->bufring_recycle(&s->backend, q->flags[q->head] >> IORING_CQE_BUFFER_SHIFT);
}

void rs_op_multishot(rs_op *op, int result, uint32_t cqe_flags) {
  rs_sched *s = op->sched;
  rs_msq *q = op->block;
  if (op->waiting && q && q->len < RS_MSQ_CAP) {
    unsigned at = (q->head + q->len++) % RS_MSQ_CAP;
    q->res[at] = result;
    q->flags[at] = cqe_flags;
    op->done = 1;
    rs_sched_ready_push(s, op);
    /* One slow consumer must not hold the whole shared ring: past its
     * share, stop its receive until it has drained (it re-arms then). */
    if (q->len >= RS_MSQ_HOLD && (cqe_flags & IORING_CQE_F_MORE)) rs_op_cancel(s, op);
  } else if (cqe_flags & IORING_CQE_F_BUFFER) {
    s->backend.ops->bufring_recycle(&s->backend, cqe_flags >> IORING_CQE_BUFFER_SHIFT);
  }
  if (!(cqe_flags & IORING_CQE_F_MORE)) rs_op_kernel_done(op);
}

int rs_sched_park(rs_sched *s) { return park(s, s->loop_fiber); }

void rs_op_park_news(rs_sched *s, rs_op *op) {
  while (!op->done) {
    int state = park(s, s->loop_fiber);
    if (state) rb_jump_tag(state); /* the caller's ensure releases op */
  }
  op->done = 0;
  ready_unlink(s, op);
}

void rs_op_kernel_done(rs_op *op) {
  rs_sched *s = op->sched;
  if (op->kernel_refs && --op->kernel_refs == 0) {
    s->inflight--;
    /* A fiber draining a cancelled op waits for exactly this moment. */
    if (op->cancelling && op->waiting) rs_sched_ready_push(s, op);
  }
  op_maybe_free(s, op);
}

void rs_op_cancel(rs_sched *s, rs_op *op) {
  if (op->cancelling || !(op->kernel_refs || op->in_backend)) return;
  if (op->kind == RS_OP_WORK) { /* a running job cannot be stopped; it ends soon */
    op->cancelling = 1;
    return;
  }
  op->cancelling = 1;
  s->backend.ops->cancel(&s->backend, op);
}

void rs_op_release(rs_sched *s, rs_op *op) {
  unregister_block(s, op);
  op->waiting = 0;
  op->fiber = Qnil;
  ready_unlink(s, op);
  if (op->kernel_refs || op->in_backend) {
    /* The completion (or the epoll backend, at once) frees it. */
    rs_op_cancel(s, op);
    return;
  }
  op_maybe_free(s, op);
}

static int op_submit(rs_sched *s, rs_op *op) {
  if (op->kind == RS_OP_READY) return 0;
  if (op->kind == RS_OP_WORK) return rs_work_submit(s, op);
  return s->backend.ops->submit(&s->backend, op);
}

/* ---- parking ------------------------------------------------------------------------ */

static VALUE transfer_to(VALUE fiber) { return rb_fiber_transfer(fiber, 0, NULL); }

/* Switches from the current fiber to `target` and returns when something
 * switches back; returns the rb_protect state. When the switch back did not
 * come from our loop (someone called Fiber#raise or #transfer on us), the
 * fiber that did it is suspended in that call: queue it so it runs again. */
static int park(rs_sched *s, VALUE target) {
  VALUE me = rb_fiber_current();
  int state = 0;
  s->running = target;
  s->resuming = target;
  rb_protect(transfer_to, target, &state);
  if (s->resuming != me) {
    VALUE by = s->running;
    if (by != me && by != s->loop_fiber && RTEST(rb_fiber_alive_p(by)))
      queue_runnable(s, by)->detached = 1; /* nobody releases it: the loop frees it */
  }
  s->resuming = Qnil;
  s->running = me;
  return state;
}

/* Cancels op and parks until its last completion, keeping the exception
 * being raised. Every op, not only those holding Ruby memory: an exception
 * that leaves a cancelled op in flight would leave work behind it. A cancel
 * completes on the next turn of the loop. */
void rs_op_drain(rs_sched *s, rs_op *op) {
  VALUE err = rb_errinfo();
  rs_op_cancel(s, op);
  ready_unlink(s, op);
  while (op->kernel_refs > 0) {
    park(s, s->loop_fiber);
    ready_unlink(s, op);
  }
  if (rb_obj_is_kind_of(err, rb_eException)) rb_set_errinfo(err);
}

/* Interrupted while waiting: cancel, and wait for the op's last completion
 * before letting go, so no buffer is written and no op outlives the
 * exception. */
static void op_abort(rs_sched *s, rs_op *op, int state) {
  rs_op_drain(s, op);
  rs_op_release(s, op);
  rb_jump_tag(state);
}

static void check_parkable(rs_sched *s) {
  if (s->closed) rb_raise(rb_eIOError, "ringspun: scheduler is closed");
  bind_thread(s);
  if (rb_fiber_current() == s->loop_fiber) rb_raise(rb_eRuntimeError, "ringspun: the loop fiber cannot wait on itself");
}

/* Makes op the current fiber's and submits it; on failure releases it. */
static int op_begin(rs_sched *s, rs_op *op) {
  op->fiber = rb_fiber_current();
  op->waiting = 1;
  int ret = op_submit(s, op);
  if (ret < 0) rs_op_release(s, op);
  return ret;
}

int rs_op_start(rs_sched *s, rs_op *op) {
  int ret = op_begin(s, op);
  if (ret == 0 && s->backend.ops->flush) s->backend.ops->flush(&s->backend);
  return ret;
}

int rs_op_await(rs_sched *s, rs_op *op) {
  int ret = op_begin(s, op);
  return ret < 0 ? ret : rs_op_wait(s, op);
}

int rs_op_wait(rs_sched *s, rs_op *op) {
  int ret;
  while (!op->done) {
    int state = park(s, s->loop_fiber);
    if (state) op_abort(s, op, state);
  }
  ret = op->result;
  op->block = NULL; /* done: the block is the caller's again */
  rs_op_release(s, op);
  return ret;
}

void rs_sched_remote_complete(rs_sched *s, rs_op *op) {
  pthread_mutex_lock(&s->remote_lock);
  op->remote_next = s->remote_head;
  s->remote_head = op;
  pthread_mutex_unlock(&s->remote_lock);
  s->backend.ops->wakeup(&s->backend);
}

static void drain_remote(rs_sched *s) {
  if (!s->remote_head) return; /* a racy peek: a miss is caught next turn, the eventfd says so */
  pthread_mutex_lock(&s->remote_lock);
  rs_op *op = s->remote_head;
  s->remote_head = NULL;
  pthread_mutex_unlock(&s->remote_lock);
  while (op) {
    rs_op *next = op->remote_next;
    rs_op_complete(op, op->work_result, 0);
    op = next;
  }
}

/* The backend's wait, then what worker threads finished meanwhile. */
static int sched_wait(rs_sched *s, int64_t timeout_ns) {
  int ret = s->backend.ops->wait(&s->backend, timeout_ns);
  drain_remote(s);
  return ret;
}

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
  if (s && live_fibers(s) > 1) {
    rs_op *op = rs_op_new(s, RS_OP_WORK);
    op->work_fn = fn;
    op->work_arg = arg;
    int ret = rs_op_await(s, op);
    if (ret != -EAGAIN) return ret; /* (fn returns >= 0) */
    /* -EAGAIN: no worker thread could be started; do it here. */
  }
  work_args a = {fn, arg, 0};
  rb_thread_call_without_gvl(work_nogvl, &a, NULL, NULL);
  return a.ret;
}

int rs_op_wait_salvage(rs_sched *s, rs_op *op, int *result) {
  while (!op->done) {
    int state = park(s, s->loop_fiber);
    if (!state) continue;
    rs_op_drain(s, op);
    *result = op->done ? op->result : -ECANCELED;
    return state;
  }
  *result = op->result;
  return 0;
}

/* ---- the loop ------------------------------------------------------------------------ */

/* Another op of `fiber` is queued: it finished (a read that took bytes,
 * say) and its fiber must see that before a timeout may interrupt it. */
static bool fiber_has_news(rs_sched *s, VALUE fiber, rs_op *except) {
  for (rs_op *o = s->ready_head; o; o = o->next)
    if (o != except && o->fiber == fiber && o->action == RS_ACT_RESUME) return true;
  return false;
}

static void resume_op(rs_sched *s, rs_op *op) {
  VALUE fiber = op->fiber;
  if (op->action == RS_ACT_RAISE && fiber_has_news(s, fiber, op)) {
    ready_unlink(s, op);
    rs_sched_ready_push(s, op); /* after the news: it may yet be cancelled */
    return;
  }
  VALUE args[2] = {op->raise_class, op->raise_message};
  bool raise = op->action == RS_ACT_RAISE;
  ready_unlink(s, op);
  if (op->detached) {
    op->waiting = 0;
    op->fiber = Qnil;
    op_maybe_free(s, op);
  }
  /* The op may be released by its fiber from here on: do not touch it. */
  if (NIL_P(fiber) || !RTEST(rb_fiber_alive_p(fiber))) return;
  s->running = fiber;
  s->resuming = fiber;
  if (raise) {
    rb_fiber_raise(fiber, NIL_P(args[1]) ? 1 : 2, args);
  } else {
    rb_fiber_transfer(fiber, 0, NULL);
  }
  s->running = s->loop_fiber;
}

/* A SystemExit or Interrupt that ended a fiber ends the run too. */
static void raise_pending(rs_sched *s) {
  sched_wrap *w = wrap_of(s);
  if (w->pending_error == Qnil) return;
  VALUE e = w->pending_error;
  w->pending_error = Qnil;
  rb_exc_raise(e);
}

/* Resumes the fibers runnable now; ones made runnable meanwhile wait for
 * the next turn so IO completions are reaped between rounds. */
static void drain_ready(rs_sched *s) {
  rs_op *last = s->ready_tail;
  while (s->ready_head) {
    rs_op *op = s->ready_head;
    bool was_last = op == last;
    resume_op(s, op);
    raise_pending(s);
    if (was_last) break;
  }
}

static int push_fiber_key(st_data_t key, st_data_t val, st_data_t ary);

/* Fibers alive with nothing that could ever resume them: no operation
 * handed out (no timer, no IO, no `block` another thread may end), none
 * runnable. They left our hands, transferred to elsewhere; waiting for
 * them would wait forever. They are reported and forgotten. */
static bool forget_stranded(rs_sched *s) {
  if (live_fibers(s) == 0 || s->ready_head || s->pool.live > 0 || s->remote_head) return false;
  VALUE fibers = rb_ary_new_capa(live_fibers(s));
  st_foreach(s->fibers, push_fiber_key, fibers);
  st_clear(s->fibers);
  rb_funcall(s->self, id_report_stranded, 1, fibers);
  return true;
}

static VALUE loop_body(VALUE self) {
  rs_sched *s = rs_sched_get(self);
  for (;;) {
    drain_ready(s);
    if (live_fibers(s) == 0 && !s->ready_head) break;
    if (forget_stranded(s)) break;
    int ret = sched_wait(s, s->ready_head ? 0 : -1);
    if (ret < 0) rs_raise_errno(-ret, s->backend.ops->name);
    rb_thread_check_ints();
  }
  return self;
}

static VALUE loop_done(VALUE self) {
  rs_sched_get(self)->in_run = false;
  return Qnil;
}

/* The loop runs on whichever blocking fiber of the scheduler's thread calls
 * run (or close), as Fiber::Scheduler implementations do: fibers park by
 * switching to it. Two refusals: a non-blocking fiber would park into the
 * loop it runs, and a second run would steal the first one's fibers. */
static VALUE sched_run(VALUE self) {
  rs_sched *s = rs_sched_get(self);
  if (s->closed) rb_raise(rb_eIOError, "ringspun: scheduler is closed");
  bind_thread(s);
  if (s->in_run) rb_raise(rb_eRuntimeError, "ringspun: the scheduler's loop is already running");
  VALUE cur = rb_fiber_current();
  if (!fiber_blocking_p(cur))
    rb_raise(rb_eRuntimeError, "ringspun: Scheduler#run must be called from a blocking fiber, not one it schedules");
  s->loop_fiber = cur;
  s->in_run = true;
  rb_ensure(loop_body, self, loop_done, self);
  return self;
}

/* ---- teardown, fork -------------------------------------------------------------------- */

static void cancel_live(rs_op *op, void *arg) {
  rs_sched *s = arg;
  rs_op_cancel(s, op);
}

/* Cancels whatever is still in the kernel and waits (bounded) for it, so no
 * completion can write into memory after we let go of it. */
static void drain_inflight(rs_sched *s) {
  if (!s->backend.impl) return;
  rs_op_pool_each_live(&s->pool, cancel_live, s);
  for (int i = 0; i < 200 && s->inflight > 0; i++) sched_wait(s, 10 * 1000000LL);
  rs_work_pool_stop(s); /* after its jobs are done: nothing left for them to wake */
}

static ID id_blocking_pool_iv, id_close;

static VALUE sched_teardown(VALUE self) {
  rs_sched *s = rs_sched_get(self);
  if (s->closed) return Qnil;
  s->closed = true;
  drain_inflight(s);
  backend_destroy(s);
  st_clear(s->unblocked);
  /* The Ruby threads that ran blocking_operation_wait's work (scheduler.rb). */
  VALUE pool = rb_attr_get(self, id_blocking_pool_iv);
  if (!NIL_P(pool)) rb_funcall(pool, id_close, 0);
  return Qnil;
}

static VALUE raise_abort(VALUE fiber) {
  VALUE args[2] = {eRunAborted, rb_str_new_cstr("Ringspun.run was aborted")};
  return rb_fiber_raise(fiber, 2, args);
}

static int push_fiber_key(st_data_t key, st_data_t val, st_data_t ary) {
  (void)val;
  rb_ary_push((VALUE)ary, (VALUE)key);
  return ST_CONTINUE;
}

static VALUE unwind_fibers(VALUE self) {
  rs_sched *s = rs_sched_get(self);
  VALUE fibers = rb_ary_new_capa(live_fibers(s));
  st_foreach(s->fibers, push_fiber_key, fibers);
  for (long i = 0; i < RARRAY_LEN(fibers); i++) {
    VALUE f = RARRAY_AREF(fibers, i);
    if (f == rb_fiber_current() || !RTEST(rb_fiber_alive_p(f))) continue;
    s->running = s->resuming = f;
    int state = 0;
    rb_protect(raise_abort, f, &state);
    if (state) rb_set_errinfo(Qnil);
    s->running = s->loop_fiber;
  }
  /* Their ensure clauses may wait: give them a bounded second. */
  uint64_t deadline = rs_now_ns() + 1000000000ULL;
  while (live_fibers(s) > 0 && rs_now_ns() < deadline) {
    drain_ready(s);
    if (live_fibers(s) == 0) break;
    sched_wait(s, s->ready_head ? 0 : 10 * 1000000LL);
  }
  return Qnil;
}

/* Closes after an interrupted run: every fiber still parked gets
 * Ringspun::RunAborted raised where it waits, so its ensure clauses run
 * (files closed, locks released), then the backend goes. */
static VALUE sched_abandon(VALUE self) {
  rs_sched *s = rs_sched_get(self);
  if (s->closed) return Qnil;
  if (rb_fiber_current() == s->loop_fiber) {
    int state = 0;
    rb_protect(unwind_fibers, self, &state);
    if (state) rb_set_errinfo(Qnil);
  }
  return sched_teardown(self);
}

static VALUE sched_close(VALUE self) {
  rs_sched *s = rs_sched_get(self);
  if (s->closed) return Qnil;
  /* Inside the running loop, or from a fiber it schedules: nothing to run. */
  if (s->closing || s->in_run || !fiber_blocking_p(rb_fiber_current())) return sched_teardown(self);
  s->closing = true;
  rb_ensure(sched_run, self, sched_teardown, self);
  return Qnil;
}

static int backend_start(rs_sched *s, const rs_backend_ops *ops) {
  memset(&s->backend, 0, sizeof(s->backend));
  s->backend.ops = ops;
  s->backend.sched = s;
  s->backend.wake_fd = -1;
  return ops->init(&s->backend);
}

static void drop_block(rs_op *op, void *arg) {
  if (op->block) rs_buf_put(op->block_pool, op->block);
  op->block = NULL;
}

/* The child keeps the fibers it inherited but not the parent's ring: drop
 * every inherited operation unseen by the kernel and start a new backend. */
static void after_fork_child(sched_wrap *w) {
  rs_sched *s = &w->s;
  const rs_backend_ops *ops = s->backend.ops;
  w->generation = fork_generation;
  backend_destroy(s);
  rs_op_pool_each_live(&s->pool, drop_block, s);
  rs_op_pool_destroy(&s->pool);
  rs_op_pool_init(&s->pool);
  st_clear(s->block_ops);
  st_clear(s->unblocked);
  s->ready_head = s->ready_tail = NULL;
  s->inflight = 0;
  rs_work_pool_forget(s);
  pthread_mutex_init(&s->remote_lock, NULL);
  s->remote_head = NULL;
  VALUE cur = rb_fiber_current();
  st_clear(s->fibers);
  if (cur != s->loop_fiber && !s->closed) st_insert(s->fibers, (st_data_t)cur, 0);
  s->thread = rb_thread_current();
  if (s->closed || !ops) return;
  int ret = backend_start(s, ops);
  if (ret < 0 && ops == &rs_backend_uring_ops) ret = backend_start(s, &rs_backend_epoll_ops);
  if (ret < 0) s->closed = true;
}

static VALUE sched_after_fork(VALUE self) {
  rs_sched_get(self);
  return self;
}

/* ---- construction ---------------------------------------------------------------------- */

static ID backend_choice(VALUE want) {
  if (NIL_P(want) || SYM2ID(want) == id_auto) {
    const char *env = getenv("RINGSPUN_BACKEND");
    if (!env || !*env || strcmp(env, "auto") == 0) return id_auto;
    if (strcmp(env, "io_uring") == 0) return id_io_uring;
    if (strcmp(env, "epoll") == 0) return id_epoll;
    rb_raise(rb_eArgError, "RINGSPUN_BACKEND must be auto, io_uring or epoll, not %s", env);
  }
  ID id = SYM2ID(want);
  if (id != id_io_uring && id != id_epoll) rb_raise(rb_eArgError, "backend must be :auto, :io_uring or :epoll");
  return id;
}

static VALUE sched_initialize(int argc, VALUE *argv, VALUE self) {
  VALUE opts;
  rb_scan_args(argc, argv, ":", &opts);
  VALUE want = rs_kwarg(opts, "backend");
  if (want == Qundef) want = Qnil;
  if (!NIL_P(want)) Check_Type(want, T_SYMBOL);
  sched_wrap *w = rb_check_typeddata(self, &sched_type);
  rs_sched *s = &w->s;
  w->generation = fork_generation;
  s->loop_fiber = rb_fiber_current();
  s->thread = rb_thread_current();
  s->running = Qnil;
  s->resuming = Qnil;
  ID choice = backend_choice(want);
  int ret;
  if (choice == id_epoll) {
    ret = backend_start(s, &rs_backend_epoll_ops);
  } else {
    ret = backend_start(s, &rs_backend_uring_ops);
    /* :auto falls back on any setup error: EPERM (seccomp, io_uring_disabled),
     * ENOSYS, ENOMEM, EINVAL. */
    if (ret < 0 && choice == id_auto) ret = backend_start(s, &rs_backend_epoll_ops);
  }
  if (ret < 0) {
    s->backend.impl = NULL;
    rs_raise_errno(-ret, choice == id_epoll ? "epoll_create1" : "io_uring_queue_init");
  }
  return self;
}

static VALUE sched_backend(VALUE self) {
  rs_sched *s = rs_sched_get(self);
  return ID2SYM(s->backend.ops == &rs_backend_uring_ops ? id_io_uring : id_epoll);
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
  s->resuming = Qnil;
  s->running = rb_fiber_current();
  int state = 0;
  VALUE result = rb_protect(call_proc, RARRAY_AREF(data, 1), &state);
  st_data_t key = (st_data_t)rb_fiber_current();
  st_delete(s->fibers, &key, NULL);
  st_delete(s->unblocked, &key, NULL); /* (st_delete gave back the same key) */
  if (!state) return result;
  VALUE err = rb_errinfo();
  if (state == 6 && rb_obj_is_kind_of(err, eRunAborted)) {
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
    wrap_of(s)->pending_error = err;
    return Qnil;
  }
  rb_jump_tag(state);
  return Qnil;
}

static VALUE sched_fiber(int argc, VALUE *argv, VALUE self) {
  rs_sched *s = rs_sched_get(self);
  rb_need_block();
  if (s->closed) rb_raise(rb_eIOError, "ringspun: scheduler is closed");
  bind_thread(s);
  VALUE data = rb_ary_new_from_args(2, self, rb_block_proc());
  VALUE fiber = rb_funcall_with_block_kw(cFiber, id_new, 1, &non_blocking_kw, rb_proc_new(fiber_body, data),
                                         RB_PASS_KEYWORDS);
  st_insert(s->fibers, (st_data_t)fiber, 0);
  VALUE me = rb_fiber_current();
  if (me == s->loop_fiber) {
    s->running = fiber;
    s->resuming = fiber;
    rb_fiber_transfer(fiber, 0, NULL);
    s->running = me;
    s->resuming = Qnil;
    raise_pending(s);
    return fiber;
  }
  /* The creator is runnable again at once; it waits in line behind others. */
  requeue_and_park(s, fiber);
  return fiber;
}

/* ---- hooks: time ---------------------------------------------------------------------------- */

int64_t rs_duration_ns(VALUE d) {
  double secs = NUM2DBL(d);
  if (secs < 0) rb_raise(rb_eArgError, "time interval must not be negative");
  if (secs > 1e9) secs = 1e9;
  return (int64_t)(secs * 1e9);
}

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
  st_insert(s->block_ops, (st_data_t)me, (st_data_t)op);
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
    op_finish(s, (rs_op *)v, 0);
    if (rb_thread_current() != s->thread) s->backend.ops->wakeup(&s->backend);
  } else if (RTEST(rb_fiber_alive_p(fiber))) {
    /* Not blocked yet: a thread may signal a Queue or ConditionVariable
     * after the fiber queued itself there and before it calls `block`.
     * Its next `block` returns at once; a wake-up too many is harmless,
     * the callers re-check their condition. */
    st_insert(s->unblocked, (st_data_t)fiber, 0);
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
  op->fiber = rb_fiber_current();
  op->raise_class = klass;
  op->raise_message = message;
  op->waiting = 1;
  int ret = op_submit(s, op);
  if (ret < 0) {
    rs_op_release(s, op);
    rs_raise_errno(-ret, "timeout_after");
  }
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
  rs_op *op = queue_runnable(s, fiber);
  op->action = RS_ACT_RAISE;
  op->raise_class = exception; /* an exception object, raised as it is */
  op->raise_message = Qnil;
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
  if (op->fd != c->fd && !(op->kind == RS_OP_SPLICE && op->fd_out == c->fd)) return;
  if (!(op->kernel_refs || op->in_backend)) return;
  rs_op_cancel(c->s, op);
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
  if (s->closed || fiber_blocking_p(rb_fiber_current())) return Qnil;
  check_parkable(s);
  requeue_and_park(s, s->loop_fiber);
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
static VALUE sched_fiber_count(VALUE self) { return LONG2NUM(live_fibers(rs_sched_get(self))); }

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
  pthread_atfork(NULL, NULL, on_fork_child);
  id_new = rb_intern("new");
  id_report = rb_intern("report_fiber_error");
  id_io_uring = rb_intern("io_uring");
  id_epoll = rb_intern("epoll");
  id_auto = rb_intern("auto");
  id_blocking_p = rb_intern("blocking?");
  id_hook_error_p = rb_intern("hook_error?");
  id_report_stranded = rb_intern("report_stranded");
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
  /* Not a StandardError: `rescue => e` in user code must not swallow it. */
  eRunAborted = rb_define_class_under(mRingspun, "RunAborted", rb_eException);
  rb_define_alloc_func(cScheduler, sched_alloc);
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
