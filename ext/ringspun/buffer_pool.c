/* Block pool: no Ruby objects here. */
#include "buffer_pool.h"
#include <pthread.h>
#include <stdlib.h>

void *rs_buf_get(rs_buf_pool *p) {
  void *b = p->free_list;
  if (b) {
    p->free_list = *(void **)b;
    p->nfree--;
  } else if (posix_memalign(&b, 4096, RS_BLOCK_SIZE) != 0) {
    return NULL;
  }
  p->out++;
  return b;
}

void rs_buf_put(rs_buf_pool *p, void *block) {
  if (!block) return;
  p->out--;
  if (p->nfree >= RS_POOL_KEEP) {
    free(block);
    return;
  }
  *(void **)block = p->free_list;
  p->free_list = block;
  p->nfree++;
}

void rs_buf_pool_destroy(rs_buf_pool *p) {
  while (p->free_list) {
    void *b = p->free_list;
    p->free_list = *(void **)b;
    free(b);
  }
  p->nfree = 0;
}

static pthread_key_t thread_key;
static pthread_once_t thread_once = PTHREAD_ONCE_INIT;

static void thread_pool_free(void *p) {
  rs_buf_pool_destroy(p);
  free(p);
}

static void make_key(void) { pthread_key_create(&thread_key, thread_pool_free); }

rs_buf_pool *rs_buf_pool_thread(void) {
  pthread_once(&thread_once, make_key);
  rs_buf_pool *p = pthread_getspecific(thread_key);
  if (!p) {
    p = calloc(1, sizeof(*p));
    if (p) pthread_setspecific(thread_key, p);
  }
  return p;
}
