/* What every layer of the extension uses: the export mark, debug
 * assertions and the monotonic clock. No Ruby objects. */
#ifndef RINGSPUN_COMMON_H
#define RINGSPUN_COMMON_H 1

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define RS_EXPORT __attribute__((visibility("default")))

#ifdef RINGSPUN_DEBUG
#include <stdio.h>
#include <stdlib.h>
/* An assertion states its reason; it is compiled only in debug builds. */
#define RS_ASSERT(cond, why)                                                   \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "ringspun: assertion failed: %s (%s) at %s:%d\n", #cond, \
              why, __FILE__, __LINE__);                                        \
      abort();                                                                 \
    }                                                                          \
  } while (0)
#else
#define RS_ASSERT(cond, why) ((void)0)
#endif

/* The struct that holds `member` at `ptr` (as the Linux kernel's). */
#define RS_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* CLOCK_MONOTONIC in nanoseconds. */
static inline uint64_t rs_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

#endif
