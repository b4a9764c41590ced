/* The Ruby object that holds a scheduler's runtime state: its memory and
 * GC marks (TypedData, write-barrier protected, compactable), the thread
 * it serves, its reset in a forked child, and the choice of backend. */
#include "runtime/sched.h"
#include "runtime/errors.h"
#include <ruby/fiber/scheduler.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static ID id_io_uring, id_epoll, id_auto, id_blocking_p;

/* Bumped in every forked child, so a scheduler notices it was inherited. */
static volatile unsigned long fork_generation;
static void on_fork_child(void) { fork_generation++; }

/* ---- GC ---------------------------------------------------------------------------
 * Fibers are marked pinned: the st tables and block_ops are keyed by their
 * address. So is `keep`, memory the kernel may be writing (an embedded
 * String's bytes move with it). The rest may move; compact updates them. */

static void mark_op(rs_op *op, void *arg) {
  rb_gc_mark(op->fiber);
  rb_gc_mark(op->keep);
  rb_gc_mark_movable(op->raise_class);
  rb_gc_mark_movable(op->raise_message);
}

static void move_op(rs_op *op, void *arg) {
  op->raise_class = rb_gc_location(op->raise_class);
  op->raise_message = rb_gc_location(op->raise_message);
}

static int mark_fiber_key(st_data_t key, st_data_t val, st_data_t arg) {
  rb_gc_mark((VALUE)key);
  return ST_CONTINUE;
}

static void switch_mark(void *p) {
  rs_switch *w = p;
  rb_gc_mark(w->running);
  rb_gc_mark(w->resuming);
}

/* Not WB_PROTECTED, on purpose: see rs_switch in state.h. */
static const rb_data_type_t switch_type = {
    "Ringspun::Scheduler switch",
    {switch_mark, RUBY_TYPED_DEFAULT_FREE, NULL, NULL, {0}},
    NULL,
    NULL,
    RUBY_TYPED_FREE_IMMEDIATELY,
};

static void sched_mark(void *p) {
  rs_sched *s = p;
  rb_gc_mark(s->loop_fiber);
  rb_gc_mark_movable(s->sw_holder);
  rb_gc_mark_movable(s->thread);
  rb_gc_mark_movable(s->pending_error);
  if (s->fibers) st_foreach(s->fibers, mark_fiber_key, 0);
  if (s->unblocked) st_foreach(s->unblocked, mark_fiber_key, 0);
  rs_op_pool_each_live(&s->pool, mark_op, NULL);
}

static void sched_compact(void *p) {
  rs_sched *s = p;
  s->thread = rb_gc_location(s->thread);
  s->sw_holder = rb_gc_location(s->sw_holder);
  s->pending_error = rb_gc_location(s->pending_error);
  rs_op_pool_each_live(&s->pool, move_op, NULL);
}

void rs_sched_backend_destroy(rs_sched *s) {
  if (s->backend.impl) s->backend.ops->destroy(&s->backend);
  s->backend.impl = NULL;
}

static void sched_free(void *p) {
  rs_sched *s = p;
  if (s->generation == fork_generation) rs_work_pool_stop(&s->work);
  rs_sched_backend_destroy(s);
  rs_op_pool_destroy(&s->pool);
  rs_buf_pool_destroy(&s->bufs);
  if (s->block_ops) st_free_table(s->block_ops);
  if (s->fibers) st_free_table(s->fibers);
  if (s->unblocked) st_free_table(s->unblocked);
  xfree(s->again_bits);
  xfree(s);
}

static size_t sched_size(const void *p) {
  const rs_sched *s = p;
  return sizeof(*s) + s->pool.nslabs * RS_OPS_PER_SLAB * sizeof(rs_op) + (s->bufs.nfree + s->bufs.out) * RS_BLOCK_SIZE;
}

static const rb_data_type_t sched_type = {
    "Ringspun::Scheduler",
    {sched_mark, sched_free, sched_size, sched_compact, {0}},
    NULL,
    NULL,
    RUBY_TYPED_FREE_IMMEDIATELY | RUBY_TYPED_WB_PROTECTED,
};

VALUE rs_sched_alloc(VALUE klass) {
  rs_sched *s;
  VALUE self = TypedData_Make_Struct(klass, rs_sched, &sched_type, s);
  s->self = self;
  s->loop_fiber = s->thread = s->pending_error = Qnil;
  VALUE holder = TypedData_Make_Struct(0, rs_switch, &switch_type, s->sw); /* hidden */
  s->sw->running = s->sw->resuming = Qnil;
  RB_OBJ_WRITE(self, &s->sw_holder, holder);
  s->generation = fork_generation;
  s->fibers = st_init_numtable();
  s->unblocked = st_init_numtable();
  s->block_ops = st_init_numtable();
  s->backend.wake_fd = -1;
  rs_op_pool_init(&s->pool);
  return self;
}

/* ---- fibers and the thread --------------------------------------------------------- */

void rs_sched_add_fiber(rs_sched *s, VALUE fiber) {
  st_insert(s->fibers, (st_data_t)fiber, 0);
  RB_OBJ_WRITTEN(s->self, Qundef, fiber);
}

void rs_sched_forget_fiber(rs_sched *s, VALUE fiber) {
  st_data_t key = (st_data_t)fiber;
  st_delete(s->fibers, &key, NULL);
  key = (st_data_t)fiber;
  st_delete(s->unblocked, &key, NULL);
}

bool rs_fiber_blocking_p(VALUE fiber) { return RTEST(rb_funcall(fiber, id_blocking_p, 0)); }

/* A scheduler serves the thread it was installed on, which need not be the
 * thread that made it (Fiber.set_scheduler takes any object): the first
 * hook called on a new thread adopts it, while nothing of the old one is
 * alive. Other threads still call `unblock`, which never binds. */
void rs_sched_bind_thread(rs_sched *s) {
  VALUE th = rb_thread_current();
  if (s->thread == th) return;
  if (rs_live_fibers(s) > 0 || s->pool.live > 0 || s->in_run)
    rb_raise(rb_eRuntimeError, "ringspun: this scheduler is serving another thread; a scheduler serves one thread");
  rs_sched_write(s, &s->thread, th);
  /* Hooks run on the thread's current fiber; a blocking one runs the loop. */
  VALUE cur = rb_fiber_current();
  if (rs_fiber_blocking_p(cur)) rs_sched_write(s, &s->loop_fiber, cur);
}

/* ---- backends ------------------------------------------------------------------------ */

static int backend_start(rs_sched *s, const rs_backend_ops *ops) {
  memset(&s->backend, 0, sizeof(s->backend));
  s->backend.ops = ops;
  s->backend.sink = &rs_op_sink;
  s->backend.wake_fd = -1;
  return ops->init(&s->backend);
}

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

void rs_sched_start(rs_sched *s, VALUE want) {
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
}

VALUE rs_sched_backend_name(rs_sched *s) {
  return ID2SYM(s->backend.ops == &rs_backend_uring_ops ? id_io_uring : id_epoll);
}

/* ---- fork ------------------------------------------------------------------------------ */

static void drop_block(rs_op *op, void *arg) {
  if (op->block) rs_buf_put(op->block_pool, op->block);
  op->block = NULL;
}

/* The child keeps the fibers it inherited but not the parent's ring: drop
 * every inherited operation unseen by the kernel and start a new backend. */
static void after_fork_child(rs_sched *s) {
  const rs_backend_ops *ops = s->backend.ops;
  s->generation = fork_generation;
  rs_sched_backend_destroy(s);
  rs_op_pool_each_live(&s->pool, drop_block, s);
  rs_op_pool_destroy(&s->pool);
  rs_op_pool_init(&s->pool);
  st_clear(s->block_ops);
  st_clear(s->unblocked);
  s->ready_head = s->ready_tail = NULL;
  s->inflight = 0;
  rs_work_pool_forget(&s->work);
  VALUE cur = rb_fiber_current();
  st_clear(s->fibers);
  if (cur != s->loop_fiber && !s->closed) rs_sched_add_fiber(s, cur);
  rs_sched_write(s, &s->thread, rb_thread_current());
  if (s->closed || !ops) return;
  int ret = backend_start(s, ops);
  if (ret < 0 && ops == &rs_backend_uring_ops) ret = backend_start(s, &rs_backend_epoll_ops);
  if (ret < 0) s->closed = true;
}

rs_sched *rs_sched_get(VALUE self) {
  rs_sched *s = rb_check_typeddata(self, &sched_type);
  if (s->generation != fork_generation) after_fork_child(s);
  return s;
}

rs_sched *rs_sched_current(void) {
  VALUE cur = rb_fiber_scheduler_current();
  if (NIL_P(cur) || !rb_typeddata_is_kind_of(cur, &sched_type)) return NULL;
  rs_sched *s = rs_sched_get(cur);
  if (s->closed) return NULL;
  rs_sched_bind_thread(s);
  return s;
}

void rs_init_sched(void) {
  pthread_atfork(NULL, NULL, on_fork_child);
  id_io_uring = rb_intern("io_uring");
  id_epoll = rb_intern("epoll");
  id_auto = rb_intern("auto");
  id_blocking_p = rb_intern("blocking?");
}
