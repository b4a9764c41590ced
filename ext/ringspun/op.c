/* Operation pool: fixed-size rs_op records carved from slabs and recycled
 * through a free list, so submitting an operation never mallocs. Holds no
 * Ruby objects of its own; the scheduler marks the VALUEs an op carries. */
#include "ringspun.h"
#include <stdlib.h>
#include <string.h>

#define RS_OPS_PER_SLAB 256

void rs_op_pool_init(rs_op_pool *p) { memset(p, 0, sizeof(*p)); }

void rs_op_pool_destroy(rs_op_pool *p) {
  for (size_t i = 0; i < p->nslabs; i++) free(p->slabs[i]);
  free(p->slabs);
  memset(p, 0, sizeof(*p));
}

static int pool_grow(rs_op_pool *p) {
  if (p->nslabs == p->cap_slabs) {
    size_t cap = p->cap_slabs ? p->cap_slabs * 2 : 8;
    rs_op **slabs = realloc(p->slabs, cap * sizeof(*slabs));
    if (!slabs) return -1;
    p->slabs = slabs;
    p->cap_slabs = cap;
  }
  rs_op *slab = calloc(RS_OPS_PER_SLAB, sizeof(rs_op));
  if (!slab) return -1;
  p->slabs[p->nslabs++] = slab;
  for (size_t i = RS_OPS_PER_SLAB; i-- > 0;) {
    slab[i].kind = -1; /* marks a free record for rs_op_pool_each_live */
    slab[i].next = p->free_list;
    p->free_list = &slab[i];
  }
  return 0;
}

rs_op *rs_op_pool_get(rs_op_pool *p) {
  if (!p->free_list && pool_grow(p) < 0) return NULL;
  rs_op *op = p->free_list;
  p->free_list = op->next;
  memset(op, 0, sizeof(*op));
  op->fiber = Qnil;
  op->keep = Qnil;
  op->raise_class = Qnil;
  op->raise_message = Qnil;
  op->fd = -1;
  op->fd_out = -1;
  op->timeout_ns = -1;
  op->heap_index = SIZE_MAX;
  p->live++;
  return op;
}

void rs_op_pool_put(rs_op_pool *p, rs_op *op) {
  op->kind = -1;
  op->fiber = op->keep = op->raise_class = op->raise_message = Qnil;
  op->next = p->free_list;
  p->free_list = op;
  p->live--;
}

void rs_op_pool_each_live(rs_op_pool *p, void (*fn)(rs_op *, void *), void *arg) {
  for (size_t i = 0; i < p->nslabs; i++)
    for (size_t j = 0; j < RS_OPS_PER_SLAB; j++)
      if (p->slabs[i][j].kind >= 0) fn(&p->slabs[i][j], arg);
}
