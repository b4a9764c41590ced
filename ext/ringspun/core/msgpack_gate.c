/* See msgpack_gate.h. */
#include "msgpack_gate.h"
#include <stdlib.h>
#include <string.h>

static uint64_t be(const unsigned char *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = (v << 8) | p[i];
  return v;
}

/* The header at p (avail bytes there): its length, the elements it
 * declares (containers) and the bytes that follow it as one value
 * (str/bin/ext payloads, a number's bytes). 0 when incomplete. */
static int header(const unsigned char *p, size_t avail, uint64_t *elems, uint64_t *payload) {
  static const signed char extra[32] = {
      /* 0xc0.. */ 0, 0, 0, 0, 1, 2, 4, 1, 2, 4, 4, 8, 1, 2, 4, 8,
      /* 0xd0.. */ 1, 2, 4, 8, 2, 3, 5, 9, 17, 1, 2, 4, 2, 4, 2, 4};
  unsigned b = p[0];
  *elems = *payload = 0;
  if (b <= 0x7f || b >= 0xe0) return 1;
  if (b <= 0x8f) { *elems = 2 * (b & 0x0f); return 1; }
  if (b <= 0x9f) { *elems = b & 0x0f; return 1; }
  if (b <= 0xbf) { *payload = b & 0x1f; return 1; }
  int hl = 1 + extra[b - 0xc0];
  if ((b >= 0xd4 && b <= 0xd8) || (b >= 0xca && b <= 0xd3) || b <= 0xc3) {
    *payload = (uint64_t)hl - 1; /* fixext (type + data), numbers, nil, booleans */
    return 1;
  }
  if (avail < (size_t)hl) return 0;
  uint64_t n = be(p + 1, hl - 1);
  if (b >= 0xdc && b <= 0xdd) *elems = n;
  else if (b >= 0xde) *elems = 2 * n;
  else *payload = n + (b >= 0xc7 && b <= 0xc9); /* ext: + the type byte */
  return hl;
}

static int is_container(unsigned b) { return (b >= 0x80 && b <= 0x9f) || (b >= 0xdc && b <= 0xdf); }

/* One value read at the current level: open a container or close the
 * levels it completes. Returns -1 when a container would open past the
 * stack (msgpack-c checks its stack before the count: empty ones too). */
static int nest(uint64_t *left, int *depth, unsigned b, uint64_t elems) {
  if (is_container(b) && *depth == RS_MP_MAX_DEPTH) return -1;
  if (*depth > 0) left[*depth - 1]--;
  if (elems > 0) left[(*depth)++] = elems;
  while (*depth > 0 && left[*depth - 1] == 0) (*depth)--;
  return 0;
}

static void check(rs_mp_gate *g) {
  while (g->pos < g->len) {
    if (g->skip) {
      size_t k = g->len - g->pos < g->skip ? g->len - g->pos : (size_t)g->skip;
      g->pos += k;
      g->skip -= k;
      continue;
    }
    const unsigned char *p = (const unsigned char *)g->buf + g->pos;
    uint64_t elems, payload;
    int hl = header(p, g->len - g->pos, &elems, &payload);
    if (hl == 0) return;                              /* header incomplete */
    if (elems > g->len - g->pos - (size_t)hl) return; /* its elements have not come */
    /* msgpack-c computes an ext32's length + 1 in 32 bits: hold the one
     * length that overflows (it cannot complete anyway). */
    if (p[0] == 0xc9 && payload == 0x100000000ULL) return;
    if (nest(g->left, &g->depth, p[0], elems) < 0) return; /* too deep: held, see verdict */
    g->pos += (size_t)hl;
    g->skip = payload;
  }
}

int rs_mp_gate_push(rs_mp_gate *g, const char *data, size_t n) {
  if (n == 0) return 0;
  if (g->len + n > g->cap) {
    size_t cap = g->cap ? g->cap : 4096;
    while (cap < g->len + n) cap *= 2;
    char *b = realloc(g->buf, cap);
    if (!b) return -1;
    g->buf = b;
    g->cap = cap;
  }
  memcpy(g->buf + g->len, data, n);
  g->len += n;
  check(g);
  return 0;
}

void rs_mp_gate_take(rs_mp_gate *g) {
  if (g->pos == 0) return;
  if (g->scan_valid && g->scan_i >= g->pos) g->scan_i -= g->pos;
  else g->scan_valid = 0;
  memmove(g->buf, g->buf + g->pos, g->len - g->pos);
  g->len -= g->pos;
  g->handed += g->pos;
  g->pos = 0;
}

int rs_mp_gate_verdict(rs_mp_gate *g, uint64_t *offset) {
  /* Resume the last walk when it is still ahead of pos: check() moves pos
   * along the same walk, so the state there is the same. */
  if (!g->scan_valid || g->scan_i < g->pos) {
    g->scan_i = g->pos;
    g->scan_skip = g->skip;
    g->scan_depth = g->depth;
    memcpy(g->scan_left, g->left, sizeof(g->left));
    g->scan_valid = 1;
  }
  while (g->scan_i < g->len) {
    if (g->scan_skip) {
      uint64_t k = g->len - g->scan_i < g->scan_skip ? g->len - g->scan_i : g->scan_skip;
      g->scan_i += (size_t)k;
      g->scan_skip -= k;
      continue;
    }
    const unsigned char *p = (const unsigned char *)g->buf + g->scan_i;
    *offset = g->handed + g->scan_i;
    if (*p == 0xc1) return 1;
    uint64_t elems, payload;
    int hl = header(p, g->len - g->scan_i, &elems, &payload);
    if (hl == 0) return 0;
    if (nest(g->scan_left, &g->scan_depth, p[0], elems) < 0) return 2;
    g->scan_i += (size_t)hl;
    g->scan_skip = payload;
  }
  return 0;
}

void rs_mp_gate_free(rs_mp_gate *g) {
  free(g->buf);
  g->buf = NULL;
  g->len = g->cap = g->pos = 0;
}
