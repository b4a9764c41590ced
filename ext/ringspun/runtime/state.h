/* One scheduler's runtime state, the struct every runtime file shares: the
 * backend, the op pool, the ready queue, the fibers, the worker pool. A
 * header without functions of its own, below the files that use it: op.c
 * works on it, sched.c makes and keeps the Ruby object that holds it,
 * loop.c runs it. */
#ifndef RINGSPUN_STATE_H
#define RINGSPUN_STATE_H 1
#include <ruby.h>
#include "runtime/backend.h"
#include "runtime/buffer_pool.h"
#include "runtime/work.h"

typedef struct rs_sched rs_sched;

/* The two fibers a switch rewrites, several times per switch. They live in
 * a small object of their own that is not write-barrier protected: Ruby
 * marks it at every minor GC (two marks), and a switch pays no barrier. A
 * barrier on each write cost 4.6% more instructions per round trip of a
 * fiber ping-pong (callgrind, 4,000 round trips). */
typedef struct rs_switch {
  VALUE running;        /* the fiber we last switched into */
  VALUE resuming;       /* the fiber the loop is switching into right now */
} rs_switch;

/* The op pool (op.c): fixed-size records carved from slabs, never a
 * malloc per op. */
#define RS_OPS_PER_SLAB 256

typedef struct rs_op_pool {
  rs_op *free_list;
  rs_op **slabs;
  size_t nslabs, cap_slabs;
  size_t live;          /* ops handed out and not yet released */
} rs_op_pool;

struct rs_sched {
  rs_backend backend;
  rs_op_pool pool;
  rs_buf_pool bufs;
  rs_op *ready_head, *ready_tail; /* runnable fibers, FIFO */
  VALUE self;           /* the Ruby object holding this state */
  /* VALUEs are stored with rs_sched_write (the object is WB_PROTECTED). */
  VALUE loop_fiber;     /* the blocking fiber that runs the event loop */
  rs_switch *sw;        /* held by sw_holder */
  VALUE sw_holder;
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

#endif
