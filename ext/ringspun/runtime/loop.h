/* The event loop (loop.c): resumes runnable fibers, waits on the backend
 * and the worker pool's mailbox, and tears a scheduler down. */
#ifndef RINGSPUN_LOOP_H
#define RINGSPUN_LOOP_H 1
#include "runtime/sched.h"

/* Runs the loop on the current fiber until no fiber of s is alive. */
void rs_loop_run(rs_sched *s);
/* Raises the error that ended a fiber and must end the run, if any. */
void rs_loop_raise_pending(rs_sched *s);
/* Cancels what is in flight, waits for it (bounded), stops the workers
 * and closes the backend. */
void rs_loop_teardown(rs_sched *s);
/* From the loop's fiber: raises Ringspun::RunAborted into every fiber
 * still parked and gives their ensure clauses a bounded second. */
void rs_loop_unwind(rs_sched *s);
/* Runs fn(arg) on a worker thread while the fiber parks; returns its
 * result. Without a Ringspun scheduler, runs it here with the GVL
 * released. An interrupted fiber still waits for the worker to finish:
 * the job's memory is the caller's. */
int rs_run_work(int (*fn)(void *), void *arg);

void rs_init_loop(void);
#endif
