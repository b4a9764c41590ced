/* One scheduler's runtime state, shared by the runtime's files: the
 * backend, the op pool, the ready queue, the fibers, the worker pool. The
 * Ruby object that holds it is made and kept by sched.c (memory, GC,
 * thread, fork, backend choice); loop.c runs it; the Ruby class with the
 * Fiber::Scheduler hooks (scheduler.c) stands on top. */
#ifndef RINGSPUN_SCHED_H
#define RINGSPUN_SCHED_H 1
#include <ruby.h>
#include "runtime/op.h"

struct rs_sched {
  rs_backend backend;
  rs_op_pool pool;
  rs_buf_pool bufs;
  rs_op *ready_head, *ready_tail; /* runnable fibers, FIFO */
  VALUE self;           /* the Ruby object holding this state */
  /* VALUEs are stored with rs_sched_write (the object is WB_PROTECTED). */
  VALUE loop_fiber;     /* the blocking fiber that runs the event loop */
  VALUE running;        /* the fiber we last switched into */
  VALUE resuming;       /* the fiber the loop is switching into right now */
  VALUE thread;         /* the thread served */
  VALUE pending_error;  /* a non-StandardError that escaped a fiber */
  /* fiber => rs_op* while parked in block/kernel_sleep. Every access holds
   * the GVL, so `unblock` from another thread may touch it and the ready
   * queue directly; it then wakes the owner through the backend's eventfd. */
  st_table *block_ops;
  /* The fibers started by us and not yet finished, keyed by address (they
   * are marked pinned, so never moved); their count is how many are live.
   * Not a Hash: hashing a Fiber gives it an object id, a table insertion each. */
  st_table *fibers;
  /* Fibers unblocked while they were not blocked: their next `block`
   * returns at once (a wake-up may come before the wait). Keyed by fiber. */
  st_table *unblocked;
  rs_work_pool *work;
  size_t inflight;      /* ops with kernel_refs > 0 */
  unsigned long generation; /* the fork generation it was made in */
  /* One bit per fd: its last RWF_NOWAIT try said EAGAIN (io/rw.c). */
  uint64_t *again_bits;
  size_t again_words;
  bool closing, closed;
  bool in_run;          /* the loop is running (run or close) */
};

static inline void rs_sched_write(rs_sched *s, VALUE *field, VALUE v) { RB_OBJ_WRITE(s->self, field, v); }
static inline long rs_live_fibers(const rs_sched *s) { return (long)s->fibers->num_entries; }

/* The alloc function of a class whose instances hold an rs_sched. */
VALUE rs_sched_alloc(VALUE klass);
/* The state of a scheduler object (TypeError for anything else); a
 * forked child's copy is reset first. */
rs_sched *rs_sched_get(VALUE self);
/* The scheduler for the current fiber when it is a Ringspun scheduler,
 * open, in this process; NULL otherwise. */
rs_sched *rs_sched_current(void);
/* Starts the backend `want` names (:auto, :io_uring, :epoll or nil for
 * RINGSPUN_BACKEND); :auto falls back to epoll. Raises on failure. */
void rs_sched_start(rs_sched *s, VALUE want);
void rs_sched_backend_destroy(rs_sched *s);
/* Makes the current thread the served one, while nothing of another is
 * alive (RuntimeError otherwise). */
void rs_sched_bind_thread(rs_sched *s);
/* A fiber started by this scheduler, alive until rs_sched_forget_fiber. */
void rs_sched_add_fiber(rs_sched *s, VALUE fiber);
void rs_sched_forget_fiber(rs_sched *s, VALUE fiber);
bool rs_fiber_blocking_p(VALUE fiber);
/* The backend's name as a Symbol (:io_uring or :epoll). */
VALUE rs_sched_backend_name(rs_sched *s);

void rs_init_sched(void);
#endif
