/* CPU work off the event loop: a small pool of C threads, one pool per
 * scheduler, started on first use and joined when the scheduler closes.
 *
 * A fiber that deflates parks on an RS_OP_WORK op while a worker runs the
 * op's job; the loop meanwhile runs other fibers, so a scheduler
 * compresses on every core, not one. A worker never touches a Ruby object:
 * it calls the job's C function, posts the job to the pool's mailbox and
 * wakes the loop through the backend's eventfd; the loop takes the mailbox
 * (rs_work_take_done), as libuv's threadpool hands back its requests. */
#include "runtime/work.h"
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#define RS_WORKERS_MAX 8

struct rs_work_pool {
  rs_backend *wake;
  pthread_t threads[RS_WORKERS_MAX];
  int nthreads;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  rs_work_job *head, *tail; /* jobs waiting for a worker */
  bool stop;
  pthread_mutex_t mail_lock;
  rs_work_job *mail;        /* finished jobs, waiting for the loop */
};

static rs_work_job *next_job(rs_work_pool *w) {
  pthread_mutex_lock(&w->lock);
  while (!w->head && !w->stop) pthread_cond_wait(&w->cond, &w->lock);
  rs_work_job *job = w->head;
  if (job) {
    w->head = job->next;
    if (!w->head) w->tail = NULL;
  }
  pthread_mutex_unlock(&w->lock);
  return job;
}

static void post(rs_work_pool *w, rs_work_job *job) {
  pthread_mutex_lock(&w->mail_lock);
  job->next = w->mail;
  w->mail = job;
  pthread_mutex_unlock(&w->mail_lock);
  w->wake->ops->wakeup(w->wake);
}

static void *worker_main(void *p) {
  rs_work_pool *w = p;
  rs_work_job *job;
  while ((job = next_job(w))) {
    job->result = job->fn(job->arg);
    post(w, job);
  }
  return NULL; /* stopping, and nothing left to do */
}

static int workers_wanted(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > RS_WORKERS_MAX ? RS_WORKERS_MAX : (int)n;
}

static void pool_free(rs_work_pool *w) {
  pthread_cond_destroy(&w->cond);
  pthread_mutex_destroy(&w->lock);
  pthread_mutex_destroy(&w->mail_lock);
  free(w);
}

static rs_work_pool *pool_start(rs_backend *wake) {
  rs_work_pool *w = calloc(1, sizeof(*w));
  if (!w) return NULL;
  w->wake = wake;
  pthread_mutex_init(&w->lock, NULL);
  pthread_cond_init(&w->cond, NULL);
  pthread_mutex_init(&w->mail_lock, NULL);
  int want = workers_wanted();
  for (int i = 0; i < want; i++)
    if (pthread_create(&w->threads[w->nthreads], NULL, worker_main, w) == 0) w->nthreads++;
  if (w->nthreads == 0) {
    pool_free(w);
    return NULL;
  }
  return w;
}

int rs_work_submit(rs_work_pool **pool, rs_backend *wake, rs_work_job *job) {
  if (!*pool && !(*pool = pool_start(wake))) return -EAGAIN;
  rs_work_pool *w = *pool;
  job->next = NULL;
  pthread_mutex_lock(&w->lock);
  if (w->tail) w->tail->next = job;
  else w->head = job;
  w->tail = job;
  pthread_cond_signal(&w->cond);
  pthread_mutex_unlock(&w->lock);
  return 0;
}

/* A racy peek first: a job posted meanwhile is taken on the next turn, as
 * its wakeup on the eventfd says. */
bool rs_work_has_done(const rs_work_pool *pool) { return pool && pool->mail; }

rs_work_job *rs_work_take_done(rs_work_pool *pool) {
  if (!rs_work_has_done(pool)) return NULL;
  pthread_mutex_lock(&pool->mail_lock);
  rs_work_job *jobs = pool->mail;
  pool->mail = NULL;
  pthread_mutex_unlock(&pool->mail_lock);
  return jobs;
}

void rs_work_pool_stop(rs_work_pool **pool) {
  rs_work_pool *w = *pool;
  if (!w) return;
  pthread_mutex_lock(&w->lock);
  w->stop = true;
  pthread_cond_broadcast(&w->cond);
  pthread_mutex_unlock(&w->lock);
  for (int i = 0; i < w->nthreads; i++) pthread_join(w->threads[i], NULL);
  pool_free(w);
  *pool = NULL;
}

/* A forked child has none of the parent's threads (and its locks may be
 * held by one of them): drop the pool as it is. */
void rs_work_pool_forget(rs_work_pool **pool) { *pool = NULL; }
