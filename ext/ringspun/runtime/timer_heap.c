/* A binary min-heap of timers ordered by deadline, for the epoll backend.
 * Each timer remembers its index so removal is O(log n); ties keep no
 * particular order, deadlines are in nanoseconds so ties are rare. */
#include "runtime/timer_heap.h"
#include <stdlib.h>

static void place(rs_timer_heap *h, size_t i, rs_timer *t) {
  h->items[i] = t;
  t->index = i;
}

static void sift_up(rs_timer_heap *h, size_t i) {
  rs_timer *t = h->items[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (h->items[parent]->deadline <= t->deadline) break;
    place(h, i, h->items[parent]);
    i = parent;
  }
  place(h, i, t);
}

static void sift_down(rs_timer_heap *h, size_t i) {
  rs_timer *t = h->items[i];
  for (;;) {
    size_t child = 2 * i + 1;
    if (child >= h->len) break;
    if (child + 1 < h->len && h->items[child + 1]->deadline < h->items[child]->deadline) child++;
    if (t->deadline <= h->items[child]->deadline) break;
    place(h, i, h->items[child]);
    i = child;
  }
  place(h, i, t);
}

int rs_heap_push(rs_timer_heap *h, rs_timer *t) {
  if (h->len == h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 64;
    rs_timer **items = realloc(h->items, cap * sizeof(*items));
    if (!items) return -1;
    h->items = items;
    h->cap = cap;
  }
  place(h, h->len++, t);
  sift_up(h, t->index);
  return 0;
}

void rs_heap_remove(rs_timer_heap *h, rs_timer *t) {
  size_t i = t->index;
  if (i >= h->len || h->items[i] != t) return;
  t->index = RS_TIMER_NONE;
  rs_timer *last = h->items[--h->len];
  if (i == h->len) return;
  place(h, i, last);
  sift_down(h, i);
  sift_up(h, last->index);
}

rs_timer *rs_heap_peek(const rs_timer_heap *h) { return h->len ? h->items[0] : NULL; }

void rs_heap_free(rs_timer_heap *h) {
  free(h->items);
  h->items = NULL;
  h->len = h->cap = 0;
}
