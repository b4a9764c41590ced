/* A binary min-heap of timers ordered by deadline (the epoll backend's
 * timers). A timer is embedded in whatever it times; the heap knows
 * nothing else about it. */
#ifndef RINGSPUN_TIMER_HEAP_H
#define RINGSPUN_TIMER_HEAP_H 1
#include <stddef.h>
#include <stdint.h>

#define RS_TIMER_NONE SIZE_MAX /* index of a timer in no heap */

typedef struct rs_timer {
  uint64_t deadline; /* CLOCK_MONOTONIC ns */
  size_t index;      /* position in the heap, RS_TIMER_NONE when absent */
} rs_timer;

typedef struct rs_timer_heap {
  rs_timer **items;
  size_t len, cap;
} rs_timer_heap;

int rs_heap_push(rs_timer_heap *h, rs_timer *t); /* -1 when out of memory */
void rs_heap_remove(rs_timer_heap *h, rs_timer *t);
rs_timer *rs_heap_peek(const rs_timer_heap *h);
void rs_heap_free(rs_timer_heap *h);
#endif
