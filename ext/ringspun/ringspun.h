/* Ringspun: what the Ruby-facing files (this folder) share.
 *
 * Layers, bottom to top, each in its folder and including only below it:
 *   core/     codec cores with no Ruby objects (zlib framing, chunked
 *             HTTP/1, the MessagePack gate), fuzzed alone;
 *   runtime/  errors, buffer pool, timers, the backend seam and both
 *             backends, the worker pool, the life of an op (op.c), the
 *             scheduler's state (sched.c) and its loop (loop.c);
 *   io/       IO operations with their two strategies, argument ends,
 *             splice steps and the chunk reader;
 *   ./        Ringspun::Scheduler and its hooks (scheduler.c, sched_io.c)
 *             and the primitives (splice, zstream, loops, msgpack, http1_io). */
#ifndef RINGSPUN_H
#define RINGSPUN_H 1

#include <ruby.h>
#include "runtime/common.h"
#include "runtime/errors.h"
#include "runtime/loop.h"
#include "io/io.h"
#include "io/reader.h"

/* Each Ruby-facing file's part, called by Init_ringspun (init.c) in this order. */
void rs_init_scheduler(VALUE mRingspun);
void rs_init_sched_io(VALUE cScheduler);
void rs_init_splice(VALUE mRingspun);
void rs_init_zstream(VALUE mRingspun);
void rs_init_loops(VALUE mRingspun);
void rs_init_msgpack(VALUE mRingspun);
void rs_init_http1(VALUE mRingspun);

#endif
