#ifndef RINGSPUN_FUZZ_INPUT_H
#define RINGSPUN_FUZZ_INPUT_H 1
/* Shared by the libFuzzer harnesses: how an input is laid out, how it is cut
 * into "reads", and a hash to compare two decodings of it.
 *
 * Every harness input is
 *   byte 0   the cut seed: how the payload is cut into reads (below)
 *   byte 1   harness options (each harness says what its bits mean)
 *   byte 2.. the payload: the bytes a peer would send
 * fuzz/seeds.rb writes seeds in this layout; the fuzzer mutates all three
 * parts, so it chooses where the reads split as well as what they carry. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FZ_HEADER 2

/* Cut seed 0 delivers the payload in one read. Any other seed picks a cap
 * from its low three bits and drives a xorshift that draws each read's
 * length between 1 and the cap, so one byte reaches both "one byte at a
 * time" and "a few large reads", and every split in between. */
typedef struct fz_cuts {
  uint32_t state;
  size_t cap;
} fz_cuts;

static inline void fz_cuts_init(fz_cuts *c, uint8_t seed) {
  static const size_t caps[8] = {1, 2, 3, 7, 16, 100, 1000, 4096};
  c->cap = seed == 0 ? SIZE_MAX : caps[seed & 7];
  c->state = 0x9e3779b9u ^ ((uint32_t)seed * 0x01000193u);
}

/* The length of the next read, when `left` bytes remain (left > 0). */
static inline size_t fz_cuts_next(fz_cuts *c, size_t left) {
  if (c->cap == SIZE_MAX) return left;
  c->state ^= c->state << 13;
  c->state ^= c->state >> 17;
  c->state ^= c->state << 5;
  size_t n = 1 + (size_t)(c->state % c->cap);
  return n < left ? n : left;
}

/* FNV-1a, 64 bits: enough to tell two decodings apart. */
#define FZ_HASH_INIT UINT64_C(0xcbf29ce484222325)

static inline uint64_t fz_hash(uint64_t h, const void *data, size_t n) {
  const uint8_t *p = data;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * UINT64_C(0x100000001b3);
  return h;
}

static inline uint64_t fz_hash_u64(uint64_t h, uint64_t v) { return fz_hash(h, &v, sizeof(v)); }

/* A finding: say what broke, then abort so libFuzzer saves the input. */
#define FZ_CHECK(cond, ...)                                                      \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "\nFINDING (%s:%d): ", __FILE__, __LINE__);                \
      fprintf(stderr, __VA_ARGS__);                                              \
      fputc('\n', stderr);                                                       \
      abort();                                                                   \
    }                                                                            \
  } while (0)

/* FUZZ_ALLOW=id,id,...: checks for findings already reported (each check
 * names its id) are skipped, so a long run can look past a bug that is
 * still open. Nothing is skipped by default. */
static inline int fz_allowed(const char *id) {
  const char *list = getenv("FUZZ_ALLOW");
  if (!list) return 0;
  size_t n = strlen(id);
  for (const char *p = list; (p = strstr(p, id)) != NULL; p += n) {
    int starts = p == list || p[-1] == ',';
    int ends = p[n] == '\0' || p[n] == ',';
    if (starts && ends) return 1;
  }
  return 0;
}

/* Each read is copied into a buffer of exactly its size, freed once the
 * decoder has taken all of it: a decoder that keeps a pointer into an old
 * read (the way the read-ahead reader reuses its blocks) reads freed
 * memory, which AddressSanitizer reports. */
static inline uint8_t *fz_read_copy(const uint8_t *src, size_t n) {
  uint8_t *b = malloc(n ? n : 1);
  if (!b) abort();
  for (size_t i = 0; i < n; i++) b[i] = src[i];
  return b;
}
#endif
