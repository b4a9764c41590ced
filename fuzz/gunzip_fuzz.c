/* libFuzzer harness for the gzip/zlib decoding core (ext/ringspun/core/zcore.c),
 * driven the way zstream.c's decompress_body drives it for IO.gunzip and
 * IO.inflate: a fresh output window before every rs_unzip_run, the next
 * read only once zlib has taken all of the last one, rs_unzip_eof at end of
 * input, and the gzip header's name and comment read as C strings when a
 * member ends.
 *
 * Options byte (see fuzz_input.h for the layout):
 *   bit 0      1: a zlib stream (IO.inflate); 0: gzip (IO.gunzip)
 *   bits 1-3   the output window: 65536 (the binding's block), 1, 2, 7, 64,
 *              512, 4096 or 32768 bytes
 *   bit 4      1: no buffers for the header's name and comment
 *
 * Besides what the sanitizers catch, a finding is:
 *   - a status that breaks zcore.h's contract (NEED_INPUT with input left,
 *     OUTPUT_FULL with room left, MEMBER for a zlib stream, END from
 *     rs_unzip_run for gzip, ERROR without an error code and message);
 *   - a header name or comment that is not NUL-terminated inside the
 *     buffer the caller gave (name_max is the buffer size less one, as in
 *     zstream.c, which reads them with rb_str_new_cstr); id
 *     gzip-header-nul for FUZZ_ALLOW;
 *   - a result that depends on how the input was cut into reads or on the
 *     size of the output window: the split run must end the same way as
 *     one read into 64 KiB windows, with the same error, or with the same
 *     bytes when it succeeds.
 *
 * Output is hashed, never kept, and a run stops after 64 MiB (less for tiny
 * windows), so a zip bomb is neither a hang nor an out-of-memory report. */
#include "fuzz_input.h"
#include "zcore.h"
#include <stdbool.h>
#include <string.h>

#define FZ_BLOCK 65536                    /* RS_BLOCK_SIZE: the binding's output window */
#define FZ_OUT_CAP (UINT64_C(64) << 20)   /* stop decoding after this much output */
#define FZ_NAME_BUF 64                    /* small, so a long name is easy to reach */
#define FZ_CAPPED (-1)

typedef struct run_result {
  int status;          /* RS_UNZIP_END, RS_UNZIP_ERROR or FZ_CAPPED */
  int error;
  const char *msg;
  int members;
  uint64_t total;      /* output bytes */
  uint64_t hash;       /* of the first `limit` output bytes */
} run_result;

/* The binding turns both into Ruby strings with rb_str_new_cstr. */
static void check_header_string(const Bytef *buf, const char *what) {
  if (!buf || fz_allowed("gzip-header-nul")) return;
  FZ_CHECK(memchr(buf, 0, FZ_NAME_BUF) != NULL,
           "the gzip header's %s is not NUL-terminated inside its %d-byte buffer (given to rs_unzip_init with "
           "a max of %d, as zstream.c gives RS_BLOCK_SIZE - 1); header_to_info reads it with strlen",
           what, FZ_NAME_BUF, FZ_NAME_BUF - 1);
}

static void check_status(const rs_unzip *u, int st) {
  switch (st) {
  case RS_UNZIP_NEED_INPUT:
    FZ_CHECK(u->z.avail_in == 0, "RS_UNZIP_NEED_INPUT with %u input bytes left", u->z.avail_in);
    break;
  case RS_UNZIP_OUTPUT_FULL:
    FZ_CHECK(u->z.avail_out == 0, "RS_UNZIP_OUTPUT_FULL with %u bytes of room left", u->z.avail_out);
    break;
  case RS_UNZIP_MEMBER: FZ_CHECK(u->gzip, "RS_UNZIP_MEMBER from a zlib stream"); break;
  case RS_UNZIP_END: FZ_CHECK(!u->gzip, "RS_UNZIP_END from rs_unzip_run on gzip (members end with MEMBER)"); break;
  case RS_UNZIP_ERROR:
    FZ_CHECK(u->error != RS_UNZIP_OK && u->msg != NULL, "RS_UNZIP_ERROR with error %d, msg %p", u->error,
             (const void *)u->msg);
    break;
  default: FZ_CHECK(0, "rs_unzip_run returned %d, not a status", st);
  }
}

static void account(run_result *r, const uint8_t *out, size_t n, uint64_t limit) {
  if (r->total < limit) {
    uint64_t take = limit - r->total < n ? limit - r->total : n;
    r->hash = fz_hash(r->hash, out, (size_t)take);
  }
  r->total += n;
}

static void run(const uint8_t *data, size_t len, bool gzip, uint8_t cut_seed, size_t win, bool hdr_bufs,
                uint64_t cap, uint64_t limit, run_result *r) {
  memset(r, 0, sizeof(*r));
  r->hash = FZ_HASH_INIT;
  Bytef *name = NULL, *comment = NULL;
  if (gzip && hdr_bufs) {
    /* Never zero: a terminator must come from the decoder, not the allocator. */
    name = malloc(FZ_NAME_BUF);
    comment = malloc(FZ_NAME_BUF);
    if (!name || !comment) abort();
    memset(name, 0xa5, FZ_NAME_BUF);
    memset(comment, 0x5a, FZ_NAME_BUF);
  }
  uint8_t *out = malloc(win);
  if (!out) abort();
  rs_unzip u;
  int ret = rs_unzip_init(&u, gzip, name, FZ_NAME_BUF - 1, comment, FZ_NAME_BUF - 1);
  FZ_CHECK(ret == Z_OK, "rs_unzip_init: %d", ret);
  check_header_string(name, "name");
  check_header_string(comment, "comment");

  fz_cuts cuts;
  fz_cuts_init(&cuts, cut_seed);
  uint8_t *read = NULL;
  size_t pos = 0;
  int st;
  for (;;) {
    if (u.z.avail_in == 0) {
      free(read);
      read = NULL;
      if (pos == len) {
        st = rs_unzip_eof(&u);
        FZ_CHECK(st == RS_UNZIP_END || st == RS_UNZIP_ERROR, "rs_unzip_eof returned %d", st);
        if (st == RS_UNZIP_ERROR) check_status(&u, st);
        break;
      }
      size_t n = fz_cuts_next(&cuts, len - pos);
      read = fz_read_copy(data + pos, n);
      u.z.next_in = read;
      u.z.avail_in = (uInt)n;
      pos += n;
    }
    u.z.next_out = out;
    u.z.avail_out = (uInt)win;
    st = rs_unzip_run(&u);
    FZ_CHECK(u.z.avail_out <= win, "avail_out grew to %u from a %zu-byte window", u.z.avail_out, win);
    account(r, out, win - u.z.avail_out, limit);
    check_status(&u, st);
    if (st == RS_UNZIP_ERROR || st == RS_UNZIP_END) break;
    if (st == RS_UNZIP_MEMBER) {
      check_header_string(name, "name");
      check_header_string(comment, "comment");
    }
    if (r->total >= cap) {
      st = FZ_CAPPED;
      break;
    }
  }
  free(read);
  r->status = st;
  r->error = u.error;
  r->msg = u.msg;
  r->members = u.members;
  rs_unzip_end(&u);
  free(out);
  free(name);
  free(comment);
}

static const char *status_name(int st) {
  switch (st) {
  case RS_UNZIP_END: return "END";
  case RS_UNZIP_ERROR: return "ERROR";
  case FZ_CAPPED: return "CAPPED";
  default: return "?";
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < FZ_HEADER) return 0;
  static const size_t wins[8] = {FZ_BLOCK, 1, 2, 7, 64, 512, 4096, 32768};
  uint8_t seed = data[0], opts = data[1];
  bool gzip = !(opts & 1);
  size_t win = wins[(opts >> 1) & 7];
  bool bufs = !(opts & 0x10);
  const uint8_t *payload = data + FZ_HEADER;
  size_t len = size - FZ_HEADER;

  /* A 1-byte window costs one inflate() call per output byte: cap it lower. */
  uint64_t split_cap = (uint64_t)win * 1024 < FZ_OUT_CAP ? (uint64_t)win * 1024 : FZ_OUT_CAP;
  if (split_cap < 65536) split_cap = 65536;

  run_result whole, split;
  run(payload, len, gzip, 0, FZ_BLOCK, true, FZ_OUT_CAP, split_cap, &whole);
  if (seed == 0 && win == FZ_BLOCK && bufs) return 0; /* the same run twice */
  run(payload, len, gzip, seed, win, bufs, split_cap, split_cap, &split);

  if (split.status == FZ_CAPPED) {
    FZ_CHECK(whole.total >= split_cap && whole.hash == split.hash,
             "the first %llu output bytes differ: one read into 64 KiB windows gave %llu bytes (hash %016llx), "
             "cut seed %u with a %zu-byte window gave hash %016llx",
             (unsigned long long)split_cap, (unsigned long long)whole.total, (unsigned long long)whole.hash, seed,
             win, (unsigned long long)split.hash);
    return 0;
  }
  /* On an error only the error must agree, not how much output came out
   * before it. At the end of a truncated stream zlib can hold back output it
   * has decoded but had no room for (the rest of a match, say), and the
   * binding, like this loop, stops at the end of input without giving it
   * room again. So when the input is both truncated and corrupt after that
   * point, one run sees the corruption (EDATA) and the other only the end
   * (ETRUNC): both are Zlib::Error, and reported, not a finding here. */
  bool same_output = whole.status == RS_UNZIP_ERROR || (whole.total == split.total && whole.hash == split.hash);
  bool same_error = whole.error == split.error ||
                    (whole.status == RS_UNZIP_ERROR && (whole.error == RS_UNZIP_ETRUNC || split.error == RS_UNZIP_ETRUNC));
  FZ_CHECK(whole.status == split.status && same_error && whole.members == split.members && same_output,
           "the result depends on the reads: one read into 64 KiB windows: %s error %d (%s), %d members, %llu "
           "bytes, hash %016llx; cut seed %u, %zu-byte window: %s error %d (%s), %d members, %llu bytes, hash "
           "%016llx",
           status_name(whole.status), whole.error, whole.msg ? whole.msg : "-", whole.members,
           (unsigned long long)whole.total, (unsigned long long)whole.hash, seed, win, status_name(split.status),
           split.error, split.msg ? split.msg : "-", split.members, (unsigned long long)split.total,
           (unsigned long long)split.hash);
  return 0;
}
