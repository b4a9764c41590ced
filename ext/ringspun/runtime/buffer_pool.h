#ifndef RINGSPUN_BUFFER_POOL_H
#define RINGSPUN_BUFFER_POOL_H 1
#include <stddef.h>

/* Fixed-size blocks recycled through a free list: a stream of any length
 * reuses the same few blocks, so memory stays flat and unfragmented. */
#define RS_BLOCK_SIZE 65536
#define RS_POOL_KEEP 64 /* free blocks kept; more go back to the allocator */

typedef struct rs_buf_pool {
  void *free_list; /* each free block's first word links the next */
  size_t nfree;
  size_t out;      /* blocks handed out */
} rs_buf_pool;

void *rs_buf_get(rs_buf_pool *p);        /* NULL when out of memory */
void rs_buf_put(rs_buf_pool *p, void *block);
void rs_buf_pool_destroy(rs_buf_pool *p);
/* The pool for the calling thread when it has no Ringspun scheduler. */
rs_buf_pool *rs_buf_pool_thread(void);
#endif
