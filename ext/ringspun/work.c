/* CPU work off the event loop: a small pool of C threads, one pool per
 * scheduler, started on first use and joined when the scheduler closes.
 *
 * A fiber that deflates parks on an RS_OP_WORK op while a worker runs the
 * job; the loop meanwhile runs other fibers, so a scheduler compresses on
 * every core, not one. A worker never touches a Ruby object: it calls the
 * job's C function and hands the op back through rs_sched_remote_complete,
 * which wakes the loop through the backend's eventfd. */
#include "ringspun.h"
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#define RS_WORKERS_MAX 8

struct rs_work_pool {
  rs_sched *sched;
  pthread_t threads[RS_WORKERS_MAX];
  int nthreads;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  rs_op *head, *tail; /* jobs waiting for a worker, linked through next */
  bool stop;
};

static void *worker_main(void *p) {
  rs_work_pool *w = p;
  for (;;) {
    pthread_mutex_lock(&w->lock);
    while (!w->head && !w->stop) pthread_cond_wait(&w->cond, &w->lock);
    rs_op *op = w->head;
    if (op) {
      w->head = op->next;
      if (!w->head) w->tail = NULL;
    }
    pthread_mutex_unlock(&w->lock);
    if (!op) return NULL; /* stopping, and nothing left to do */
    op->work_result = op->work_fn(op->work_arg);
    rs_sched_remote_complete(w->sched, op);
  }
}

static int workers_wanted(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > RS_WORKERS_MAX ? RS_WORKERS_MAX : (int)n;
}

static rs_work_pool *pool_start(rs_sched *s) {
  rs_work_pool *w = calloc(1, sizeof(*w));
  if (!w) return NULL;
  w->sched = s;
  pthread_mutex_init(&w->lock, NULL);
  pthread_cond_init(&w->cond, NULL);
  int want = workers_wanted();
  for (int i = 0; i < want; i++)
    if (pthread_create(&w->threads[w->nthreads], NULL, worker_main, w) == 0) w->nthreads++;
  if (w->nthreads == 0) {
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w);
    return NULL;
  }
  return w;
}

int rs_work_submit(rs_sched *s, rs_op *op) {
  if (!s->work && !(s->work = pool_start(s))) return -EAGAIN;
  rs_work_pool *w = s->work;
  op->kernel_refs = 1; /* a worker holds it until it completes */
  s->inflight++;
  op->next = NULL;
  pthread_mutex_lock(&w->lock);
  if (w->tail) w->tail->next = op;
  else w->head = op;
  w->tail = op;
  pthread_cond_signal(&w->cond);
  pthread_mutex_unlock(&w->lock);
  return 0;
}

void rs_work_pool_stop(rs_sched *s) {
  rs_work_pool *w = s->work;
  if (!w) return;
  pthread_mutex_lock(&w->lock);
  w->stop = true;
  pthread_cond_broadcast(&w->cond);
  pthread_mutex_unlock(&w->lock);
  for (int i = 0; i < w->nthreads; i++) pthread_join(w->threads[i], NULL);
  pthread_cond_destroy(&w->cond);
  pthread_mutex_destroy(&w->lock);
  free(w);
  s->work = NULL;
}

void rs_work_pool_forget(rs_sched *s) {
  /* A forked child has none of the parent's threads: drop the pool as is. */
  s->work = NULL;
}
