/* Ringspun: shared declarations for the extension's files.
 *
 * Layers (bottom to top): backend (backend_uring.c, backend_epoll.c) behind the
 * rs_backend_ops seam; operations (op.c); the scheduler (scheduler.c); IO
 * operations (io_ops.c); primitives; the Ruby layer in lib/. */
#ifndef RINGSPUN_H
#define RINGSPUN_H 1

#include <ruby.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>
#include <pthread.h>
#include <linux/time_types.h>
#include "buffer_pool.h"

#define RS_EXPORT __attribute__((visibility("default")))

#ifdef RINGSPUN_DEBUG
#include <stdio.h>
#include <stdlib.h>
/* An assertion states its reason; it is compiled only in debug builds. */
#define RS_ASSERT(cond, why)                                                   \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "ringspun: assertion failed: %s (%s) at %s:%d\n", #cond, \
              why, __FILE__, __LINE__);                                        \
      abort();                                                                 \
    }                                                                          \
  } while (0)
#else
#define RS_ASSERT(cond, why) ((void)0)
#endif

typedef struct rs_backend rs_backend;
typedef struct rs_op rs_op;
typedef struct rs_sched rs_sched;
typedef struct rs_work_pool rs_work_pool;

/* ---- operations (op.c) -------------------------------------------------- */

enum rs_op_kind {
  RS_OP_READY = 0, /* no kernel work: the fiber is simply runnable again */
  RS_OP_POLL,      /* wait until fd has `events` (POLLIN/POLLOUT) */
  RS_OP_TIMER,     /* expire after `timeout_ns` */
  /* Native operations: only a backend with `native` set takes these. */
  RS_OP_READ,
  RS_OP_WRITE,
  /* splice.c names its two system calls with these; no backend takes them
   * (IORING_OP_SPLICE's io-wq hop measured 3x slower than splice(2)). */
  RS_OP_SPLICE,
  RS_OP_TEE,
  RS_OP_RECV_MULTI, /* multishot receive into the backend's buffer ring */
  RS_OP_WORK,       /* a C function run by the scheduler's worker threads */
};

/* What a completion does with its op. */
enum rs_op_action {
  RS_ACT_RESUME = 0, /* make the waiting fiber runnable */
  RS_ACT_RAISE,      /* timeout_after: raise into the fiber */
};

struct rs_op {
  rs_op *next, *prev;   /* ready list (doubly linked) or free list */
  rs_sched *sched;      /* owner */
  VALUE fiber;          /* fiber to resume; Qnil once nobody waits */
  VALUE keep;           /* Ruby object the kernel may touch (string, buffer) */
  int kind;
  int action;
  int result;           /* completion result: >= 0 or -errno */
  uint32_t cqe_flags;
  uint8_t kernel_refs;  /* completions still expected from the kernel */
  uint8_t queued;       /* on the scheduler's ready list */
  uint8_t done;         /* the primary completion has arrived */
  uint8_t waiting;      /* a fiber is parked on this op */
  uint8_t in_backend;   /* registered with the epoll backend (fd table/heap) */
  uint8_t cancelling;
  uint8_t detached;     /* a wakeup nobody waits on; freed once delivered */
  int fd;
  uint32_t events;      /* POLLIN / POLLOUT for RS_OP_POLL */
  int64_t timeout_ns;   /* < 0: none; for POLL a deadline, for TIMER the delay */
  struct __kernel_timespec ts; /* io_uring reads the timeout from here */
  /* epoll backend bookkeeping */
  uint64_t deadline;    /* CLOCK_MONOTONIC ns */
  size_t heap_index;    /* position in the timer heap, SIZE_MAX when absent */
  rs_op *fd_next, *fd_prev; /* waiters on the same fd */
  /* native arguments */
  void *buf;
  size_t len;
  int64_t off;
  int fd_out;
  int64_t off_out;
  unsigned int op_flags;
  VALUE raise_class, raise_message; /* RS_ACT_RAISE */
  void *block;          /* a pool block the kernel may write; the op owns it */
  rs_buf_pool *block_pool;
  /* RS_OP_WORK: run by a worker thread, which must touch no Ruby object */
  int (*work_fn)(void *arg);
  void *work_arg;
  int work_result;
  rs_op *remote_next;   /* completed by a worker, waiting for the loop */
};

typedef struct rs_op_pool {
  rs_op *free_list;
  rs_op **slabs;
  size_t nslabs, cap_slabs;
  size_t live;          /* ops handed out and not yet released */
} rs_op_pool;

void rs_op_pool_init(rs_op_pool *p);
void rs_op_pool_destroy(rs_op_pool *p);
rs_op *rs_op_pool_get(rs_op_pool *p);
void rs_op_pool_put(rs_op_pool *p, rs_op *op);
/* Calls fn for every op handed out (used to mark and to cancel at close). */
void rs_op_pool_each_live(rs_op_pool *p, void (*fn)(rs_op *, void *), void *arg);

/* ---- backend seam -------------------------------------------------------- */

typedef struct rs_backend_ops {
  const char *name;
  bool native;                               /* takes RS_OP_READ etc. */
  int (*init)(rs_backend *b);                /* -errno */
  void (*destroy)(rs_backend *b);
  int (*submit)(rs_backend *b, rs_op *op);   /* -errno; may only queue */
  int (*cancel)(rs_backend *b, rs_op *op);   /* -errno */
  /* Flushes queued submissions and waits up to timeout_ns (< 0: forever,
   * 0: poll). Completions are delivered through rs_op_complete. The GVL is
   * released only around the blocking system call. Returns -errno. */
  int (*wait)(rs_backend *b, int64_t timeout_ns);
  void (*flush)(rs_backend *b);              /* push queued SQEs now */
  void (*wakeup)(rs_backend *b);             /* any thread, async-signal-safe */
  /* Provided buffers for multishot receive; NULL where unsupported. Set up
   * lazily (-errno when the kernel refuses); a buffer id from a completion
   * names its memory until it is recycled. */
  int (*bufring_setup)(rs_backend *b);
  char *(*bufring_buf)(rs_backend *b, unsigned bid);
  void (*bufring_recycle)(rs_backend *b, unsigned bid);
} rs_backend_ops;

/* Completions of a multishot op waiting for its fiber. It lives in a pool
 * block owned by the op, so a completion arriving after the fiber is gone
 * still has somewhere to go; the op's release recycles their buffers. */
#define RS_MSQ_CAP 512
#define RS_MSQ_HOLD 16 /* buffers one multishot op may hold before it is paused */
typedef struct rs_msq {
  int res[RS_MSQ_CAP];
  uint32_t flags[RS_MSQ_CAP];
  unsigned head, len;
} rs_msq;

void rs_op_multishot(rs_op *op, int result, uint32_t cqe_flags);
/* Parks until op has news (op->done), then clears it. */
void rs_op_park_news(rs_sched *s, rs_op *op);

struct rs_backend {
  const rs_backend_ops *ops;
  rs_sched *sched;
  int wake_fd;          /* eventfd another thread writes to wake us */
  void *impl;           /* backend-private state */
  int probe_flags;      /* RS_FEAT_* found at run time */
};

#define RS_FEAT_SUBMIT_WAIT_TIMEOUT 0x1
#define RS_FEAT_IOWQ_MAX_WORKERS 0x2
#define RS_FEAT_SPLICE 0x4
#define RS_FEAT_TEE 0x8
#define RS_FEAT_BUF_RING 0x20

extern const rs_backend_ops rs_backend_uring_ops;
extern const rs_backend_ops rs_backend_epoll_ops;

/* Called by a backend for every completion (GVL held). */
void rs_op_complete(rs_op *op, int result, uint32_t cqe_flags);
/* Called by a backend when a completion is only a kernel reference drop
 * (a linked timeout's own CQE, a cancel request's CQE). */
void rs_op_kernel_done(rs_op *op);

uint64_t rs_now_ns(void);

/* ---- scheduler (scheduler.c) --------------------------------------------- */

struct rs_sched {
  rs_backend backend;
  rs_op_pool pool;
  rs_buf_pool bufs;
  rs_op *ready_head, *ready_tail; /* runnable fibers, FIFO */
  VALUE self;
  VALUE loop_fiber;     /* the blocking fiber that runs the event loop */
  VALUE running;        /* the fiber we last switched into */
  VALUE resuming;       /* the fiber the loop is switching into right now */
  /* fiber => rs_op* while parked in block/kernel_sleep. Every access holds
   * the GVL, so `unblock` from another thread may touch it and the ready
   * list directly; it then wakes the owner through the backend's eventfd. */
  st_table *block_ops;
  /* Completions from worker threads (work.c), handed over under a lock. */
  pthread_mutex_t remote_lock;
  rs_op *remote_head;
  rs_work_pool *work;
  /* The fibers started by us and not yet finished, keyed by address (they
   * are marked, so never moved); their count is how many are live. Not a
   * Hash: hashing a Fiber gives it an object id, a table insertion each. */
  st_table *fibers;
  size_t inflight;      /* ops with kernel_refs > 0 */
  pid_t pid;            /* owner process, to spot a forked child */
  VALUE thread;
  /* One bit per fd: its last RWF_NOWAIT try said EAGAIN (io_ops.c). */
  uint64_t *again_bits;
  size_t again_words;
  /* Fibers unblocked while they were not blocked: their next `block`
   * returns at once (a wake-up may come before the wait). Keyed by fiber. */
  st_table *unblocked;
  bool closing, closed;
  bool in_run;          /* the loop is running (run or close) */
};

rs_sched *rs_sched_get(VALUE self);
/* A Fiber::Scheduler duration (seconds, Numeric) in ns; ArgumentError if negative. */
int64_t rs_duration_ns(VALUE d);
/* The IO hooks of Ringspun::Scheduler (sched_io.c). */
void rs_init_sched_io(VALUE cScheduler);
/* The scheduler for the current fiber when it is a Ringspun scheduler whose
 * fiber may park (non-blocking fiber, same process); NULL otherwise. */
rs_sched *rs_sched_current(void);
rs_op *rs_op_new(rs_sched *s, int kind);
/* Submits op, parks the current fiber until it completes, returns
 * op->result (or -errno from submission). On interruption cancels it (and
 * waits for the kernel when `keep` is set), releases it and re-raises. The
 * op is released before returning. */
int rs_op_await(rs_sched *s, rs_op *op);
/* The two halves of rs_op_await, for an op kept in flight while the fiber
 * works: submit (and push to the kernel now), later wait for it. */
int rs_op_start(rs_sched *s, rs_op *op);
int rs_op_wait(rs_sched *s, rs_op *op);
/* Parks the current fiber until the loop resumes it (one of its ops is
 * done, or a spurious wakeup: callers re-check). Returns the rb_protect
 * state of an exception raised into it meanwhile. */
int rs_sched_park(rs_sched *s);
/* rs_op_wait that, when interrupted, still waits for the kernel and then
 * returns the rb_protect state with *result set, leaving op to the caller
 * (to release, then re-raise). */
int rs_op_wait_salvage(rs_sched *s, rs_op *op, int *result);
void rs_op_release(rs_sched *s, rs_op *op);
/* Cancels op and parks until its last completion, keeping any exception
 * being raised; the op stays the caller's to release. */
void rs_op_drain(rs_sched *s, rs_op *op);
void rs_op_cancel(rs_sched *s, rs_op *op);
void rs_sched_ready_push(rs_sched *s, rs_op *op);
/* From a worker thread: op is done; the loop completes it. */
void rs_sched_remote_complete(rs_sched *s, rs_op *op);
/* Runs fn(arg) on a worker thread while the fiber parks; returns its
 * result. Without a Ringspun scheduler, runs it here with the GVL
 * released. An interrupted fiber still waits for the worker to finish:
 * the job's memory is the caller's. */
int rs_run_work(int (*fn)(void *), void *arg);

/* ---- worker pool (work.c) ------------------------------------------------ */

int rs_work_submit(rs_sched *s, rs_op *op);   /* -errno */
void rs_work_pool_stop(rs_sched *s);          /* joins the workers */
void rs_work_pool_forget(rs_sched *s);        /* in a forked child */

/* ---- IO operations (io_ops.c) --------------------------------------------- */

int rs_io_fd(VALUE io);    /* raises IOError on a closed IO, TypeError else */
/* The one keyword argument `name` of opts (a Hash or nil), Qundef when
 * absent; any other key raises ArgumentError. */
VALUE rs_kwarg(VALUE opts, const char *name);
enum { RS_SIDE_READ = 0, RS_SIDE_WRITE = 1 };
/* The fd to read from (or write to) for a primitive's argument: an IO, a
 * Ringspun::Pipe (its matching end) or an Integer fd. An object that wraps
 * another IO (OpenSSL::SSL::SSLSocket) raises ArgumentError: splicing under
 * it would bypass TLS. */
int rs_io_end_fd(VALUE obj, int side);
/* The Ruby IO behind a primitive's argument: the IO itself, a Pipe's end,
 * a Delegator's IO; Qnil for an Integer fd, Qundef for anything else. */
VALUE rs_io_end_io(VALUE obj, int side);
/* Up to max (at most RS_TAKE_MAX) bytes Ruby already read into io's
 * buffer, taken out of it as a binary String; nil when there are none or
 * io is not an IO. A primitive moves them before it reads the fd itself. */
VALUE rs_io_take_buffered(VALUE io, long max);
/* Ruby holds bytes it read ahead for io (an IO; false for anything else). */
bool rs_io_has_buffered(VALUE io);
#define RS_TAKE_MAX 65536L /* the most one rs_io_take_buffered returns */
/* Puts bytes back in front of io's read buffer (before what it holds).
 * Raises IOError when Ruby's buffer cannot take them all. */
void rs_io_unread(VALUE io, const char *data, long n);
/* data followed by acc (a String, or nil for none), as a new String: the
 * pieces of one give-back gathered front to back, so one rs_io_unread puts
 * them all back (each ungetbyte may fix the buffer's capacity). */
VALUE rs_bytes_prepend(VALUE acc, const char *data, long n);
/* Wait for readiness; returns revents (> 0), 0 on timeout, -errno. */
int rs_io_wait_fd(int fd, short events, int64_t timeout_ns);
struct pollfd;
/* Waits until one of n fds has one of its events, or timeout_ns passes
 * (< 0: forever); the caller polls for the details. Returns 1 when one is
 * ready, 0 on timeout, -errno. */
int rs_io_wait_any(struct pollfd *pfds, long n, int64_t timeout_ns);
/* One read/write of up to len bytes, waiting for readiness as needed.
 * `keep` is the Ruby object owning buf (or Qnil when buf is C memory): the
 * kernel may write into it until the operation's completion arrives.
 * Returns bytes moved (0: end of input) or -errno. */
ssize_t rs_io_read_keep(int fd, void *buf, size_t len, VALUE keep);
/* One attempt that does not wait for readiness: bytes moved or -errno,
 * -EAGAIN when the fd is not ready (the caller waits as it likes). */
ssize_t rs_io_once(int kind, int fd, void *buf, size_t len, VALUE keep);
ssize_t rs_io_write_keep(int fd, const void *buf, size_t len, VALUE keep);
/* pread(2)/pwrite(2) at file offset off (kind RS_OP_READ or RS_OP_WRITE),
 * through the ring where it can be: bytes moved or -errno. */
ssize_t rs_io_prw_keep(int kind, int fd, void *buf, size_t len, int64_t off, VALUE keep);

/* A read or write that may be kept in flight while the fiber works (the
 * native strategy: an SQE submitted now); elsewhere it runs at finish.
 * The buffer lies in a pool block. While the kernel may write the block
 * the op owns it: if the fiber is interrupted or gives up, the block goes
 * back to its pool only when the completion arrives. */
typedef struct rs_pending {
  rs_sched *s;       /* native scheduler, or NULL */
  rs_op *op;         /* in flight, or NULL */
  int kind;          /* RS_OP_READ or RS_OP_WRITE */
  int fd;
  char *buf;
  size_t len;
  void *block;       /* the pool block holding buf */
  rs_buf_pool *pool;
  bool active;
  bool op_owns_block;
  ssize_t salvaged;  /* a read that completed as its wait was interrupted */
} rs_pending;

void rs_pending_start(rs_pending *p, int kind, int fd, void *buf, size_t len);
/* Reads: bytes read (0 at end of input). Writes: writes all of len.
 * Returns -errno on failure. */
ssize_t rs_pending_finish(rs_pending *p);
/* The pool for the current fiber: its scheduler's, or the thread's. */
rs_buf_pool *rs_current_pool(void);
/* Cancels an operation still in flight and waits for its completion, so
 * nothing is left pending; returns its result (a read may have taken
 * bytes: they are in p->buf). Never raises. */
ssize_t rs_pending_drain(rs_pending *p);

/* ---- splice helpers (splice.c) ------------------------------------------ */

typedef struct rs_end {
  int fd;
  bool is_pipe;
  bool is_file;     /* a regular file */
  bool is_socket;
  bool nonblock;    /* O_NONBLOCK is set */
  int64_t size;     /* st_size, when the stat was taken */
} rs_end;

/* A primitive's src (RS_SIDE_READ) or dest, checked: open, the right
 * access mode; raises Errno naming `call` and the side otherwise. */
rs_end rs_end_of(VALUE obj, int side, const char *call);
/* A private pipe, O_CLOEXEC|O_NONBLOCK, sized toward `want`. */
int rs_pipe_open(int fds[2], size_t want, size_t *cap);
/* splice(2) that waits for readiness; returns bytes (0: end of input). */
long rs_splice_some(int in, int out, size_t len, const char *call);
/* One sendfile(2) from in's file position that waits for out; returns
 * bytes (0: end of file). Raises on failure, except that with `refusable`
 * EINVAL/ENOSYS (no sendfile between these two) come back as -errno. */
long rs_sendfile_some(int out, int in, size_t len, const char *call, bool refusable);
/* Splices exactly len bytes (the caller knows they are there). */
void rs_splice_exactly(int in, int out, size_t len, const char *call);
/* Writes the bytes Ruby already buffered for src (at most max) to out;
 * returns how many. */
int64_t rs_move_buffered(VALUE src, int out, size_t max, const char *call);
/* Writes all of buf with write(2)/send(2), waiting for readiness as needed;
 * `more` hints that more data follows (MSG_MORE on sockets). */
void rs_write_all_direct(int fd, const void *buf, size_t len, bool more, const char *call);

/* ---- chunk reader with read-ahead (reader.c) ------------------------------ */

typedef struct rs_reader {
  int fd;
  size_t chunk;       /* bytes per read, at most RS_BLOCK_SIZE */
  rs_buf_pool *pool;
  void *block[2];
  int cur;
  rs_pending pend;
  bool eof;
  VALUE io;            /* the Ruby IO read from, for bytes it buffered; or Qnil */
  /* multishot receive (sockets under io_uring, when the kernel has it) */
  rs_sched *ms;
  rs_op *ms_op;
  const char *ms_cur;  /* unconsumed part of the current provided buffer */
  size_t ms_len;
  int ms_bid;          /* its buffer id, -1 when none */
} rs_reader;

void rs_reader_init(rs_reader *r, int fd, size_t chunk);
/* Bytes the Ruby IO `io` already buffered come first. */
void rs_reader_set_io(rs_reader *r, VALUE io);
/* Lets the reader use multishot receive when fd is a socket and the
 * scheduler's backend supports it. */
void rs_reader_allow_multishot(rs_reader *r);
/* The next chunk: bytes (0 at end of input) or -errno; *data points into
 * a block that stays valid until the call after next. */
ssize_t rs_reader_next(rs_reader *r, const char **data);
/* Stops reading. With `io`, bytes a read-ahead already took are pushed
 * back into io's read buffer (IO#ungetbyte) so nothing is lost. */
void rs_reader_cleanup(rs_reader *r, VALUE io);
/* rs_reader_cleanup that gathers the bytes to give back in front of *back
 * (see rs_bytes_prepend) instead of giving them back itself. */
void rs_reader_cleanup_into(rs_reader *r, VALUE *back);

/* ---- errors (errors.c) ------------------------------------------------------ */

NORETURN(void rs_raise_errno(int err, const char *where));
/* Errno::* naming the call and the side: "splice: src". */
NORETURN(void rs_raise_side(const char *call, int err, const char *side));

void rs_init_errors(VALUE mRingspun);
void rs_init_scheduler(VALUE mRingspun);
void rs_init_io_ops(VALUE mRingspun);
void rs_init_splice(VALUE mRingspun);
void rs_init_zstream(VALUE mRingspun);
void rs_init_loops(VALUE mRingspun);
void rs_init_msgpack(VALUE mRingspun);
void rs_init_http1(VALUE mRingspun);

#endif
