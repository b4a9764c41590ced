/* The Ruby object that holds a scheduler's runtime state (state.h): its
 * memory and GC marks, the thread it serves, its reset in a forked child,
 * and the choice of backend (sched.c). The Ruby class with the
 * Fiber::Scheduler hooks (scheduler.c) stands on top. */
#ifndef RINGSPUN_SCHED_H
#define RINGSPUN_SCHED_H 1
#include "runtime/op.h"

/* The alloc function of a class whose instances hold an rs_sched. */
VALUE rs_sched_alloc(VALUE klass);
/* The state of a scheduler object (TypeError for anything else); a
 * forked child's copy is reset first. */
rs_sched *rs_sched_get(VALUE self);
/* The scheduler for the current fiber when it is a Ringspun scheduler,
 * open, in this process; NULL otherwise. */
rs_sched *rs_sched_current(void);
/* Starts the backend `want` names (:auto, :io_uring, :epoll or nil for
 * RINGSPUN_BACKEND); :auto falls back to epoll. Raises on failure. */
void rs_sched_start(rs_sched *s, VALUE want);
void rs_sched_backend_destroy(rs_sched *s);
/* Makes the current thread the served one, while nothing of another is
 * alive (RuntimeError otherwise). */
void rs_sched_bind_thread(rs_sched *s);
/* A fiber started by this scheduler, alive until rs_sched_forget_fiber. */
void rs_sched_add_fiber(rs_sched *s, VALUE fiber);
void rs_sched_forget_fiber(rs_sched *s, VALUE fiber);
bool rs_fiber_blocking_p(VALUE fiber);
/* The backend's name as a Symbol (:io_uring or :epoll). */
VALUE rs_sched_backend_name(rs_sched *s);

void rs_init_sched(void);
#endif
