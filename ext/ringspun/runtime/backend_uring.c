/* io_uring backend: implements the rs_backend_ops seam and nothing else;
 * the only file that includes liburing.
 *
 * SQEs are only prepared here; they reach the kernel together with the wait,
 * in one io_uring_submit_and_wait_timeout, when the scheduler has no runnable
 * fiber. A full submission queue is flushed and the SQE retried. */
#include "runtime/op.h"
#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <ruby/thread.h>

#define RS_URING_ENTRIES 4096

/* user_data tags: op pointers are 8-byte aligned, the low bits say which
 * completion of the op this is. */
#define UD_LINK_TIMEOUT 1ULL
#define UD_IGNORE 2ULL /* cancel requests: their CQE carries nothing */
#define UD_WAKE 3ULL   /* the poll on our eventfd */
#define UD_TAG_MASK 7ULL

/* The buffer ring shared by every multishot receive on this ring:
 * bounded, so a slow consumer makes the kernel stop (ENOBUFS), not queue. */
#define RS_BGID 7
#define RS_BR_ENTRIES 128
#define RS_BR_BUF_SIZE 32768

typedef struct uring_state {
  struct io_uring ring;
  bool wake_armed;
  struct io_uring_buf_ring *br;
  char *br_bufs;
  int br_error; /* setup refused: -errno */
} uring_state;

static uring_state *U(rs_backend *b) { return (uring_state *)b->impl; }

/* Returns an SQE, flushing the queue to the kernel when it is full. */
static struct io_uring_sqe *get_sqe(rs_backend *b, unsigned needed) {
  struct io_uring *ring = &U(b)->ring;
  for (int tries = 0; tries < 64; tries++) {
    if (io_uring_sq_space_left(ring) >= needed) return io_uring_get_sqe(ring);
    int ret = io_uring_submit(ring);
    if (ret == -EBUSY || ret == -EAGAIN) {
      /* The completion queue is backed up: reap before pushing more. */
      b->ops->wait(b, 0);
    }
  }
  return NULL;
}

static void probe_features(rs_backend *b) {
  struct io_uring *ring = &U(b)->ring;
  struct io_uring_probe *probe = io_uring_get_probe_ring(ring);
  if (probe) {
    if (io_uring_opcode_supported(probe, IORING_OP_SPLICE)) b->probe_flags |= RS_FEAT_SPLICE;
    if (io_uring_opcode_supported(probe, IORING_OP_TEE)) b->probe_flags |= RS_FEAT_TEE;
    io_uring_free_probe(probe);
  }
  if (ring->features & IORING_FEAT_EXT_ARG) b->probe_flags |= RS_FEAT_SUBMIT_WAIT_TIMEOUT;
  /* Splice and tee always run in io-wq workers; bound them so a thousand
   * waiting transfers never cost a thousand kernel threads (5.15+). */
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  unsigned int workers[2] = {(unsigned)(ncpu > 0 ? ncpu * 2 : 4), 8};
  if (io_uring_register_iowq_max_workers(ring, workers) == 0) b->probe_flags |= RS_FEAT_IOWQ_MAX_WORKERS;
}

static int setup_ring(struct io_uring *ring) {
  /* Newer setup flags make the ring cheaper; each is refused with EINVAL by
   * kernels that predate it, so step down until one is accepted. */
  /* COOP_TASKRUN (5.19) defers completion work to our next kernel entry;
   * TASKRUN_FLAG makes the ring say when such work waits, so liburing
   * enters the kernel for it even when there is nothing to submit. */
  static const unsigned flag_sets[] = {
      IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
      IORING_SETUP_SUBMIT_ALL,
      0,
  };
  int ret = -EINVAL;
  for (size_t i = 0; i < sizeof(flag_sets) / sizeof(flag_sets[0]); i++) {
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = flag_sets[i];
    ret = io_uring_queue_init_params(RS_URING_ENTRIES, ring, &p);
    if (ret != -EINVAL) return ret;
  }
  return ret;
}

static int uring_init(rs_backend *b) {
  uring_state *u = calloc(1, sizeof(*u));
  if (!u) return -ENOMEM;
  int ret = setup_ring(&u->ring);
  if (ret < 0) {
    free(u);
    return ret;
  }
  b->impl = u;
  b->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (b->wake_fd < 0) {
    ret = -errno;
    io_uring_queue_exit(&u->ring);
    free(u);
    b->impl = NULL;
    return ret;
  }
  probe_features(b);
  return 0;
}

static void uring_destroy(rs_backend *b) {
  uring_state *u = U(b);
  if (!u) return;
  io_uring_queue_exit(&u->ring);
  free(u->br);
  free(u->br_bufs);
  if (b->wake_fd >= 0) close(b->wake_fd);
  b->wake_fd = -1;
  free(u);
  b->impl = NULL;
}

static void ts_from_ns(struct __kernel_timespec *ts, int64_t ns) {
  ts->tv_sec = ns / 1000000000LL;
  ts->tv_nsec = ns % 1000000000LL;
}

static int prep_native(struct io_uring_sqe *sqe, rs_op *op) {
  switch (op->kind) {
  case RS_OP_READ:
    io_uring_prep_read(sqe, op->fd, op->buf, (unsigned)op->len, (uint64_t)op->off);
    return 0;
  case RS_OP_WRITE:
    io_uring_prep_write(sqe, op->fd, op->buf, (unsigned)op->len, (uint64_t)op->off);
    return 0;
  case RS_OP_RECV_MULTI:
    io_uring_prep_recv_multishot(sqe, op->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = RS_BGID;
    return 0;
  default:
    return -EINVAL;
  }
}

static int uring_submit(rs_backend *b, rs_op *op) {
  bool linked = op->kind == RS_OP_POLL && op->timeout_ns >= 0;
  struct io_uring_sqe *sqe = get_sqe(b, linked ? 2 : 1);
  if (!sqe) return -EBUSY;
  switch (op->kind) {
  case RS_OP_POLL:
    io_uring_prep_poll_add(sqe, op->fd, op->events);
    break;
  case RS_OP_TIMER:
    ts_from_ns(&op->own.uring.ts, op->timeout_ns);
    io_uring_prep_timeout(sqe, &op->own.uring.ts, 0, 0);
    break;
  default:
    if (prep_native(sqe, op) < 0) return -EINVAL;
  }
  io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)op);
  op->kernel_refs = 1;
  if (linked) {
    sqe->flags |= IOSQE_IO_LINK;
    struct io_uring_sqe *t = io_uring_get_sqe(&U(b)->ring);
    ts_from_ns(&op->own.uring.ts, op->timeout_ns);
    io_uring_prep_link_timeout(t, &op->own.uring.ts, 0);
    io_uring_sqe_set_data64(t, (uint64_t)(uintptr_t)op | UD_LINK_TIMEOUT);
    op->kernel_refs = 2;
  }
  return 0;
}

static int uring_cancel(rs_backend *b, rs_op *op) {
  struct io_uring_sqe *sqe = get_sqe(b, 1);
  if (!sqe) return -EBUSY;
  if (op->kind == RS_OP_TIMER)
    io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)op, 0);
  else
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)op, 0);
  io_uring_sqe_set_data64(sqe, UD_IGNORE);
  return 0;
}

static void arm_wake(rs_backend *b) {
  uring_state *u = U(b);
  if (u->wake_armed) return;
  struct io_uring_sqe *sqe = get_sqe(b, 1);
  if (!sqe) return;
  io_uring_prep_poll_add(sqe, b->wake_fd, POLLIN);
  io_uring_sqe_set_data64(sqe, UD_WAKE);
  u->wake_armed = true;
}

static void dispatch(rs_backend *b, struct io_uring_cqe *cqe) {
  uint64_t ud = cqe->user_data;
  uint64_t tag = ud & UD_TAG_MASK;
  rs_op *op = (rs_op *)(uintptr_t)(ud & ~UD_TAG_MASK);
  if (ud == UD_WAKE) {
    uint64_t v;
    while (read(b->wake_fd, &v, sizeof(v)) > 0) {
    }
    U(b)->wake_armed = false;
    return;
  }
  if (tag == UD_IGNORE || !op) return;
  if (tag == UD_LINK_TIMEOUT) {
    b->sink->unref(op);
    return;
  }
  rs_cqe c = {.result = cqe->res, .bid = -1, .more = (cqe->flags & IORING_CQE_F_MORE) != 0};
  if (cqe->flags & IORING_CQE_F_BUFFER) c.bid = (int)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
  /* A poll ended by its linked timeout reports -ECANCELED; say timeout. */
  if (c.result == -ECANCELED && op->kind == RS_OP_POLL && op->timeout_ns >= 0 && !op->cancelling) c.result = -ETIME;
  b->sink->complete(op, c);
}

static unsigned reap(rs_backend *b) {
  struct io_uring *ring = &U(b)->ring;
  struct io_uring_cqe *cqe;
  unsigned head, n = 0;
  io_uring_for_each_cqe(ring, head, cqe) {
    dispatch(b, cqe);
    n++;
  }
  io_uring_cq_advance(ring, n);
  return n;
}

typedef struct wait_args {
  struct io_uring *ring;
  struct __kernel_timespec ts;
  bool has_ts;
  int ret;
} wait_args;

static void *wait_nogvl(void *p) {
  wait_args *a = p;
  struct io_uring_cqe *cqe = NULL;
  a->ret = io_uring_submit_and_wait_timeout(a->ring, &cqe, 1, a->has_ts ? &a->ts : NULL, NULL);
  return NULL;
}

static void ubf_wakeup(void *p) {
  rs_backend *b = p;
  b->ops->wakeup(b);
}

static int uring_wait(rs_backend *b, int64_t timeout_ns) {
  struct io_uring *ring = &U(b)->ring;
  if (timeout_ns != 0) arm_wake(b);
  if (timeout_ns == 0 || io_uring_cq_ready(ring) > 0) {
    int ret = io_uring_submit(ring);
    reap(b);
    return ret < 0 && ret != -EBUSY && ret != -EAGAIN ? ret : 0;
  }
  wait_args a = {.ring = ring, .has_ts = timeout_ns > 0, .ret = 0};
  if (timeout_ns > 0) ts_from_ns(&a.ts, timeout_ns);
  /* RB_NOGVL_UBF_ASYNC_SAFE: our unblocking function only writes an eventfd.
     * Without it Ruby 3.1 starts (and then kills) a helper thread around
     * every wait to run a custom unblocking function: measured 9x slower. */
    rb_nogvl(wait_nogvl, &a, ubf_wakeup, b, RB_NOGVL_UBF_ASYNC_SAFE);
  reap(b);
  if (a.ret == -ETIME || a.ret == -EINTR || a.ret == -EBUSY || a.ret == -EAGAIN) return 0;
  return a.ret < 0 ? a.ret : 0;
}

static void uring_flush(rs_backend *b) { io_uring_submit(&U(b)->ring); }

static int uring_bufring_setup(rs_backend *b) {
  uring_state *u = U(b);
  if (u->br) return 0;
  if (u->br_error) return u->br_error;
  void *ring = NULL, *bufs = NULL;
  if (posix_memalign(&ring, 4096, RS_BR_ENTRIES * sizeof(struct io_uring_buf)) ||
      posix_memalign(&bufs, 4096, (size_t)RS_BR_ENTRIES * RS_BR_BUF_SIZE)) {
    free(ring);
    return -ENOMEM;
  }
  memset(ring, 0, RS_BR_ENTRIES * sizeof(struct io_uring_buf));
  struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)ring, .ring_entries = RS_BR_ENTRIES, .bgid = RS_BGID};
  /* Provided buffer rings arrived in 5.19, multishot receive in 6.0. */
  int ret = io_uring_register_buf_ring(&u->ring, &reg, 0);
  if (ret < 0) {
    free(ring);
    free(bufs);
    u->br_error = ret;
    return ret;
  }
  u->br = ring;
  u->br_bufs = bufs;
  b->probe_flags |= RS_FEAT_BUF_RING;
  io_uring_buf_ring_init(u->br);
  int mask = io_uring_buf_ring_mask(RS_BR_ENTRIES);
  for (unsigned i = 0; i < RS_BR_ENTRIES; i++)
    io_uring_buf_ring_add(u->br, u->br_bufs + (size_t)i * RS_BR_BUF_SIZE, RS_BR_BUF_SIZE, (unsigned short)i, mask, (int)i);
  io_uring_buf_ring_advance(u->br, RS_BR_ENTRIES);
  return 0;
}

static char *uring_bufring_buf(rs_backend *b, unsigned bid) { return U(b)->br_bufs + (size_t)bid * RS_BR_BUF_SIZE; }

static void uring_bufring_recycle(rs_backend *b, unsigned bid) {
  uring_state *u = U(b);
  io_uring_buf_ring_add(u->br, uring_bufring_buf(b, bid), RS_BR_BUF_SIZE, (unsigned short)bid,
                        io_uring_buf_ring_mask(RS_BR_ENTRIES), 0);
  io_uring_buf_ring_advance(u->br, 1);
}

static void uring_wakeup(rs_backend *b) {
  uint64_t one = 1;
  if (b->wake_fd >= 0) {
    ssize_t r = write(b->wake_fd, &one, sizeof(one));
    (void)r; /* EAGAIN means a wakeup is already pending */
  }
}

const rs_backend_ops rs_backend_uring_ops = {
    .name = "io_uring",
    .native = true,
    .init = uring_init,
    .destroy = uring_destroy,
    .submit = uring_submit,
    .cancel = uring_cancel,
    .wait = uring_wait,
    .flush = uring_flush,
    .wakeup = uring_wakeup,
    .bufring_setup = uring_bufring_setup,
    .bufring_buf = uring_bufring_buf,
    .bufring_recycle = uring_bufring_recycle,
};
