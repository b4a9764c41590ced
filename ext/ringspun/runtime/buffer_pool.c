/* Block pool: no Ruby objects here. */
#include "runtime/buffer_pool.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

/* Under AddressSanitizer a block on the free list is poisoned past its link
 * word: a write into a block after it was put back (the kernel aside) is
 * reported where it happens, and putting the same block back twice aborts
 * at once instead of handing it to two owners later. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define RS_POOL_CHECKED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/asan_interface.h>
#define RS_POOL_CHECKED 1
#endif
#endif

#ifdef RS_POOL_CHECKED
static void *body(void *b) { return (char *)b + sizeof(void *); }
static const size_t body_len = RS_BLOCK_SIZE - sizeof(void *);

static void poison(void *b) { ASAN_POISON_MEMORY_REGION(body(b), body_len); }
static void unpoison(void *b) { ASAN_UNPOISON_MEMORY_REGION(b, RS_BLOCK_SIZE); }

static void check_not_free(rs_buf_pool *p, void *block) {
  for (void *f = p->free_list; f; f = *(void **)f) {
    if (f != block) continue;
    fprintf(stderr, "ringspun: block %p put back into its pool twice\n", block);
    abort();
  }
}
#else
static void poison(void *b) { (void)b; }
static void unpoison(void *b) { (void)b; }
static void check_not_free(rs_buf_pool *p, void *block) { (void)p, (void)block; }
#endif

void *rs_buf_get(rs_buf_pool *p) {
  void *b = p->free_list;
  if (b) {
    p->free_list = *(void **)b;
    p->nfree--;
    unpoison(b);
  } else if (posix_memalign(&b, 4096, RS_BLOCK_SIZE) != 0) {
    return NULL;
  }
  p->out++;
  return b;
}

void rs_buf_put(rs_buf_pool *p, void *block) {
  if (!block) return;
  check_not_free(p, block);
  p->out--;
  if (p->nfree >= RS_POOL_KEEP) {
    free(block);
    return;
  }
  *(void **)block = p->free_list;
  p->free_list = block;
  p->nfree++;
  poison(block);
}

void rs_buf_pool_destroy(rs_buf_pool *p) {
  while (p->free_list) {
    void *b = p->free_list;
    p->free_list = *(void **)b;
    unpoison(b);
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
