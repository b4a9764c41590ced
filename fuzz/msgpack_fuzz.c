/* libFuzzer harness for MessagePack decoding with msgpack-c, driven exactly
 * the way ext/ringspun/msgpack.c drives it:
 *   - IO#msgpack_each: msgpack_unpacker_init with a 64 KiB buffer; per read
 *     msgpack_unpacker_reserve_buffer, a copy into msgpack_unpacker_buffer,
 *     msgpack_unpacker_buffer_consumed; then msgpack_unpacker_execute until
 *     it wants more, and after each message msgpack_unpacker_data, the
 *     conversion, `if (u.z) msgpack_unpacker_reset_zone(&u)` (msgpack-c 4
 *     creates the zone lazily) and msgpack_unpacker_reset; at end of input
 *     msgpack_unpacker_message_size > 0 means a truncated message; and
 *     msgpack_unpacker_destroy however the loop ends, including when the
 *     conversion raises (an ext type without allow_unknown_ext);
 *   - Ringspun::MessagePack.unpack: the same unpacker, made with room for
 *     the whole string plus 16 bytes, fed it in one go, one message taken,
 *     and the bytes after it counted as extra.
 * The conversion is walked in C as to_ruby walks it: every type, nested
 * arrays and maps, keys and values, every byte of every str, bin and ext.
 * msgpack-c's one-shot msgpack_unpack_next, taking one object after another,
 * is the cross-check for both.
 *
 * Options byte (see fuzz_input.h for the layout):
 *   bit 0      1: an ext object "raises" in the conversion, as without
 *              allow_unknown_ext: the stream stops and is destroyed mid-way
 *   bits 1-2   msgpack_unpacker_init's buffer for the stream: 65536 (the
 *              binding's), 1, 16 or 1024 bytes
 *
 * Besides what the sanitizers catch (leaks included), a finding is:
 *   - an object tree deeper than msgpack-c's stack allows (to_ruby recurses
 *     with no limit of its own, so it relies on that bound), an object type
 *     to_ruby does not know, or a container whose elements are missing;
 *   - the stream decoding depending on how the input was cut into reads;
 *   - the stream decoding (IO#msgpack_each) and msgpack_unpack_next one
 *     object after another disagreeing on the objects or on how the input
 *     ends;
 *   - unpack's decoding disagreeing with msgpack_unpack_next's first object
 *     (which object, where it ends, or how it fails). */
#include "fuzz_input.h"
#include <msgpack.h>
#include "msgpack_gate.h"
#include <stdbool.h>
#include <string.h>

#define FZ_BLOCK 65536
/* msgpack-c's parse stack (MSGPACK_EMBED_STACK_SIZE) bounds the nesting;
 * a tree deeper than this means the bound is gone. */
#define FZ_MAX_DEPTH 64

enum { END_CLEAN, END_TRUNCATED, END_MALFORMED, END_NOMEM, END_RAISED };

typedef struct walk {
  bool raise_on_ext;
  bool raised;
} walk;

static uint64_t walk_object(const msgpack_object *o, int depth, bool is_key, walk *w);

static uint64_t walk_bytes(uint64_t h, const char *ptr, uint32_t size) {
  FZ_CHECK(size == 0 || ptr != NULL, "%u bytes at NULL", size);
  h = fz_hash_u64(h, size);
  return fz_hash(h, ptr, size);
}

static uint64_t walk_object(const msgpack_object *o, int depth, bool is_key, walk *w) {
  FZ_CHECK(depth <= FZ_MAX_DEPTH, "an object tree deeper than %d levels: to_ruby would recurse that deep",
           FZ_MAX_DEPTH);
  uint64_t h = fz_hash_u64(FZ_HASH_INIT, (uint64_t)o->type * 2 + is_key);
  switch (o->type) {
  case MSGPACK_OBJECT_NIL: return h;
  case MSGPACK_OBJECT_BOOLEAN: return fz_hash_u64(h, o->via.boolean);
  case MSGPACK_OBJECT_POSITIVE_INTEGER: return fz_hash_u64(h, o->via.u64);
  case MSGPACK_OBJECT_NEGATIVE_INTEGER: return fz_hash_u64(h, (uint64_t)o->via.i64);
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64: return fz_hash(h, &o->via.f64, sizeof(o->via.f64));
  case MSGPACK_OBJECT_STR: return walk_bytes(h, o->via.str.ptr, o->via.str.size);
  case MSGPACK_OBJECT_BIN: return walk_bytes(h, o->via.bin.ptr, o->via.bin.size);
  case MSGPACK_OBJECT_EXT:
    if (w->raise_on_ext) w->raised = true;
    return walk_bytes(fz_hash_u64(h, (uint64_t)(int64_t)o->via.ext.type), o->via.ext.ptr, o->via.ext.size);
  case MSGPACK_OBJECT_ARRAY: {
    const msgpack_object_array *a = &o->via.array;
    FZ_CHECK(a->size == 0 || a->ptr != NULL, "an array of %u elements at NULL", a->size);
    h = fz_hash_u64(h, a->size);
    for (uint32_t i = 0; i < a->size && !w->raised; i++) h = fz_hash_u64(h, walk_object(&a->ptr[i], depth + 1, false, w));
    return h;
  }
  case MSGPACK_OBJECT_MAP: {
    const msgpack_object_map *m = &o->via.map;
    FZ_CHECK(m->size == 0 || m->ptr != NULL, "a map of %u pairs at NULL", m->size);
    h = fz_hash_u64(h, m->size);
    for (uint32_t i = 0; i < m->size && !w->raised; i++) {
      h = fz_hash_u64(h, walk_object(&m->ptr[i].key, depth + 1, true, w));
      if (w->raised) break;
      h = fz_hash_u64(h, walk_object(&m->ptr[i].val, depth + 1, false, w));
    }
    return h;
  }
  }
  FZ_CHECK(0, "msgpack-c produced object type %d, which to_ruby does not know", (int)o->type);
  return h;
}

typedef struct run_result {
  int end;
  size_t count;        /* messages converted completely */
  uint64_t *seq;       /* seq[i]: the hash of messages 0..i-1; seq[0] is FZ_HASH_INIT */
} run_result;

static void record(run_result *r, uint64_t h, size_t cap) {
  FZ_CHECK(r->count < cap, "more than %zu messages from as many bytes", cap - 1);
  r->seq[r->count + 1] = fz_hash_u64(r->seq[r->count], h);
  r->count++;
}

/* Yields every complete message in the buffer, as drain() does; false once
 * the stream has ended (malformed, or the conversion raised). */
static bool drain(msgpack_unpacker *u, run_result *r, walk *w, size_t cap) {
  for (;;) {
    int ret = msgpack_unpacker_execute(u);
    if (ret == 0) return true;
    if (ret < 0) {
      r->end = END_MALFORMED;
      return false;
    }
    msgpack_object obj = msgpack_unpacker_data(u);
    uint64_t h = walk_object(&obj, 0, false, w);
    if (w->raised) {
      r->end = END_RAISED; /* rb_raise from to_ruby: straight to the ensure, no reset */
      return false;
    }
    if (u->z) msgpack_unpacker_reset_zone(u);
    msgpack_unpacker_reset(u);
    record(r, h, cap);
  }
}

static void run_stream(const uint8_t *data, size_t len, uint8_t cut_seed, size_t init_size, bool raise_on_ext,
                       run_result *r) {
  r->end = END_CLEAN;
  r->count = 0;
  r->seq[0] = FZ_HASH_INIT;
  walk w = {raise_on_ext, false};
  msgpack_unpacker u;
  if (!msgpack_unpacker_init(&u, init_size)) {
    r->end = END_NOMEM;
    return;
  }
  fz_cuts cuts;
  fz_cuts_init(&cuts, cut_seed);
  rs_mp_gate g;
  memset(&g, 0, sizeof(g));
  size_t pos = 0;
  bool going = true;
  while (going && pos < len) {
    size_t n = fz_cuts_next(&cuts, len - pos);
    uint8_t *read = fz_read_copy(data + pos, n);
    pos += n;
    /* As msgpack.c's feed: through the gate (msgpack_gate.c) first. */
    if (rs_mp_gate_push(&g, (const char *)read, n) < 0 ||
        (g.pos && !msgpack_unpacker_reserve_buffer(&u, g.pos))) {
      r->end = END_NOMEM; /* rb_raise(rb_eNoMemError) */
      going = false;
    } else {
      if (g.pos) {
        memcpy(msgpack_unpacker_buffer(&u), g.buf, g.pos);
        msgpack_unpacker_buffer_consumed(&u, g.pos);
        rs_mp_gate_take(&g);
      }
      going = drain(&u, r, &w, len + 1);
      uint64_t at;
      if (going && rs_mp_gate_verdict(&g, &at)) {
        r->end = END_MALFORMED; /* malformed byte or nesting past the stack, held at the gate */
        going = false;
      }
    }
    free(read);
  }
  if (going && (msgpack_unpacker_message_size(&u) > 0 || g.len > 0)) r->end = END_TRUNCATED;
  msgpack_unpacker_destroy(&u);
  rs_mp_gate_free(&g);
}

typedef struct one_result {
  int end;             /* END_CLEAN: one message decoded */
  uint64_t hash;
  size_t size;         /* its bytes; the rest would be "extra bytes" */
} one_result;

/* Ringspun::MessagePack.unpack, as unpack_body does it. */
static void run_unpack(const uint8_t *data, size_t len, bool raise_on_ext, one_result *r) {
  memset(r, 0, sizeof(*r));
  walk w = {raise_on_ext, false};
  msgpack_unpacker u;
  if (!msgpack_unpacker_init(&u, len + 16)) {
    r->end = END_NOMEM;
    return;
  }
  uint8_t *str = fz_read_copy(data, len);
  rs_mp_gate g;
  memset(&g, 0, sizeof(g));
  if (rs_mp_gate_push(&g, (const char *)str, len) < 0 || !msgpack_unpacker_reserve_buffer(&u, g.pos + 1)) {
    r->end = END_NOMEM;
  } else {
    if (g.pos) memcpy(msgpack_unpacker_buffer(&u), g.buf, g.pos);
    msgpack_unpacker_buffer_consumed(&u, g.pos);
    rs_mp_gate_take(&g);
    int ret = msgpack_unpacker_execute(&u);
    uint64_t at;
    if (ret == 0) {
      r->end = rs_mp_gate_verdict(&g, &at) ? END_MALFORMED : END_TRUNCATED;
    } else if (ret < 0) {
      r->end = END_MALFORMED;
    } else {
      msgpack_object obj = msgpack_unpacker_data(&u);
      r->size = msgpack_unpacker_parsed_size(&u);
      FZ_CHECK(r->size > 0 && r->size <= len, "unpack: a message of %zu bytes from %zu", r->size, len);
      r->hash = walk_object(&obj, 0, false, &w);
      if (w.raised) {
        r->end = END_RAISED;
      } else {
        r->end = END_CLEAN;
        if (u.z) msgpack_unpacker_reset_zone(&u);
        msgpack_unpacker_reset(&u);
      }
    }
  }
  free(str);
  msgpack_unpacker_destroy(&u);
  rs_mp_gate_free(&g);
}

/* msgpack-c's one-shot API, one object after another: the sequence a
 * stream holds, found another way. first gets the first call's result. */
static void run_unpack_next(const uint8_t *data, size_t len, run_result *r, one_result *first) {
  first->end = len == 0 ? END_TRUNCATED : END_CLEAN;
  first->size = 0;
  r->end = END_CLEAN;
  r->count = 0;
  r->seq[0] = FZ_HASH_INIT;
  walk w = {false, false};
  msgpack_unpacked result;
  msgpack_unpacked_init(&result);
  /* Its own copy, freed right after: nothing may point into it later. */
  uint8_t *buf = fz_read_copy(data, len);
  /* msgpack-c would allocate what a held header declares (see
   * msgpack_gate.h): the oracle reads only what the gate lets through, and
   * what is held ends it as the gate's verdict says. */
  rs_mp_gate g;
  memset(&g, 0, sizeof(g));
  if (rs_mp_gate_push(&g, (const char *)buf, len) < 0) abort();
  size_t passed = g.pos;
  uint64_t at;
  int held = g.len > g.pos ? (rs_mp_gate_verdict(&g, &at) ? END_MALFORMED : END_TRUNCATED) : END_CLEAN;
  rs_mp_gate_free(&g);
  size_t off = 0;
  while (off < passed || (off == passed && held != END_CLEAN)) {
    if (off == passed) {
      r->end = held;
      if (r->count == 0) first->end = held;
      break;
    }
    size_t before = off;
    msgpack_unpack_return ret = msgpack_unpack_next(&result, (const char *)buf, passed, &off);
    /* Running out of the passed bytes mid-message is reaching the gate. */
    if (ret == MSGPACK_UNPACK_CONTINUE) r->end = held != END_CLEAN ? held : END_TRUNCATED;
    else if (ret == MSGPACK_UNPACK_NOMEM_ERROR) r->end = END_NOMEM;
    else if (ret < 0) r->end = END_MALFORMED;
    if (r->end != END_CLEAN) {
      if (r->count == 0) first->end = r->end;
      break;
    }
    FZ_CHECK(off > before && off <= passed, "msgpack_unpack_next succeeded, moving the offset from %zu to %zu of %zu",
             before, off, passed);
    uint64_t h = walk_object(&result.data, 0, false, &w);
    if (r->count == 0) {
      first->hash = h;
      first->size = off;
    }
    record(r, h, len + 1);
  }
  msgpack_unpacked_destroy(&result);
  free(buf);
}

static const char *end_name(int end) {
  static const char *names[] = {"clean end", "truncated", "malformed", "out of memory", "raised"};
  return end >= 0 && end <= END_RAISED ? names[end] : "?";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < FZ_HEADER) return 0;
  static const size_t init_sizes[4] = {FZ_BLOCK, 1, 16, 1024};
  uint8_t seed = data[0], opts = data[1];
  bool raise_on_ext = opts & 1;
  size_t init_size = init_sizes[(opts >> 1) & 3];
  const uint8_t *payload = data + FZ_HEADER;
  size_t len = size - FZ_HEADER;

  run_result whole, split, next;
  one_result one, first;
  uint64_t *seqs = malloc(3 * (len + 2) * sizeof(uint64_t));
  if (!seqs) abort();
  whole.seq = seqs;
  split.seq = seqs + (len + 2);
  next.seq = seqs + 2 * (len + 2);

  run_stream(payload, len, 0, FZ_BLOCK, false, &whole);
  run_stream(payload, len, seed, init_size, raise_on_ext, &split);
  run_unpack_next(payload, len, &next, &first);
  run_unpack(payload, len, raise_on_ext, &one);

  if (whole.end != END_NOMEM && split.end != END_NOMEM) {
    if (split.end == END_RAISED) {
      /* It stopped at the first ext; what came before must match. */
      FZ_CHECK(split.count <= whole.count && split.seq[split.count] == whole.seq[split.count],
               "with cut seed %u the stream stopped at an ext after %zu messages that differ from one read's",
               seed, split.count);
    } else {
      FZ_CHECK(whole.end == split.end && whole.count == split.count && whole.seq[whole.count] == split.seq[split.count],
               "the stream depends on the reads: one read: %zu messages, %s; cut seed %u: %zu messages, %s",
               whole.count, end_name(whole.end), seed, split.count, end_name(split.end));
    }
  }
  if (whole.end != END_NOMEM && next.end != END_NOMEM) {
    FZ_CHECK(whole.end == next.end && whole.count == next.count && whole.seq[whole.count] == next.seq[next.count],
             "IO#msgpack_each's decoding and MessagePack.unpack's disagree: the stream gives %zu messages, %s; "
             "msgpack_unpack_next gives %zu, %s",
             whole.count, end_name(whole.end), next.count, end_name(next.end));
  }
  if (one.end != END_NOMEM && first.end != END_NOMEM && one.end != END_RAISED) {
    FZ_CHECK(one.end == first.end && (one.end != END_CLEAN || (one.hash == first.hash && one.size == first.size)),
             "MessagePack.unpack's decoding (%s, %zu bytes) and msgpack_unpack_next's first object (%s, %zu bytes) "
             "disagree",
             end_name(one.end), one.size, end_name(first.end), first.size);
  }
  free(seqs);
  return 0;
}
