/* Native MessagePack: IO#msgpack_each decodes with msgpack-c straight from
 * the read-ahead reader's blocks (no String per read); Ringspun::MessagePack
 * .pack/.unpack for strings.
 *
 * Decoding is msgpack-c's own parser, unpack_template.h, the state machine
 * its msgpack_unpacker is built from, instantiated here with callbacks that
 * make Ruby objects as it parses: no msgpack_object tree in a zone to walk
 * afterwards, one pass over the bytes. Map keys that are strings become
 * deduplicated frozen strings, as the msgpack gem does. */
#include "ringspun.h"
#include <msgpack.h>
#include <msgpack/unpack_define.h>
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

/* ---- values as msgpack-c parses them ------------------------------------------------ */

static VALUE frozen_if(VALUE v, const mp_opts *opts) { return opts->freeze ? rb_obj_freeze(v) : v; }

static VALUE str_value(const char *p, size_t n, const mp_opts *opts, bool is_key) {
  if (is_key) return str_key(p, n, opts);
  return frozen_if(rb_utf8_str_new(p, (long)n), opts);
}

static VALUE bin_value(const char *p, size_t n, const mp_opts *opts, bool is_key) {
  VALUE v = rb_str_new(p, (long)n);
  if (is_key && opts->symbolize_keys) return rb_str_intern(v); /* as the gem does */
  return frozen_if(v, opts);
}

/* n counts the type byte. */
static VALUE ext_value(const char *p, size_t n, const mp_opts *opts) {
  int type = (int8_t)p[0];
  if (!opts->allow_unknown_ext) rb_raise(eUnknownExt, "unexpected extension type %d", type);
  VALUE payload = frozen_if(rb_str_new(p + 1, (long)n - 1), opts);
  return frozen_if(rb_struct_new(cExtensionValue, INT2FIX(type), payload), opts);
}

/* msgpack-c's parser as an instance of unpack_template.h. Its context
 * (the parse state and the stack of open containers, each holding the Ruby
 * Array or Hash being filled) lives in an mp_stream on the machine stack of
 * the method's caller, so the GC finds those VALUEs there, and pins them,
 * while a message is only partly parsed, across reads and fiber switches.
 * Each callback returns 0, or a negative code that ends the parse. */
typedef struct mp_user {
  const mp_opts *opts;
} mp_user;

/* What the ext callback returns for an ext32 of 0xffffffff bytes: msgpack-c
 * adds the type byte in 32 bits and hands us a length of 0. The gem waits
 * for the 4 GiB; so do we (mp_stream.stalled). */
#define RS_MP_EXT_TOO_LONG (-3)
/* Elements made room for when an array's header is read: a header may
 * declare 2**32 - 1 of them in 5 bytes, and memory stays proportional to
 * the input only if the rest come as the elements do. */
#define RS_MP_PREALLOC_MAX 4096

static VALUE cb_root(mp_user *u) { return Qnil; }
static int cb_uint8(mp_user *u, uint8_t d, VALUE *o) { *o = INT2FIX(d); return 0; }
static int cb_uint16(mp_user *u, uint16_t d, VALUE *o) { *o = INT2FIX(d); return 0; }
static int cb_uint32(mp_user *u, uint32_t d, VALUE *o) { *o = ULONG2NUM(d); return 0; }
static int cb_uint64(mp_user *u, uint64_t d, VALUE *o) { *o = ULL2NUM(d); return 0; }
static int cb_int8(mp_user *u, int8_t d, VALUE *o) { *o = INT2FIX(d); return 0; }
static int cb_int16(mp_user *u, int16_t d, VALUE *o) { *o = INT2FIX(d); return 0; }
static int cb_int32(mp_user *u, int32_t d, VALUE *o) { *o = LONG2NUM(d); return 0; }
static int cb_int64(mp_user *u, int64_t d, VALUE *o) { *o = LL2NUM(d); return 0; }
static int cb_float(mp_user *u, float d, VALUE *o) { *o = DBL2NUM((double)d); return 0; }
static int cb_double(mp_user *u, double d, VALUE *o) { *o = DBL2NUM(d); return 0; }
static int cb_nil(mp_user *u, VALUE *o) { *o = Qnil; return 0; }
static int cb_true(mp_user *u, VALUE *o) { *o = Qtrue; return 0; }
static int cb_false(mp_user *u, VALUE *o) { *o = Qfalse; return 0; }

static int cb_array(mp_user *u, unsigned int n, VALUE *o) {
  *o = rb_ary_new_capa(n < RS_MP_PREALLOC_MAX ? (long)n : RS_MP_PREALLOC_MAX);
  if (n == 0) *o = frozen_if(*o, u->opts); /* no item will come to freeze it */
  return 0;
}

static int cb_map(mp_user *u, unsigned int n, VALUE *o) {
  *o = rb_hash_new();
  if (n == 0) *o = frozen_if(*o, u->opts);
  return 0;
}

static int array_item(mp_user *u, VALUE *c, VALUE o, bool last) {
  rb_ary_push(*c, o);
  if (last) frozen_if(*c, u->opts);
  return 0;
}

static int map_item(mp_user *u, VALUE *c, VALUE k, VALUE v, bool last) {
  rb_hash_aset(*c, k, v);
  if (last) frozen_if(*c, u->opts);
  return 0;
}

static int raw_item(mp_user *u, const char *p, unsigned int l, VALUE *o, bool is_key, bool bin) {
  if (l == 0) p = ""; /* msgpack-c may hand over NULL for no bytes; memcmp and friends want a pointer */
  *o = bin ? bin_value(p, l, u->opts, is_key) : str_value(p, l, u->opts, is_key);
  return 0;
}

static int cb_ext(mp_user *u, const char *b, const char *p, unsigned int l, VALUE *o) {
  if (l == 0) return RS_MP_EXT_TOO_LONG;
  *o = ext_value(p, l, u->opts);
  return 0;
}

/* The template has no callback for "this container is complete" nor says
 * whether a str is a map key; both are in its own parse state, its locals
 * `stack` and `top` (the open containers; each callback below runs with
 * them in scope). Reading them here keys strings as they are made, in
 * stream order, and freezes a container once its last element is in. If a
 * msgpack-c release renamed them, this would fail to compile, not misread. */
#define RS_MP_IN_KEY (top > 0 && stack[top - 1].ct == MSGPACK_CT_MAP_KEY)
#define RS_MP_LAST (stack[top - 1].count == 1)
#define cb_str(u, b, p, l, o) raw_item(u, p, l, o, RS_MP_IN_KEY, false)
#define cb_bin(u, b, p, l, o) raw_item(u, p, l, o, RS_MP_IN_KEY, true)
#define cb_array_item(u, c, o) array_item(u, c, o, RS_MP_LAST)
#define cb_map_item(u, c, k, v) map_item(u, c, k, v, RS_MP_LAST)

#define msgpack_unpack_struct(name) struct rs_mp##name
#define msgpack_unpack_func(ret, name) static ret rs_mp##name
#define msgpack_unpack_callback(name) cb##name
#define msgpack_unpack_object VALUE
#define msgpack_unpack_user mp_user
#include <msgpack/unpack_template.h>

typedef struct rs_mp_context mp_parser;

/* ---- the stream decoder ------------------------------------------------------------- */

NORETURN(static void raise_malformed(uint64_t offset));
static void raise_malformed(uint64_t offset) {
  rb_raise(eMalformed, "malformed MessagePack data at byte offset %llu", (unsigned long long)offset);
}

typedef struct mp_stream {
  mp_parser ctx;
  /* The bytes from the start of the message being parsed: msgpack-c's
   * input, and what a loop that ends early (break, Timeout, an error) gives
   * back to the IO's buffer. */
  char *buf;
  size_t len, cap;
  size_t start;   /* where the unfinished message starts */
  size_t pos;     /* where msgpack-c goes on */
  uint64_t base;  /* the stream offset of buf[0] */
  bool stalled;   /* an ext32 of 0xffffffff bytes: nothing completes any more */
  mp_opts opts;
  VALUE io;
  rs_reader r;
  bool reader_ready;
} mp_stream;

static void parser_init(mp_stream *m) {
  rs_mp_init(&m->ctx);
  m->ctx.user.opts = &m->opts;
}

/* Appends input, first dropping the messages already yielded. */
static void feed(mp_stream *m, const char *data, size_t n) {
  if (n == 0) return; /* (MessagePack.unpack("")): nothing to keep, and no buffer yet */
  if (m->start > 0) {
    memmove(m->buf, m->buf + m->start, m->len - m->start);
    m->len -= m->start;
    m->pos -= m->start;
    m->base += m->start;
    m->start = 0;
  }
  if (m->len + n > m->cap) {
    size_t cap = m->cap ? m->cap : RS_BLOCK_SIZE;
    while (cap < m->len + n) cap *= 2;
    char *b = realloc(m->buf, cap);
    if (!b) rb_raise(rb_eNoMemError, "msgpack: cannot grow the buffer");
    m->buf = b;
    m->cap = cap;
  }
  memcpy(m->buf + m->len, data, n);
  m->len += n;
}

/* Bytes of an unfinished message. */
static bool mid_message(mp_stream *m) { return m->len > m->start; }

/* Where the parse stopped on an error: at the byte that starts no value,
 * or at the header of the container that would open past the stack (for a
 * 16- or 32-bit count, msgpack-c stops on the count's last byte). */
NORETURN(static void raise_parse(mp_stream *m, int ret, size_t at));
static void raise_parse(mp_stream *m, int ret, size_t at) {
  uint64_t offset = m->base + at;
  if (ret != MSGPACK_UNPACK_NOMEM_ERROR) raise_malformed(offset);
  if (m->ctx.cs != MSGPACK_CS_HEADER) offset -= m->ctx.trail;
  rb_raise(eStackError, "MessagePack nested deeper than %d levels (msgpack-c's limit) at byte offset %llu",
           RS_MAX_DEPTH, (unsigned long long)offset);
}

/* The next complete message in the buffer, or false. */
static bool next_message(mp_stream *m, VALUE *out) {
  if (m->stalled) return false;
  size_t at = m->pos;
  int ret = rs_mp_execute(&m->ctx, m->buf, m->len, &at);
  if (ret == RS_MP_EXT_TOO_LONG) {
    m->stalled = true;
    return false;
  }
  if (ret < 0) raise_parse(m, ret, at);
  m->pos = at; /* on 0, msgpack-c goes on from there when more comes */
  if (ret == 0) return false;
  *out = rs_mp_data(&m->ctx);
  m->start = at;
  parser_init(m);
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
  }
  if (mid_message(m))
    rb_raise(rb_eEOFError, "end of input inside a MessagePack object (byte offset %llu)",
             (unsigned long long)(m->base + m->len));
  return m->io;
}

static VALUE stream_ensure(VALUE p) {
  mp_stream *m = (mp_stream *)p;
  /* Given back in one piece, in stream order: the unfinished message's
   * bytes, then what the reader read ahead. */
  VALUE back = Qnil;
  if (m->reader_ready) rs_reader_cleanup_into(&m->r, &back);
  back = rs_bytes_prepend(back, m->buf + m->start, (long)(m->len - m->start));
  free(m->buf);
  m->buf = NULL;
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
  parser_init(&m);
  rb_io_t *fptr;
  GetOpenFile(self, fptr);
  rb_io_check_readable(fptr);
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
  if (!next_message(m, &v)) rb_raise(rb_eEOFError, "end of input inside a MessagePack object");
  uint64_t extra = m->len - m->start;
  if (extra) rb_raise(eMalformed, "%llu extra bytes after the deserialized object", (unsigned long long)extra);
  return v;
}

static VALUE unpack_ensure(VALUE p) {
  free(((mp_stream *)p)->buf);
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
  parser_init(&m);
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
