/* Operations (ARCHITECTURE.md, layer 2): one request to the kernel or to a
 * worker, with the fiber it resumes and the memory the kernel may touch.
 * op.c holds an op's whole life: the pool, new, submit, park, await,
 * salvage, complete, cancel, release, and the ready queue of fibers an op
 * made runnable. A backend reads the request's fields and nothing else. */
#ifndef RINGSPUN_OP_H
#define RINGSPUN_OP_H 1
#include "runtime/state.h"

enum rs_op_kind {
  RS_OP_READY = 0, /* no kernel work: the fiber is simply runnable again */
  RS_OP_POLL,      /* wait until fd has `events` (POLLIN/POLLOUT) */
  RS_OP_TIMER,     /* expire after `timeout_ns` */
  /* Native operations: only a backend with `native` set takes these. */
  RS_OP_READ,
  RS_OP_WRITE,
  RS_OP_RECV_MULTI, /* multishot receive into the backend's buffer ring */
  RS_OP_WORK,       /* a C function run by the scheduler's worker threads */
};

/* What a completion does with its op. */
enum rs_op_action {
  RS_ACT_RESUME = 0, /* make the waiting fiber runnable */
  RS_ACT_RAISE,      /* raise raise_class (or the exception object in it) into the fiber */
};

struct rs_op {
  rs_op *next, *prev;   /* ready queue (doubly linked) or free list */
  rs_sched *sched;      /* owner */
  /* VALUEs are stored with rs_op_write (a write barrier on the scheduler). */
  VALUE fiber;          /* fiber to resume; Qnil once nobody waits */
  VALUE keep;           /* Ruby object the kernel may touch (string, buffer) */
  VALUE raise_class, raise_message; /* RS_ACT_RAISE */
  int kind;
  int action;
  int result;           /* completion result: >= 0 or -errno */
  uint8_t kernel_refs;  /* completions still expected from the kernel or a worker */
  uint8_t queued;       /* on the ready queue */
  uint8_t done;         /* the primary completion has arrived */
  uint8_t waiting;      /* a fiber is parked on this op */
  uint8_t in_backend;   /* held by the epoll backend (fd table, timer heap) */
  uint8_t cancelling;
  uint8_t detached;     /* a wakeup nobody waits on; freed once delivered */
  /* the request */
  int fd;
  uint32_t events;      /* POLLIN / POLLOUT for RS_OP_POLL */
  int64_t timeout_ns;   /* < 0: none; for POLL a deadline, for TIMER the delay */
  void *buf;
  size_t len;
  int64_t off;          /* < 0: at the file position */
  void *block;          /* a pool block the kernel may write; the op owns it */
  rs_buf_pool *block_pool;
  /* What only one backend, or the worker pool, keeps in an op. */
  union {
    rs_epoll_part epoll;
    rs_uring_part uring;
    rs_work_job job;    /* RS_OP_WORK */
  } own;
};

/* ---- the pool (state.h has its type) --------------------------------------- */

void rs_op_pool_init(rs_op_pool *p);
void rs_op_pool_destroy(rs_op_pool *p);
/* Calls fn for every op handed out (to mark, to cancel at close). */
void rs_op_pool_each_live(rs_op_pool *p, void (*fn)(rs_op *, void *), void *arg);

/* ---- multishot completions ---------------------------------------------- */

/* Completions of a multishot op waiting for its fiber. It lives in a pool
 * block owned by the op, so a completion arriving after the fiber is gone
 * still has somewhere to go; the op's release recycles their buffers. */
#define RS_MSQ_CAP 512
#define RS_MSQ_HOLD 16 /* buffers one multishot op may hold before it is paused */
typedef struct rs_msq {
  rs_cqe cqe[RS_MSQ_CAP];
  unsigned head, len;
} rs_msq;

/* ---- an op's life ----------------------------------------------------------- */

/* The sink every backend of a scheduler delivers to. */
extern const rs_backend_sink rs_op_sink;

rs_op *rs_op_new(rs_sched *s, int kind);
/* Stores a VALUE in one of op's VALUE fields, with the write barrier the
 * scheduler object needs (it marks them). */
void rs_op_write(rs_op *op, VALUE *field, VALUE v);
/* Makes op the current fiber's and submits it, without parking (a
 * timeout_after timer); on failure releases it and returns -errno. */
int rs_op_begin(rs_sched *s, rs_op *op);
/* Submits op, parks the current fiber until it completes, returns
 * op->result (or -errno from submission). On interruption cancels it (and
 * waits for the kernel when `keep` is set), releases it and re-raises. The
 * op is released before returning. */
int rs_op_await(rs_sched *s, rs_op *op);
/* The two halves of rs_op_await, for an op kept in flight while the fiber
 * works: submit (and push to the kernel now), later wait for it. */
int rs_op_start(rs_sched *s, rs_op *op);
int rs_op_wait(rs_sched *s, rs_op *op);
/* rs_op_wait that, when interrupted, still waits for the kernel and then
 * returns the rb_protect state with *result set, leaving op to the caller
 * (to release, then re-raise). */
int rs_op_wait_salvage(rs_sched *s, rs_op *op, int *result);
/* Parks until op has news (op->done), then clears it. */
void rs_op_park_news(rs_sched *s, rs_op *op);
/* Marks op finished with `result` and makes its fiber runnable. */
void rs_op_finish(rs_sched *s, rs_op *op, int result);
/* The primary completion of op, from a backend or a worker. */
void rs_op_complete(rs_op *op, int result);
void rs_op_release(rs_sched *s, rs_op *op);
/* Cancels op and parks until its last completion, keeping any exception
 * being raised; the op stays the caller's to release. */
void rs_op_drain(rs_sched *s, rs_op *op);
void rs_op_cancel(rs_sched *s, rs_op *op);
/* The op whose job this is (RS_OP_WORK). */
static inline rs_op *rs_op_of_job(rs_work_job *job) { return RS_CONTAINER_OF(job, rs_op, own.job); }

/* ---- fibers made runnable: the ready queue and parking ---------------------- */

void rs_ready_push(rs_sched *s, rs_op *op);
/* Resumes (or raises into) the fiber of op, the ready queue's head. */
void rs_op_resume(rs_sched *s, rs_op *op);
/* An op that only makes `fiber` runnable: queued now, already done. */
rs_op *rs_op_queue_runnable(rs_sched *s, VALUE fiber);
/* Parks the current fiber until the loop resumes it (one of its ops is
 * done, or a spurious wakeup: callers re-check). Returns the rb_protect
 * state of an exception raised into it meanwhile. */
int rs_park(rs_sched *s);
/* The current fiber waits in line behind the fibers runnable now, while
 * `target` runs. */
void rs_requeue_and_park(rs_sched *s, VALUE target);
#endif
