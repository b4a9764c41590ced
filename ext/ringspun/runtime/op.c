/* The life of an operation, in one place: the pool its record comes from,
 * submission, parking its fiber, completion, cancellation, release, and
 * the ready queue of fibers a completion made runnable.
 *
 * Fibers switch only by transfer. A fiber that waits parks by transferring
 * to the loop fiber (loop.c), which resumes the fibers on the ready queue
 * and, when none is runnable, waits on the backend. */
#include "runtime/op.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- the pool ---------------------------------------------------------------- */

void rs_op_pool_init(rs_op_pool *p) { memset(p, 0, sizeof(*p)); }

void rs_op_pool_destroy(rs_op_pool *p) {
  for (size_t i = 0; i < p->nslabs; i++) free(p->slabs[i]);
  free(p->slabs);
  memset(p, 0, sizeof(*p));
}

static int pool_grow(rs_op_pool *p) {
  if (p->nslabs == p->cap_slabs) {
    size_t cap = p->cap_slabs ? p->cap_slabs * 2 : 8;
    rs_op **slabs = realloc(p->slabs, cap * sizeof(*slabs));
    if (!slabs) return -1;
    p->slabs = slabs;
    p->cap_slabs = cap;
  }
  rs_op *slab = calloc(RS_OPS_PER_SLAB, sizeof(rs_op));
  if (!slab) return -1;
  p->slabs[p->nslabs++] = slab;
  for (size_t i = RS_OPS_PER_SLAB; i-- > 0;) {
    slab[i].kind = -1; /* marks a free record for rs_op_pool_each_live */
    slab[i].next = p->free_list;
    p->free_list = &slab[i];
  }
  return 0;
}

static rs_op *pool_get(rs_op_pool *p) {
  if (!p->free_list && pool_grow(p) < 0) return NULL;
  rs_op *op = p->free_list;
  p->free_list = op->next;
  memset(op, 0, sizeof(*op));
  op->fiber = op->keep = op->raise_class = op->raise_message = Qnil;
  op->fd = -1;
  op->timeout_ns = -1;
  p->live++;
  return op;
}

static void pool_put(rs_op_pool *p, rs_op *op) {
  op->kind = -1;
  op->fiber = op->keep = op->raise_class = op->raise_message = Qnil;
  op->next = p->free_list;
  p->free_list = op;
  p->live--;
}

void rs_op_pool_each_live(rs_op_pool *p, void (*fn)(rs_op *, void *), void *arg) {
  for (size_t i = 0; i < p->nslabs; i++)
    for (size_t j = 0; j < RS_OPS_PER_SLAB; j++)
      if (p->slabs[i][j].kind >= 0) fn(&p->slabs[i][j], arg);
}

/* ---- the ready queue ------------------------------------------------------------ */

void rs_ready_push(rs_sched *s, rs_op *op) {
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

/* ---- new and free ------------------------------------------------------------------ */

rs_op *rs_op_new(rs_sched *s, int kind) {
  rs_op *op = pool_get(&s->pool);
  if (!op) rb_raise(rb_eNoMemError, "ringspun: cannot allocate an operation");
  op->sched = s;
  op->kind = kind;
  return op;
}

void rs_op_write(rs_op *op, VALUE *field, VALUE v) { RB_OBJ_WRITE(op->sched->self, field, v); }

static void msq_recycle_all(rs_sched *s, rs_msq *q) {
  for (; q->len > 0; q->len--, q->head = (q->head + 1) % RS_MSQ_CAP)
    if (q->cqe[q->head].bid >= 0) s->backend.ops->bufring_recycle(&s->backend, (unsigned)q->cqe[q->head].bid);
}

static void op_maybe_free(rs_sched *s, rs_op *op) {
  if (op->waiting || op->kernel_refs || op->in_backend || op->queued) return;
  /* The kernel is done with the block: now it may be reused. */
  if (op->kind == RS_OP_RECV_MULTI && op->block) msq_recycle_all(s, op->block);
  if (op->block) rs_buf_put(op->block_pool, op->block);
  op->block = NULL;
  pool_put(&s->pool, op);
}

/* Forgets that op's fiber may be unblocked, if op is what it waits on. */
static void unregister_block(rs_sched *s, rs_op *op) {
  st_data_t key = (st_data_t)op->fiber, v;
  if (op->fiber != Qnil && st_lookup(s->block_ops, key, &v) && (rs_op *)v == op) st_delete(s->block_ops, &key, NULL);
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

/* ---- completion --------------------------------------------------------------------- */

void rs_op_finish(rs_sched *s, rs_op *op, int result) {
  if (op->done) return;
  op->done = 1;
  op->result = result;
  if (op->waiting) rs_ready_push(s, op);
}

/* One completion fewer to expect from the kernel (or a worker). */
static void op_unref(rs_op *op) {
  rs_sched *s = op->sched;
  if (op->kernel_refs && --op->kernel_refs == 0) {
    s->inflight--;
    /* A fiber draining a cancelled op waits for exactly this moment. */
    if (op->cancelling && op->waiting) rs_ready_push(s, op);
  }
  op_maybe_free(s, op);
}

void rs_op_complete(rs_op *op, int result) {
  rs_op_finish(op->sched, op, result);
  op_unref(op);
}

/* A multishot completion is queued for the fiber (rs_msq); one that no
 * fiber waits for any more gives its buffer straight back. */
static void op_multishot(rs_op *op, rs_cqe c) {
  rs_sched *s = op->sched;
  rs_msq *q = op->block;
  if (op->waiting && q && q->len < RS_MSQ_CAP) {
    q->cqe[(q->head + q->len++) % RS_MSQ_CAP] = c;
    op->done = 1;
    rs_ready_push(s, op);
    /* One slow consumer must not hold the whole shared ring: past its
     * share, stop its receive until it has drained (it re-arms then). */
    if (q->len >= RS_MSQ_HOLD && c.more) rs_op_cancel(s, op);
  } else if (c.bid >= 0) {
    s->backend.ops->bufring_recycle(&s->backend, (unsigned)c.bid);
  }
  if (!c.more) op_unref(op);
}

static void sink_complete(rs_op *op, rs_cqe c) {
  if (op->kind == RS_OP_RECV_MULTI) op_multishot(op, c);
  else rs_op_complete(op, c.result);
}

const rs_backend_sink rs_op_sink = {sink_complete, op_unref};

/* ---- submission and cancellation -------------------------------------------------------- */

/* Hands op to its backend or the worker pool: -errno. */
static int op_submit(rs_sched *s, rs_op *op) {
  int ret = 0;
  if (op->kind == RS_OP_WORK) {
    ret = rs_work_submit(&s->work, &s->backend, &op->own.job);
    if (ret == 0) op->kernel_refs = 1; /* a worker holds it until it completes */
  } else if (op->kind != RS_OP_READY) {
    ret = s->backend.ops->submit(&s->backend, op);
  }
  if (ret == 0 && op->kernel_refs) s->inflight++;
  return ret;
}

void rs_op_cancel(rs_sched *s, rs_op *op) {
  if (op->cancelling || !(op->kernel_refs || op->in_backend)) return;
  op->cancelling = 1;
  if (op->kind == RS_OP_WORK) return; /* a running job cannot be stopped; it ends soon */
  s->backend.ops->cancel(&s->backend, op);
}

/* ---- parking ------------------------------------------------------------------------------ */

static VALUE transfer_to(VALUE fiber) { return rb_fiber_transfer(fiber, 0, NULL); }

/* Switches from the current fiber to `target` and returns when something
 * switches back; returns the rb_protect state. When the switch back did not
 * come from our loop (someone called Fiber#raise or #transfer on us), the
 * fiber that did it is suspended in that call: queue it so it runs again. */
static int park(rs_sched *s, VALUE target) {
  VALUE me = rb_fiber_current();
  int state = 0;
  s->sw->running = target;
  s->sw->resuming = target;
  rb_protect(transfer_to, target, &state);
  if (s->sw->resuming != me) {
    VALUE by = s->sw->running;
    if (by != me && by != s->loop_fiber && RTEST(rb_fiber_alive_p(by)))
      rs_op_queue_runnable(s, by)->detached = 1; /* nobody releases it: the loop frees it */
  }
  s->sw->resuming = Qnil;
  s->sw->running = me;
  return state;
}

int rs_park(rs_sched *s) { return park(s, s->loop_fiber); }

rs_op *rs_op_queue_runnable(rs_sched *s, VALUE fiber) {
  rs_op *op = rs_op_new(s, RS_OP_READY);
  rs_op_write(op, &op->fiber, fiber);
  op->waiting = 1;
  op->done = 1;
  rs_ready_push(s, op);
  return op;
}

void rs_requeue_and_park(rs_sched *s, VALUE target) {
  rs_op *op = rs_op_queue_runnable(s, rb_fiber_current());
  int state = park(s, target);
  rs_op_release(s, op);
  if (state) rb_jump_tag(state);
}

void rs_op_park_news(rs_sched *s, rs_op *op) {
  while (!op->done) {
    int state = park(s, s->loop_fiber);
    if (state) rb_jump_tag(state); /* the caller's ensure releases op */
  }
  op->done = 0;
  ready_unlink(s, op);
}

/* ---- waiting for an op --------------------------------------------------------------------- */

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

int rs_op_begin(rs_sched *s, rs_op *op) {
  rs_op_write(op, &op->fiber, rb_fiber_current());
  op->waiting = 1;
  int ret = op_submit(s, op);
  if (ret < 0) rs_op_release(s, op);
  return ret;
}

int rs_op_start(rs_sched *s, rs_op *op) {
  int ret = rs_op_begin(s, op);
  if (ret == 0 && s->backend.ops->flush) s->backend.ops->flush(&s->backend);
  return ret;
}

int rs_op_await(rs_sched *s, rs_op *op) {
  int ret = rs_op_begin(s, op);
  return ret < 0 ? ret : rs_op_wait(s, op);
}

int rs_op_wait(rs_sched *s, rs_op *op) {
  while (!op->done) {
    int state = park(s, s->loop_fiber);
    if (state) op_abort(s, op, state);
  }
  int ret = op->result;
  op->block = NULL; /* done: the block is the caller's again */
  rs_op_release(s, op);
  return ret;
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

/* ---- resuming ------------------------------------------------------------------------------ */

/* Another op of `fiber` is queued: it finished (a read that took bytes,
 * say) and its fiber must see that before a timeout may interrupt it. */
static bool fiber_has_news(rs_sched *s, VALUE fiber, rs_op *except) {
  for (rs_op *o = s->ready_head; o; o = o->next)
    if (o != except && o->fiber == fiber && o->action == RS_ACT_RESUME) return true;
  return false;
}

void rs_op_resume(rs_sched *s, rs_op *op) {
  VALUE fiber = op->fiber;
  if (op->action == RS_ACT_RAISE && fiber_has_news(s, fiber, op)) {
    ready_unlink(s, op);
    rs_ready_push(s, op); /* after the news: it may yet be cancelled */
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
  s->sw->running = fiber;
  s->sw->resuming = fiber;
  if (raise) {
    rb_fiber_raise(fiber, NIL_P(args[1]) ? 1 : 2, args);
  } else {
    rb_fiber_transfer(fiber, 0, NULL);
  }
  s->sw->running = s->loop_fiber;
}
