/* The backend seam (ARCHITECTURE.md, layer 1): one backend per scheduler,
 * io_uring (backend_uring.c) or epoll (backend_epoll.c), behind
 * rs_backend_ops. A backend reads what an op asks for and hands each
 * completion up through its sink, decoded: nothing above this seam reads
 * a CQE or includes liburing. */
#ifndef RINGSPUN_BACKEND_H
#define RINGSPUN_BACKEND_H 1
#include "runtime/common.h"
#include "runtime/timer_heap.h"
#include <linux/time_types.h>

typedef struct rs_op rs_op;
typedef struct rs_backend rs_backend;

/* A completion as a backend decodes it. */
typedef struct rs_cqe {
  int result; /* >= 0, or -errno */
  int bid;    /* the provided buffer holding the bytes (multishot), -1 for none */
  bool more;  /* a multishot op: more completions of it follow */
} rs_cqe;

/* Where a backend delivers completions. The op layer sets it when it
 * starts a backend, so a backend calls nothing above it by name. */
typedef struct rs_backend_sink {
  /* A result of op; it drops the kernel's reference unless c.more. */
  void (*complete)(rs_op *op, rs_cqe c);
  /* A completion that carries no result and only drops a reference (a
   * linked timeout's own, a cancel request's). */
  void (*unref)(rs_op *op);
} rs_backend_sink;

typedef struct rs_backend_ops {
  const char *name;
  bool native;                               /* takes RS_OP_READ etc. */
  int (*init)(rs_backend *b);                /* -errno */
  void (*destroy)(rs_backend *b);
  /* -errno; may only queue. Sets op->kernel_refs to the completions the
   * kernel will deliver, or op->in_backend while the backend holds op. */
  int (*submit)(rs_backend *b, rs_op *op);
  int (*cancel)(rs_backend *b, rs_op *op);   /* -errno */
  /* Flushes queued submissions and waits up to timeout_ns (< 0: forever,
   * 0: poll). Completions go to the sink. The GVL is released only around
   * the blocking system call. Returns -errno. */
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

struct rs_backend {
  const rs_backend_ops *ops;
  const rs_backend_sink *sink;
  int wake_fd;          /* eventfd another thread writes to wake us */
  void *impl;           /* backend-private state */
  int probe_flags;      /* RS_FEAT_* found at run time */
};

#define RS_FEAT_SUBMIT_WAIT_TIMEOUT 0x1
#define RS_FEAT_IOWQ_MAX_WORKERS 0x2
#define RS_FEAT_SPLICE 0x4
#define RS_FEAT_TEE 0x8
#define RS_FEAT_BUF_RING 0x20

/* Each backend's bookkeeping inside an op. A scheduler has one backend,
 * so they share the op's space (rs_op.own). */
typedef struct rs_epoll_part {
  rs_timer timer;            /* in the timer heap while a deadline runs */
  rs_op *fd_next, *fd_prev;  /* the other waiters on the same fd */
} rs_epoll_part;

typedef struct rs_uring_part {
  struct __kernel_timespec ts; /* the kernel reads a timeout from here */
} rs_uring_part;

extern const rs_backend_ops rs_backend_uring_ops;
extern const rs_backend_ops rs_backend_epoll_ops;
#endif
