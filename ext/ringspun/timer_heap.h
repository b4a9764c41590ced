#ifndef RINGSPUN_TIMER_HEAP_H
#define RINGSPUN_TIMER_HEAP_H 1
#include "ringspun.h"

typedef struct rs_timer_heap {
  rs_op **items;
  size_t len, cap;
} rs_timer_heap;

int rs_heap_push(rs_timer_heap *h, rs_op *op); /* -1 when out of memory */
void rs_heap_remove(rs_timer_heap *h, rs_op *op);
rs_op *rs_heap_peek(const rs_timer_heap *h);
void rs_heap_free(rs_timer_heap *h);
#endif
