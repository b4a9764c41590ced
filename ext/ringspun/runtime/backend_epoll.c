/* epoll backend: the fallback where io_uring cannot be set up. It takes
 * readiness waits (RS_OP_POLL) and timers (RS_OP_TIMER) only; the IO
 * itself is done by the IO layer (io/rw.c) with non-blocking system calls.
 * Timers live in a heap; several fibers may wait on one fd, so each fd
 * keeps its list of waiters and is armed with the union of their events,
 * one-shot. */
#include "runtime/op.h"
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <ruby/thread.h>

#define RS_EPOLL_BATCH 256

typedef struct fd_entry {
  rs_op *waiters;      /* doubly linked through fd_next/fd_prev */
  bool in_epoll;       /* we believe the fd is registered */
} fd_entry;

typedef struct epoll_state {
  int epfd;
  fd_entry *fds;
  size_t nfds;
  rs_timer_heap timers;
  struct epoll_event events[RS_EPOLL_BATCH];
} epoll_state;

static epoll_state *E(rs_backend *b) { return (epoll_state *)b->impl; }

static int epoll_init(rs_backend *b) {
  epoll_state *e = calloc(1, sizeof(*e));
  if (!e) return -ENOMEM;
  e->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (e->epfd < 0) {
    int err = -errno;
    free(e);
    return err;
  }
  b->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (b->wake_fd < 0) {
    int err = -errno;
    close(e->epfd);
    free(e);
    return err;
  }
  /* data.u64 holds fd + 1 so that 0 can stand for the wake eventfd. */
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
  if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, b->wake_fd, &ev) < 0) {
    int err = -errno;
    close(b->wake_fd);
    close(e->epfd);
    free(e);
    return err;
  }
  b->impl = e;
  return 0;
}

static void epoll_destroy(rs_backend *b) {
  epoll_state *e = E(b);
  if (!e) return;
  close(e->epfd);
  if (b->wake_fd >= 0) close(b->wake_fd);
  b->wake_fd = -1;
  rs_heap_free(&e->timers);
  free(e->fds);
  free(e);
  b->impl = NULL;
}

static fd_entry *entry_for(epoll_state *e, int fd) {
  if ((size_t)fd >= e->nfds) {
    size_t n = e->nfds ? e->nfds : 64;
    while (n <= (size_t)fd) n *= 2;
    fd_entry *fds = realloc(e->fds, n * sizeof(*fds));
    if (!fds) return NULL;
    memset(fds + e->nfds, 0, (n - e->nfds) * sizeof(*fds));
    e->fds = fds;
    e->nfds = n;
  }
  return &e->fds[fd];
}

static uint32_t wanted_events(fd_entry *ent) {
  uint32_t ev = 0;
  for (rs_op *op = ent->waiters; op; op = op->own.epoll.fd_next) ev |= op->events;
  return ev;
}

/* (Re)arms fd with the union of its waiters' events. The table may be stale
 * after the user closed and reused an fd, so ENOENT/EEXIST swap the call. */
static int arm_fd(epoll_state *e, int fd, fd_entry *ent) {
  struct epoll_event ev = {.events = wanted_events(ent) | EPOLLONESHOT, .data.u64 = (uint64_t)fd + 1};
  int first = ent->in_epoll ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
  int ret = epoll_ctl(e->epfd, first, fd, &ev);
  if (ret < 0 && (errno == ENOENT || errno == EEXIST))
    ret = epoll_ctl(e->epfd, first == EPOLL_CTL_MOD ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev);
  if (ret < 0) return -errno;
  ent->in_epoll = true;
  return 0;
}

static void unlink_waiter(epoll_state *e, rs_op *op) {
  fd_entry *ent = &e->fds[op->fd];
  if (op->own.epoll.fd_prev) op->own.epoll.fd_prev->own.epoll.fd_next = op->own.epoll.fd_next;
  else ent->waiters = op->own.epoll.fd_next;
  if (op->own.epoll.fd_next) op->own.epoll.fd_next->own.epoll.fd_prev = op->own.epoll.fd_prev;
  op->own.epoll.fd_next = op->own.epoll.fd_prev = NULL;
}

static rs_op *op_of_timer(rs_timer *t) { return RS_CONTAINER_OF(t, rs_op, own.epoll.timer); }

/* A completion of ours goes up through the sink. */
static void complete(rs_backend *b, rs_op *op, int result) {
  rs_cqe c = {.result = result, .bid = -1, .more = false};
  b->sink->complete(op, c);
}

/* Takes op out of every structure of ours; the op is then ours to finish. */
static void detach(epoll_state *e, rs_op *op) {
  if (!op->in_backend) return;
  if (op->kind == RS_OP_POLL) unlink_waiter(e, op);
  if (op->own.epoll.timer.index != RS_TIMER_NONE) rs_heap_remove(&e->timers, &op->own.epoll.timer);
  op->in_backend = 0;
}

static int epoll_submit(rs_backend *b, rs_op *op) {
  epoll_state *e = E(b);
  if (op->kind != RS_OP_POLL && op->kind != RS_OP_TIMER) return -EOPNOTSUPP;
  op->own.epoll.timer.index = RS_TIMER_NONE;
  if (op->timeout_ns >= 0) {
    op->own.epoll.timer.deadline = rs_now_ns() + (uint64_t)op->timeout_ns;
    if (rs_heap_push(&e->timers, &op->own.epoll.timer) < 0) return -ENOMEM;
  }
  op->in_backend = 1;
  if (op->kind == RS_OP_TIMER) return 0;
  fd_entry *ent = entry_for(e, op->fd);
  if (!ent) {
    detach(e, op);
    return -ENOMEM;
  }
  op->own.epoll.fd_prev = NULL;
  op->own.epoll.fd_next = ent->waiters;
  if (ent->waiters) ent->waiters->own.epoll.fd_prev = op;
  ent->waiters = op;
  int ret = arm_fd(e, op->fd, ent);
  if (ret == -EPERM) {
    /* Regular files cannot be polled and are always ready. */
    detach(e, op);
    complete(b, op, (int)op->events);
    return 0;
  }
  if (ret < 0) detach(e, op);
  return ret;
}

static int epoll_cancel(rs_backend *b, rs_op *op) {
  if (!op->in_backend) return 0;
  detach(E(b), op);
  complete(b, op, -ECANCELED);
  return 0;
}

static void dispatch_fd(rs_backend *b, int fd, uint32_t revents) {
  epoll_state *e = E(b);
  if ((size_t)fd >= e->nfds) return;
  fd_entry *ent = &e->fds[fd];
  /* ONESHOT disarmed the fd; each matching waiter completes once. */
  rs_op *op = ent->waiters;
  while (op) {
    rs_op *next = op->own.epoll.fd_next;
    uint32_t hit = revents & (op->events | EPOLLERR | EPOLLHUP);
    if (hit) {
      detach(e, op);
      complete(b, op, (int)hit);
    }
    op = next;
  }
  if (ent->waiters) arm_fd(e, fd, ent);
}

static void expire_timers(rs_backend *b) {
  epoll_state *e = E(b);
  uint64_t now = rs_now_ns();
  rs_timer *t;
  while ((t = rs_heap_peek(&e->timers)) && t->deadline <= now) {
    rs_op *op = op_of_timer(t);
    detach(e, op);
    complete(b, op, -ETIME);
  }
}

typedef struct wait_args {
  int epfd;
  struct epoll_event *events;
  int64_t timeout_ns; /* -1: no limit */
  int ret, err;
} wait_args;

#ifdef HAVE_EPOLL_PWAIT2
/* Set the first time the kernel says it lacks epoll_pwait2 (before 5.11).
 * Threads may race on it harmlessly: every writer stores 1. */
static volatile int pwait2_missing;
#endif

/* epoll_wait(2) counts in milliseconds: round up, as waking a millisecond
 * late beats spinning until the deadline. */
static int wait_ms(int64_t timeout_ns) {
  if (timeout_ns < 0) return -1;
  int64_t ms = (timeout_ns + 999999) / 1000000;
  return ms > INT_MAX ? INT_MAX : (int)ms;
}

static void *wait_nogvl(void *p) {
  wait_args *a = p;
#ifdef HAVE_EPOLL_PWAIT2
  /* A 200 us sleep must not take a whole millisecond. */
  if (!pwait2_missing) {
    struct timespec ts = {.tv_sec = a->timeout_ns / 1000000000, .tv_nsec = a->timeout_ns % 1000000000};
    a->ret = epoll_pwait2(a->epfd, a->events, RS_EPOLL_BATCH, a->timeout_ns < 0 ? NULL : &ts, NULL);
    a->err = errno;
    if (a->ret >= 0 || a->err != ENOSYS) return NULL;
    pwait2_missing = 1;
  }
#endif
  a->ret = epoll_wait(a->epfd, a->events, RS_EPOLL_BATCH, wait_ms(a->timeout_ns));
  a->err = errno;
  return NULL;
}

static void ubf_wakeup(void *p) {
  rs_backend *b = p;
  b->ops->wakeup(b);
}

/* The wait's limit: the caller's, or sooner if a timer is due first. */
static int64_t wait_limit_ns(epoll_state *e, int64_t timeout_ns) {
  rs_timer *next = rs_heap_peek(&e->timers);
  if (next) {
    uint64_t now = rs_now_ns();
    int64_t until = next->deadline > now ? (int64_t)(next->deadline - now) : 0;
    if (timeout_ns < 0 || until < timeout_ns) timeout_ns = until;
  }
  return timeout_ns;
}

static int epoll_wait_backend(rs_backend *b, int64_t timeout_ns) {
  epoll_state *e = E(b);
  wait_args a = {.epfd = e->epfd, .events = e->events, .timeout_ns = wait_limit_ns(e, timeout_ns)};
  if (a.timeout_ns == 0)
    wait_nogvl(&a);
  else
    /* RB_NOGVL_UBF_ASYNC_SAFE: our unblocking function only writes an eventfd.
     * Without it Ruby 3.1 starts (and then kills) a helper thread around
     * every wait to run a custom unblocking function: measured 9x slower. */
    rb_nogvl(wait_nogvl, &a, ubf_wakeup, b, RB_NOGVL_UBF_ASYNC_SAFE);
  if (a.ret < 0 && a.err != EINTR) return -a.err;
  for (int i = 0; i < a.ret; i++) {
    uint64_t key = e->events[i].data.u64;
    if (key == 0) {
      uint64_t v;
      while (read(b->wake_fd, &v, sizeof(v)) > 0) {
      }
      continue;
    }
    dispatch_fd(b, (int)(key - 1), e->events[i].events);
  }
  expire_timers(b);
  return 0;
}

static void epoll_wakeup(rs_backend *b) {
  uint64_t one = 1;
  if (b->wake_fd >= 0) {
    ssize_t r = write(b->wake_fd, &one, sizeof(one));
    (void)r; /* EAGAIN means a wakeup is already pending */
  }
}

const rs_backend_ops rs_backend_epoll_ops = {
    .name = "epoll",
    .native = false,
    .init = epoll_init,
    .destroy = epoll_destroy,
    .submit = epoll_submit,
    .cancel = epoll_cancel,
    .wait = epoll_wait_backend,
    .flush = NULL,
    .wakeup = epoll_wakeup,
    .bufring_setup = NULL,
    .bufring_buf = NULL,
    .bufring_recycle = NULL,
};
