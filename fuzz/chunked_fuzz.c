/* libFuzzer harness for the HTTP/1.1 chunked-body parser
 * (ext/ringspun/core/http1.c), driven the way http1_io.c's unchunk_body drives
 * it for IO.http1_splice_unchunked: framing bytes go to rs_chunk_parse,
 * and in RS_CH_DATA the caller moves at most `remaining` payload bytes (at
 * most a block at a time) and reports them with rs_chunk_consumed.
 *
 * Options byte (see fuzz_input.h for the layout):
 *   bits 0-2   the most payload moved at once: 65536 (the binding's block),
 *              1, 2, 3, 16, 256, 4096, or all the read holds
 *
 * Besides what the sanitizers catch, a finding is:
 *   - rs_chunk_parse consuming more than it was given, or nothing while it
 *     still wants framing (the binding would spin on that input);
 *   - `offset` that is not the number of body bytes taken so far, RS_CH_DATA
 *     with nothing remaining, RS_CH_ERROR without a reason;
 *   - a result (state, offset, payload, reason) that depends on how the
 *     input was cut into reads or on how much payload moves at once;
 *   - rs_chunk_header's output not parsing back to the payload it framed:
 *     the payload is also sent through the encoder exactly as
 *     http1_splice_chunked writes it, and must come back unchanged. */
#include "fuzz_input.h"
#include "http1.h"
#include <stdbool.h>
#include <string.h>

enum { END_DONE, END_ERROR, END_TRUNCATED };

typedef struct run_result {
  int end;
  int state;           /* the parser's state when the input ran out */
  uint64_t offset;     /* p.offset at the end */
  uint64_t payload;
  uint64_t hash;       /* of the payload bytes */
  const char *error;
} run_result;

static void run(const uint8_t *data, size_t len, uint8_t cut_seed, size_t move_cap, run_result *r) {
  rs_chunk_parser p;
  rs_chunk_init(&p);
  memset(r, 0, sizeof(*r));
  r->hash = FZ_HASH_INIT;
  fz_cuts cuts;
  fz_cuts_init(&cuts, cut_seed);
  uint8_t *read = NULL;
  size_t pos = 0, off = 0, n = 0;
  uint64_t taken = 0, moved = 0;
  while (p.state != RS_CH_DONE && p.state != RS_CH_ERROR) {
    if (off == n) {
      free(read);
      read = NULL;
      if (pos == len) break; /* end of input inside the body */
      n = fz_cuts_next(&cuts, len - pos);
      read = fz_read_copy(data + pos, n);
      pos += n;
      off = 0;
    }
    if (p.state == RS_CH_DATA) {
      FZ_CHECK(p.remaining > 0, "RS_CH_DATA with nothing remaining");
      uint64_t k = n - off;
      if (k > move_cap) k = move_cap;
      if (k > p.remaining) k = p.remaining;
      r->hash = fz_hash(r->hash, read + off, (size_t)k);
      rs_chunk_consumed(&p, k);
      off += (size_t)k;
      taken += k;
      moved += k;
    } else {
      size_t used = rs_chunk_parse(&p, read + off, n - off);
      FZ_CHECK(used <= n - off, "rs_chunk_parse consumed %zu of %zu bytes", used, n - off);
      FZ_CHECK(used > 0 || p.state == RS_CH_DATA || p.state == RS_CH_DONE || p.state == RS_CH_ERROR,
               "rs_chunk_parse consumed nothing of %zu bytes in state %d: the caller would loop forever", n - off,
               p.state);
      off += used;
      taken += used;
    }
    FZ_CHECK(p.offset == taken, "offset %llu after %llu body bytes were taken", (unsigned long long)p.offset,
             (unsigned long long)taken);
    FZ_CHECK(p.payload == moved, "payload %llu after %llu payload bytes were moved", (unsigned long long)p.payload,
             (unsigned long long)moved);
  }
  free(read);
  r->state = p.state;
  r->end = p.state == RS_CH_DONE ? END_DONE : p.state == RS_CH_ERROR ? END_ERROR : END_TRUNCATED;
  if (r->end == END_ERROR) FZ_CHECK(p.error != NULL, "RS_CH_ERROR without a reason");
  r->offset = p.offset;
  r->payload = p.payload;
  r->error = p.error;
}

/* Frames the payload as http1_splice_chunked does (rs_chunk_header with the
 * previous chunk's CRLF in front, then "\r\n0\r\n\r\n" or "0\r\n\r\n"), in
 * chunks whose sizes the cut seed picks, and parses it back. */
static void round_trip(const uint8_t *payload, size_t len, uint8_t cut_seed) {
  size_t cap = len + 64;
  uint8_t *enc = malloc(cap);
  if (!enc) abort();
  size_t used = 0, pos = 0;
  fz_cuts cuts;
  fz_cuts_init(&cuts, cut_seed);
  bool first = true;
  char *hdr = malloc(24); /* the size the header promises to fit in */
  if (!hdr) abort();
  while (pos < len) {
    size_t n = fz_cuts_next(&cuts, len - pos);
    size_t hl = rs_chunk_header(hdr, n, first);
    FZ_CHECK(hl > 0 && hl < 24, "rs_chunk_header wrote %zu bytes for size %zu", hl, n);
    if (used + hl + n + 8 > cap) {
      cap = 2 * cap + hl + n + 8;
      enc = realloc(enc, cap);
      if (!enc) abort();
    }
    memcpy(enc + used, hdr, hl);
    used += hl;
    memcpy(enc + used, payload + pos, n);
    used += n;
    pos += n;
    first = false;
  }
  free(hdr);
  static const char last[] = "\r\n0\r\n\r\n";
  size_t skip = first ? 2 : 0;
  memcpy(enc + used, last + skip, sizeof(last) - 1 - skip);
  used += sizeof(last) - 1 - skip;

  run_result r;
  run(enc, used, 0, SIZE_MAX, &r);
  FZ_CHECK(r.end == END_DONE && r.offset == used && r.payload == len && r.hash == fz_hash(FZ_HASH_INIT, payload, len),
           "http1_splice_chunked's framing of %zu payload bytes (%zu bytes) did not parse back: end %d, error %s, "
           "offset %llu, payload %llu",
           len, used, r.end, r.error ? r.error : "-", (unsigned long long)r.offset, (unsigned long long)r.payload);
  free(enc);
}

/* Sizes near and past the parser's 63-bit limit come back as written, or
 * fail as too big; never wrap around. */
static void size_line(const uint8_t *payload, size_t len) {
  if (len < 8) return;
  uint64_t size = 0;
  memcpy(&size, payload, 8);
  char hdr[24];
  size_t hl = rs_chunk_header(hdr, size, 1);
  FZ_CHECK(hl > 0 && hl < sizeof(hdr), "rs_chunk_header wrote %zu bytes for size %llu", hl, (unsigned long long)size);
  rs_chunk_parser p;
  rs_chunk_init(&p);
  size_t used = rs_chunk_parse(&p, (const uint8_t *)hdr, hl);
  if (size >> 63) {
    FZ_CHECK(p.state == RS_CH_ERROR, "size %016llx (64 bits) was accepted, state %d", (unsigned long long)size,
             p.state);
  } else if (size == 0) {
    FZ_CHECK(used == hl && p.state == RS_CH_TRAILER, "size 0 left state %d after %zu bytes", p.state, used);
  } else {
    FZ_CHECK(used == hl && p.state == RS_CH_DATA && p.remaining == size,
             "size %llx parsed as %llx (state %d, %zu of %zu bytes)", (unsigned long long)size,
             (unsigned long long)p.remaining, p.state, used, hl);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < FZ_HEADER) return 0;
  static const size_t caps[8] = {65536, 1, 2, 3, 16, 256, 4096, SIZE_MAX};
  uint8_t seed = data[0], opts = data[1];
  size_t move_cap = caps[opts & 7];
  const uint8_t *payload = data + FZ_HEADER;
  size_t len = size - FZ_HEADER;

  run_result whole, split;
  run(payload, len, 0, SIZE_MAX, &whole);
  if (seed == 0 && move_cap == SIZE_MAX) split = whole; /* the same run twice */
  else run(payload, len, seed, move_cap, &split);
  FZ_CHECK(whole.end == split.end && whole.state == split.state && whole.offset == split.offset &&
               whole.payload == split.payload && whole.hash == split.hash && whole.error == split.error,
           "the result depends on the reads: in one read: end %d state %d offset %llu payload %llu hash %016llx "
           "(%s); cut seed %u, moves of %zu: end %d state %d offset %llu payload %llu hash %016llx (%s)",
           whole.end, whole.state, (unsigned long long)whole.offset, (unsigned long long)whole.payload,
           (unsigned long long)whole.hash, whole.error ? whole.error : "-", seed, move_cap, split.end, split.state,
           (unsigned long long)split.offset, (unsigned long long)split.payload, (unsigned long long)split.hash,
           split.error ? split.error : "-");
  round_trip(payload, len, seed);
  size_line(payload, len);
  return 0;
}
