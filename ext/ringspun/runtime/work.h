/* CPU work off the event loop (work.c): a small pool of C threads per
 * scheduler. It owns its mailbox: a finished job waits there, the loop is
 * woken through the backend's wakeup, and the loop takes the jobs out. */
#ifndef RINGSPUN_WORK_H
#define RINGSPUN_WORK_H 1
#include "runtime/backend.h"

typedef struct rs_work_job {
  int (*fn)(void *arg);    /* runs on a worker: must touch no Ruby object */
  void *arg;
  int result;              /* fn's, once done */
  struct rs_work_job *next;
} rs_work_job;

typedef struct rs_work_pool rs_work_pool;

/* Queues job for a worker, starting *pool on first use; once done the job
 * goes to the mailbox and `wake` is woken. -EAGAIN: no thread could start. */
int rs_work_submit(rs_work_pool **pool, rs_backend *wake, rs_work_job *job);
/* Empties the mailbox: the finished jobs (linked through next), or NULL. */
rs_work_job *rs_work_take_done(rs_work_pool *pool);
bool rs_work_has_done(const rs_work_pool *pool);
void rs_work_pool_stop(rs_work_pool **pool);   /* joins the workers */
void rs_work_pool_forget(rs_work_pool **pool); /* in a forked child */
#endif
