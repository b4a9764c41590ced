/* Native MessagePack: IO#msgpack_each decodes with msgpack-c straight from
 * the read-ahead reader's blocks (no String per read); Ringspun::MessagePack
 * .pack/.unpack for strings.
 *
 * msgpack-c builds each message as an object tree in its zone; we turn the
 * tree into Ruby objects and clear the zone for the next message, so the
 * zone's memory is reused rather than allocated per message. Map keys that
 * are strings become deduplicated frozen strings, as the msgpack gem does. */
#include "ringspun.h"
#include <msgpack.h>
#include <msgpack/unpack_define.h>
#include "core/msgpack_gate.h"
#include <ruby/encoding.h>
#include <ruby/io.h>

/* msgpack-c's parser keeps a fixed stack of MSGPACK_EMBED_STACK_SIZE (32, unpack_define.h)
 * containers; pack refuses what unpack could not read back. */
#define RS_MAX_DEPTH MSGPACK_EMBED_STACK_SIZE

static VALUE mMessagePack, cExtensionValue, eMalformed, eUnknownExt, eStackError;

typedef struct mp_opts {
  bool symbolize_keys, freeze, allow_unknown_ext;
  VALUE keys; /* a key cache (below) or Qnil */
} mp_opts;

/* ---- msgpack_object -> VALUE ------------------------------------------------------ */

static VALUE to_ruby(const msgpack_object *o, const mp_opts *opts, bool is_key);

/* A stream's map keys repeat from one message to the next. Turning their
 * bytes into a frozen String costs rb_enc_interned_str a hash, a probe of
 * Ruby's fstring table and encoding checks, about 700 instructions a key on
 * Ruby 3.1 (and an extra String for a Symbol). So msgpack_each keeps the
 * keys it made in a small direct-mapped cache: a hidden Array whose slot i
 * holds a key's frozen String (to compare bytes with) and slot
 * KEY_SLOTS + i the key itself (the same String, or its Symbol). Reading
 * through the Array keeps the keys alive and lets compaction move them.
 * A hit gives the very object a miss would have made. */
#define KEY_SLOTS 256
#define KEY_MAX_LEN 64 /* longer keys are rare and costly to compare */

static VALUE key_cache_new(void) {
  VALUE a = rb_ary_tmp_new(2 * KEY_SLOTS);
  rb_ary_store(a, 2 * KEY_SLOTS - 1, Qnil); /* fills every slot with nil */
  return a;
}

static long key_slot(const char *p, size_t n) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 16777619u;
  return (long)((h ^ (h >> 15)) & (KEY_SLOTS - 1));
}

static VALUE make_key(const char *p, size_t n, const mp_opts *opts) {
  if (opts->symbolize_keys) return rb_str_intern(rb_utf8_str_new(p, (long)n));
  return rb_enc_interned_str(p, (long)n, rb_utf8_encoding());
}

static VALUE str_key(const char *p, size_t n, const mp_opts *opts) {
  VALUE cache = opts->keys;
  if (NIL_P(cache) || n > KEY_MAX_LEN) return make_key(p, n, opts);
  long i = key_slot(p, n);
  VALUE s = RARRAY_AREF(cache, i);
  if (!NIL_P(s) && (size_t)RSTRING_LEN(s) == n && memcmp(RSTRING_PTR(s), p, n) == 0)
    return RARRAY_AREF(cache, KEY_SLOTS + i);
  VALUE key = make_key(p, n, opts); /* may raise (a Symbol from invalid UTF-8): the slot stays as it was */
  rb_ary_store(cache, i, opts->symbolize_keys ? rb_enc_interned_str(p, (long)n, rb_utf8_encoding()) : key);
  rb_ary_store(cache, KEY_SLOTS + i, key);
  return key;
}

static VALUE str_value(const msgpack_object_str *s, const mp_opts *opts, bool is_key) {
  if (is_key) return str_key(s->ptr, s->size, opts);
  VALUE v = rb_utf8_str_new(s->ptr, s->size);
  return opts->freeze ? rb_obj_freeze(v) : v;
}

static VALUE ext_value(const msgpack_object_ext *e, const mp_opts *opts) {
  if (!opts->allow_unknown_ext) rb_raise(eUnknownExt, "unexpected extension type %d", (int)e->type);
  VALUE payload = rb_str_new(e->ptr, e->size);
  VALUE v = rb_struct_new(cExtensionValue, INT2FIX(e->type), opts->freeze ? rb_obj_freeze(payload) : payload);
  return opts->freeze ? rb_obj_freeze(v) : v;
}

static VALUE array_value(const msgpack_object_array *a, const mp_opts *opts) {
  VALUE v = rb_ary_new_capa((long)a->size);
  for (uint32_t i = 0; i < a->size; i++) rb_ary_push(v, to_ruby(&a->ptr[i], opts, false));
  return opts->freeze ? rb_obj_freeze(v) : v;
}

static VALUE map_value(const msgpack_object_map *m, const mp_opts *opts) {
  VALUE v = rb_hash_new();
  for (uint32_t i = 0; i < m->size; i++) {
    /* The key first, then the value, as the msgpack gem decodes them (as
     * two arguments of one call, C would not fix the order). */
    VALUE key = to_ruby(&m->ptr[i].key, opts, true);
    rb_hash_aset(v, key, to_ruby(&m->ptr[i].val, opts, false));
  }
  return opts->freeze ? rb_obj_freeze(v) : v;
}

static VALUE to_ruby(const msgpack_object *o, const mp_opts *opts, bool is_key) {
  switch (o->type) {
  case MSGPACK_OBJECT_NIL: return Qnil;
  case MSGPACK_OBJECT_BOOLEAN: return o->via.boolean ? Qtrue : Qfalse;
  case MSGPACK_OBJECT_POSITIVE_INTEGER: return ULL2NUM(o->via.u64);
  case MSGPACK_OBJECT_NEGATIVE_INTEGER: return LL2NUM(o->via.i64);
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64: return DBL2NUM(o->via.f64);
  case MSGPACK_OBJECT_STR: return str_value(&o->via.str, opts, is_key);
  case MSGPACK_OBJECT_BIN: {
    VALUE v = rb_str_new(o->via.bin.ptr, o->via.bin.size);
    if (is_key && opts->symbolize_keys) return rb_str_intern(v); /* as the gem does */
    return opts->freeze ? rb_obj_freeze(v) : v;
  }
  case MSGPACK_OBJECT_ARRAY: return array_value(&o->via.array, opts);
  case MSGPACK_OBJECT_MAP: return map_value(&o->via.map, opts);
  case MSGPACK_OBJECT_EXT: return ext_value(&o->via.ext, opts);
  }
  rb_raise(eMalformed, "unknown msgpack object type %d", (int)o->type);
}

/* ---- the stream decoder ------------------------------------------------------------- */

NORETURN(static void raise_malformed(uint64_t offset));
static void raise_malformed(uint64_t offset) {
  rb_raise(eMalformed, "malformed MessagePack data at byte offset %llu", (unsigned long long)offset);
}

typedef struct mp_stream {
  msgpack_unpacker u;
  bool u_ready;
  rs_mp_gate gate;
  /* The bytes of the message msgpack-c is in the middle of, so a loop that
   * ends early (break, Timeout) can put them back into the IO's buffer. */
  char *raw;
  size_t raw_off, raw_len, raw_cap;
  mp_opts opts;
  VALUE io;
  rs_reader r;
  bool reader_ready;
  uint64_t done_bytes; /* bytes of the messages already yielded */
} mp_stream;

static void keep_raw(mp_stream *m, const char *data, size_t n) {
  if (m->raw_off > 0 && m->raw_off >= m->raw_len / 2) { /* compact now and then */
    memmove(m->raw, m->raw + m->raw_off, m->raw_len - m->raw_off);
    m->raw_len -= m->raw_off;
    m->raw_off = 0;
  }
  if (m->raw_len + n > m->raw_cap) {
    size_t cap = m->raw_cap ? m->raw_cap : 4096;
    while (cap < m->raw_len + n) cap *= 2;
    char *b = realloc(m->raw, cap);
    if (!b) rb_raise(rb_eNoMemError, "msgpack: cannot grow the buffer");
    m->raw = b;
    m->raw_cap = cap;
  }
  memcpy(m->raw + m->raw_len, data, n);
  m->raw_len += n;
}

static void feed(mp_stream *m, const char *data, size_t n) {
  rs_mp_gate *g = &m->gate;
  if (rs_mp_gate_push(g, data, n) < 0) rb_raise(rb_eNoMemError, "msgpack: cannot grow the buffer");
  if (g->pos == 0) return;
  if (m->io != Qnil && RB_TYPE_P(m->io, T_FILE)) keep_raw(m, g->buf, g->pos);
  if (!msgpack_unpacker_reserve_buffer(&m->u, g->pos)) rb_raise(rb_eNoMemError, "msgpack: cannot grow the buffer");
  memcpy(msgpack_unpacker_buffer(&m->u), g->buf, g->pos);
  msgpack_unpacker_buffer_consumed(&m->u, g->pos);
  rs_mp_gate_take(g);
}

/* What the gate holds back may already be wrong in a way a decoder reading
 * in order would report first: say so now, at its stream offset. */
static void gate_reject_invalid(rs_mp_gate *g) {
  uint64_t at;
  int v = rs_mp_gate_verdict(g, &at);
  if (v == 1) raise_malformed(at);
  if (v == 2)
    rb_raise(eStackError, "MessagePack nested deeper than %d levels (msgpack-c's limit) at byte offset %llu",
             RS_MAX_DEPTH, (unsigned long long)at);
}

/* Bytes of an unfinished message: msgpack-c's, and any held at the gate. */
static bool mid_message(mp_stream *m) { return msgpack_unpacker_message_size(&m->u) > 0 || m->gate.len > 0; }


NORETURN(static void raise_parse(int ret, uint64_t offset));
static void raise_parse(int ret, uint64_t offset) {
  if (ret == MSGPACK_UNPACK_NOMEM_ERROR)
    rb_raise(eStackError, "MessagePack nested deeper than %d levels (msgpack-c's limit) at byte offset %llu",
             RS_MAX_DEPTH, (unsigned long long)offset);
  raise_malformed(offset);
}

/* The next complete message in the buffer, or false. */
static bool next_message(mp_stream *m, VALUE *out) {
  int ret = msgpack_unpacker_execute(&m->u);
  if (ret == 0) return false;
  if (ret < 0) raise_parse(ret, m->done_bytes + msgpack_unpacker_parsed_size(&m->u));
  msgpack_object obj = msgpack_unpacker_data(&m->u);
  size_t size = msgpack_unpacker_parsed_size(&m->u);
  m->done_bytes += size;
  m->raw_off = m->raw_off + size > m->raw_len ? m->raw_len : m->raw_off + size;
  *out = to_ruby(&obj, &m->opts, false);
  /* The zone's chunks are kept and reused for the next message. msgpack-c
   * 4 creates the zone only once a message needs one. */
  if (m->u.z) msgpack_unpacker_reset_zone(&m->u);
  msgpack_unpacker_reset(&m->u);
  return true;
}

/* Yields every complete message in the buffer. */
static void drain(mp_stream *m) {
  VALUE v;
  while (next_message(m, &v)) rb_yield(v);
}

static VALUE stream_body(VALUE p) {
  mp_stream *m = (mp_stream *)p;
  for (;;) {
    const char *data = NULL;
    ssize_t n = rs_reader_next(&m->r, &data);
    if (n < 0) rs_raise_errno((int)-n, "msgpack_each");
    if (n == 0) break;
    feed(m, data, (size_t)n);
    drain(m);
    gate_reject_invalid(&m->gate);
  }
  if (mid_message(m))
    rb_raise(rb_eEOFError, "end of input inside a MessagePack object (byte offset %llu)",
             (unsigned long long)(m->done_bytes + msgpack_unpacker_parsed_size(&m->u)));
  return m->io;
}

static VALUE stream_ensure(VALUE p) {
  mp_stream *m = (mp_stream *)p;
  /* Given back in one piece, in stream order: the unfinished message's
   * bytes, what the gate held, then what the reader read ahead. */
  VALUE back = Qnil;
  if (m->reader_ready) rs_reader_cleanup_into(&m->r, &back);
  back = rs_bytes_prepend(back, m->gate.buf, (long)m->gate.len);
  back = rs_bytes_prepend(back, m->raw + m->raw_off, (long)(m->raw_len - m->raw_off));
  free(m->raw);
  m->raw = NULL;
  if (m->u_ready) msgpack_unpacker_destroy(&m->u);
  m->u_ready = false;
  rs_mp_gate_free(&m->gate);
  /* Last: it may raise (Ruby's buffer too small), with everything freed. */
  if (!NIL_P(back)) rs_io_unread(m->io, RSTRING_PTR(back), RSTRING_LEN(back));
  RB_GC_GUARD(back);
  return Qnil;
}

static mp_opts parse_opts(VALUE hash) {
  mp_opts o = {false, false, false, Qnil};
  if (NIL_P(hash)) return o;
  ID keys[3] = {rb_intern("symbolize_keys"), rb_intern("freeze"), rb_intern("allow_unknown_ext")};
  VALUE vals[3];
  rb_get_kwargs(hash, keys, 0, 3, vals);
  o.symbolize_keys = vals[0] != Qundef && RTEST(vals[0]);
  o.freeze = vals[1] != Qundef && RTEST(vals[1]);
  o.allow_unknown_ext = vals[2] != Qundef && RTEST(vals[2]);
  return o;
}

/* The Ruby method is defined in lib/ringspun/msgpack.rb (Enumerator when
 * no block is given); this is its C body. */
static VALUE io_msgpack_each_native(int argc, VALUE *argv, VALUE self) {
  VALUE opts;
  rb_scan_args(argc, argv, ":", &opts);
  rb_need_block();
  mp_stream m;
  memset(&m, 0, sizeof(m));
  m.opts = parse_opts(opts);
  m.opts.keys = key_cache_new(); /* on this stack, in m: marked and pinned while we run */
  m.io = self;
  rb_io_t *fptr;
  GetOpenFile(self, fptr);
  rb_io_check_readable(fptr);
  if (!msgpack_unpacker_init(&m.u, RS_BLOCK_SIZE)) rb_raise(rb_eNoMemError, "msgpack_each: cannot allocate");
  m.u_ready = true;
  rs_reader_init(&m.r, rb_io_descriptor(self), RS_BLOCK_SIZE);
  rs_reader_set_io(&m.r, self); /* what Ruby buffered comes first */
  m.reader_ready = true;
  rs_reader_allow_multishot(&m.r);
  VALUE ret = rb_ensure(stream_body, (VALUE)&m, stream_ensure, (VALUE)&m);
  RB_GC_GUARD(m.opts.keys);
  return ret;
}

/* ---- unpack a String ------------------------------------------------------------------ */

static VALUE unpack_body(VALUE p) {
  mp_stream *m = (mp_stream *)p;
  VALUE str = m->io;
  feed(m, RSTRING_PTR(str), (size_t)RSTRING_LEN(str));
  VALUE v;
  if (!next_message(m, &v)) {
    gate_reject_invalid(&m->gate);
    rb_raise(rb_eEOFError, "end of input inside a MessagePack object");
  }
  uint64_t extra = (uint64_t)RSTRING_LEN(str) - m->done_bytes; /* gate bytes included */
  if (extra) rb_raise(eMalformed, "%llu extra bytes after the deserialized object", (unsigned long long)extra);
  return v;
}

static VALUE unpack_ensure(VALUE p) {
  msgpack_unpacker_destroy(&((mp_stream *)p)->u);
  rs_mp_gate_free(&((mp_stream *)p)->gate);
  return Qnil;
}

static VALUE mp_unpack(int argc, VALUE *argv, VALUE self) {
  VALUE str, opts;
  rb_scan_args(argc, argv, "1:", &str, &opts);
  StringValue(str);
  mp_stream m;
  memset(&m, 0, sizeof(m));
  m.opts = parse_opts(opts);
  m.io = rb_str_new_frozen(str); /* the input, here */
  if (!msgpack_unpacker_init(&m.u, (size_t)RSTRING_LEN(str) + 16)) rb_raise(rb_eNoMemError, "unpack: cannot allocate");
  VALUE v = rb_ensure(unpack_body, (VALUE)&m, unpack_ensure, (VALUE)&m);
  RB_GC_GUARD(m.io);
  return v;
}

/* ---- pack -------------------------------------------------------------------------------- */

static int write_to_string(void *data, const char *buf, size_t len) {
  rb_str_cat((VALUE)data, buf, (long)len);
  return 0;
}

static void pack_value(msgpack_packer *pk, VALUE v, int depth);

static void pack_integer(msgpack_packer *pk, VALUE v) {
  if (FIXNUM_P(v)) {
    msgpack_pack_int64(pk, FIX2LONG(v));
  } else if (rb_big_sign(v)) { /* non-negative */
    if (rb_absint_size(v, NULL) > 8) rb_raise(rb_eRangeError, "Integer too big to pack as MessagePack: %" PRIsVALUE, v);
    msgpack_pack_uint64(pk, rb_big2ull(v));
  } else {
    int nlz = 0;
    size_t sz = rb_absint_size(v, &nlz);
    /* The smallest is -2**63: eight bytes with the top bit set, and
     * no other bit set. */
    if (sz > 8 || (sz == 8 && nlz == 0 && !rb_absint_singlebit_p(v)))
      rb_raise(rb_eRangeError, "Integer too small to pack as MessagePack: %" PRIsVALUE, v);
    msgpack_pack_int64(pk, rb_big2ll(v));
  }
}

static void pack_string(msgpack_packer *pk, VALUE v) {
  const char *p = RSTRING_PTR(v);
  size_t n = (size_t)RSTRING_LEN(v);
  if (n > 0xffffffffUL) rb_raise(rb_eRangeError, "String too long for MessagePack");
  int enc = rb_enc_get_index(v);
  if (enc == rb_ascii8bit_encindex()) {
    msgpack_pack_bin(pk, n);
    msgpack_pack_bin_body(pk, p, n);
    return;
  }
  if (enc != rb_utf8_encindex() && !(enc == rb_usascii_encindex() || rb_enc_str_asciionly_p(v))) {
    /* str is UTF-8 by definition: transcode, as the msgpack gem does. */
    v = rb_str_encode(v, rb_enc_from_encoding(rb_utf8_encoding()), 0, Qnil);
    pack_string(pk, v);
    return;
  }
  {
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, p, n);
  }
}

typedef struct pack_ctx {
  msgpack_packer *pk;
  int depth;
} pack_ctx;

static int pack_pair(VALUE key, VALUE val, VALUE p) {
  pack_ctx *c = (pack_ctx *)p;
  pack_value(c->pk, key, c->depth);
  pack_value(c->pk, val, c->depth);
  return ST_CONTINUE;
}

static void check_depth(int depth) {
  if (depth >= RS_MAX_DEPTH)
    rb_raise(eStackError, "MessagePack nested deeper than %d levels (msgpack-c's limit)", RS_MAX_DEPTH);
}

static void pack_value(msgpack_packer *pk, VALUE v, int depth) {
  switch (rb_type(v)) {
  case T_NIL: msgpack_pack_nil(pk); return;
  case T_TRUE: msgpack_pack_true(pk); return;
  case T_FALSE: msgpack_pack_false(pk); return;
  case T_FIXNUM:
  case T_BIGNUM: pack_integer(pk, v); return;
  case T_FLOAT: msgpack_pack_double(pk, RFLOAT_VALUE(v)); return;
  case T_STRING: pack_string(pk, v); return;
  case T_SYMBOL: pack_string(pk, rb_sym2str(v)); return;
  case T_ARRAY: {
    check_depth(depth);
    long n = RARRAY_LEN(v);
    msgpack_pack_array(pk, (size_t)n);
    for (long i = 0; i < RARRAY_LEN(v) && i < n; i++) pack_value(pk, RARRAY_AREF(v, i), depth + 1);
    return;
  }
  case T_HASH: {
    check_depth(depth);
    msgpack_pack_map(pk, (size_t)RHASH_SIZE(v));
    pack_ctx c = {pk, depth + 1};
    rb_hash_foreach(v, pack_pair, (VALUE)&c);
    return;
  }
  default:
    if (rb_obj_is_kind_of(v, cExtensionValue)) {
      VALUE payload = RSTRUCT_GET(v, 1);
      StringValue(payload);
      int type = NUM2INT(RSTRUCT_GET(v, 0));
      if (type < -128 || type > 127) rb_raise(rb_eRangeError, "extension type must be -128..127");
      msgpack_pack_ext(pk, (size_t)RSTRING_LEN(payload), (int8_t)type);
      msgpack_pack_ext_body(pk, RSTRING_PTR(payload), (size_t)RSTRING_LEN(payload));
      return;
    }
    rb_raise(rb_eTypeError, "can't pack %" PRIsVALUE " as MessagePack", rb_obj_class(v));
  }
}

/* Packs each argument in turn into one binary String. */
static VALUE mp_pack_all(VALUE self, VALUE objs) {
  Check_Type(objs, T_ARRAY);
  VALUE out = rb_str_buf_new(64);
  msgpack_packer pk;
  msgpack_packer_init(&pk, (void *)out, write_to_string);
  for (long i = 0; i < RARRAY_LEN(objs); i++) pack_value(&pk, RARRAY_AREF(objs, i), 0);
  return out;
}

static VALUE mp_pack(VALUE self, VALUE obj) { return mp_pack_all(self, rb_ary_new_from_args(1, obj)); }

void rs_init_msgpack(VALUE mRingspun) {
  mMessagePack = rb_define_module_under(mRingspun, "MessagePack");
  VALUE eUnpack = rb_define_class_under(mMessagePack, "UnpackError", rb_eStandardError);
  eMalformed = rb_define_class_under(mMessagePack, "MalformedFormatError", eUnpack);
  eUnknownExt = rb_define_class_under(mMessagePack, "UnknownExtTypeError", eUnpack);
  eStackError = rb_define_class_under(mMessagePack, "StackError", eUnpack);
  cExtensionValue = rb_struct_define_under(mMessagePack, "ExtensionValue", "type", "payload", NULL);
  rb_define_module_function(mMessagePack, "pack", mp_pack, 1);
  rb_define_module_function(mMessagePack, "pack_all", mp_pack_all, 1);
  rb_define_module_function(mMessagePack, "unpack", mp_unpack, -1);
  rb_define_private_method(rb_cIO, "__msgpack_each", io_msgpack_each_native, -1);
}
