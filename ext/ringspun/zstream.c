/* Streaming compression between descriptors: IO.gzip, IO.gunzip,
 * IO.deflate, IO.inflate.
 *
 * Input and output live in pool blocks, two of each: under a Ringspun
 * scheduler on io_uring the next read is in flight while zlib works on the
 * current block, and the previous write is in flight while the next output
 * is produced. deflate() and inflate() run with the GVL released. End of
 * input is a read of 0 bytes, never a short read. */
#include "ringspun.h"
#include "core/zcore.h"
#include <errno.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

enum zmode { ZM_GZIP, ZM_GUNZIP, ZM_DEFLATE, ZM_INFLATE };
enum { SRC_FD, SRC_STRING, SRC_READER };
enum { DST_FD, DST_STRING, DST_WRITER };

/* Feed zlib at most this much of a String source per GVL release. */
#define RS_STRING_SLICE (1U << 20)

static ID id_readpartial, id_write, id_mtime, id_orig_name, id_comment, id_os, id_level, id_strategy, id_to_i;
static VALUE eZlibError; /* resolved lazily: zlib is required on first use */

typedef struct zjob {
  int mode;
  const char *name; /* the Ruby method, for messages */
  z_stream z;       /* compressing */
  rs_unzip u;       /* decompressing (zcore.c) */
  z_stream *zs;     /* the one in use */
  bool z_ready;
  rs_buf_pool *pool;
  /* source */
  int src_kind;
  int src_fd;
  VALUE src_obj;
  VALUE src_chunk;    /* the String a reader returned last */
  size_t src_off;     /* String source: bytes handed to zlib so far */
  bool src_eof;
  rs_reader rd;
  bool rd_ready;
  /* destination */
  int dst_kind;
  int dst_fd;
  VALUE dst_obj;
  void *out_block[2];
  int out_cur;
  rs_pending wr;
  int64_t written;
  /* gzip */
  gz_header hdr;    /* compressing: the header we write */
  Bytef *name_buf, *comment_buf;
  VALUE info;
} zjob;

/* ---- errors ------------------------------------------------------------------------ */

static VALUE zlib_class(const char *path) {
  if (NIL_P(eZlibError) || !eZlibError) {
    rb_require("zlib");
    eZlibError = rb_path2class("Zlib::Error");
  }
  return rb_path2class(path);
}

NORETURN(static void raise_zlib(const char *klass, const char *msg));
static void raise_zlib(const char *klass, const char *msg) { rb_raise(zlib_class(klass), "%s", msg); }

/* Compressing fails only on bad arguments or memory. */
NORETURN(static void raise_for(zjob *j, int ret));
static void raise_for(zjob *j, int ret) {
  const char *msg = j->z.msg ? j->z.msg : zError(ret);
  if (ret == Z_MEM_ERROR) rb_raise(rb_eNoMemError, "%s: zlib: %s", j->name, msg);
  if (ret == Z_BUF_ERROR) raise_zlib("Zlib::BufError", msg);
  raise_zlib("Zlib::StreamError", msg);
}

NORETURN(static void raise_io(zjob *j, int err, const char *side));
static void raise_io(zjob *j, int err, const char *side) { rs_raise_side(j->name, err, side); }

/* ---- zlib without the GVL ------------------------------------------------------------- */

typedef struct zcall {
  z_stream *z;
  int flush;
  int ret;
} zcall;

static int zcall_run(void *p) {
  zcall *c = p;
  c->ret = deflate(c->z, c->flush);
  return 0;
}

/* zlib off the loop: a worker thread under a Ringspun scheduler (other
 * fibers run meanwhile), else here with the GVL released. Handing work
 * over costs a few microseconds: only for real work. */
static int zrun(zjob *j, int flush) {
  zcall c = {&j->z, flush, 0};
  if (j->z.avail_in >= 4096 || flush == Z_FINISH)
    rs_run_work(zcall_run, &c);
  else
    zcall_run(&c);
  return c.ret;
}

/* ---- source ------------------------------------------------------------------------------ */

/* Hands zlib the next input; false at end of input. */
static bool next_input_fd(zjob *j) {
  const char *data = NULL;
  ssize_t n = rs_reader_next(&j->rd, &data);
  if (n < 0) raise_io(j, (int)-n, "src");
  if (n == 0) return false;
  j->zs->next_in = (Bytef *)data;
  j->zs->avail_in = (uInt)n;
  return true;
}

static bool next_input_string(zjob *j) {
  size_t len = (size_t)RSTRING_LEN(j->src_obj);
  if (j->src_off >= len) return false;
  size_t n = len - j->src_off;
  if (n > RS_STRING_SLICE) n = RS_STRING_SLICE;
  j->zs->next_in = (Bytef *)RSTRING_PTR(j->src_obj) + j->src_off;
  j->zs->avail_in = (uInt)n;
  j->src_off += n;
  return true;
}

static VALUE call_readpartial(VALUE obj) { return rb_funcall(obj, id_readpartial, 1, INT2FIX(RS_BLOCK_SIZE)); }

static bool next_input_reader(zjob *j) {
  int state = 0;
  VALUE chunk = rb_protect(call_readpartial, j->src_obj, &state);
  if (state) {
    VALUE err = rb_errinfo();
    if (!rb_obj_is_kind_of(err, rb_eEOFError)) rb_jump_tag(state);
    rb_set_errinfo(Qnil);
    return false;
  }
  if (NIL_P(chunk)) return false;
  StringValue(chunk);
  if (RSTRING_LEN(chunk) == 0) return next_input_reader(j);
  j->src_chunk = chunk;
  j->zs->next_in = (Bytef *)RSTRING_PTR(chunk);
  j->zs->avail_in = (uInt)RSTRING_LEN(chunk);
  return true;
}

static bool next_input(zjob *j) {
  if (j->src_eof) return false;
  bool more;
  switch (j->src_kind) {
  case SRC_FD: more = next_input_fd(j); break;
  case SRC_STRING: more = next_input_string(j); break;
  default: more = next_input_reader(j); break;
  }
  if (!more) j->src_eof = true;
  return more;
}

/* ---- destination --------------------------------------------------------------------------- */

static void emit(zjob *j, size_t len) {
  if (len == 0) return;
  char *data = j->out_block[j->out_cur];
  j->written += (int64_t)len;
  if (j->dst_kind == DST_STRING) {
    rb_str_cat(j->dst_obj, data, (long)len);
    return;
  }
  if (j->dst_kind == DST_WRITER) {
    rb_funcall(j->dst_obj, id_write, 1, rb_str_new(data, (long)len));
    return;
  }
  /* Wait for the previous write, then leave this one in flight while the
   * next output goes into the other block. */
  ssize_t n = rs_pending_finish(&j->wr);
  if (n < 0) raise_io(j, (int)-n, "dest");
  rs_pending *p = &j->wr;
  p->block = data;
  p->pool = j->pool;
  p->op_owns_block = false;
  rs_pending_start(p, RS_OP_WRITE, j->dst_fd, data, len);
  j->out_cur ^= 1;
}

static void finish_output(zjob *j) {
  if (j->dst_kind != DST_FD) return;
  ssize_t n = rs_pending_finish(&j->wr);
  if (n < 0) raise_io(j, (int)-n, "dest");
}

/* Runs zlib over the current input until it wants more (or ends). */
static int pump(zjob *j, int flush) {
  int ret;
  do {
    j->z.next_out = j->out_block[j->out_cur];
    j->z.avail_out = RS_BLOCK_SIZE;
    ret = zrun(j, flush);
    if (ret == Z_STREAM_ERROR || ret == Z_MEM_ERROR) raise_for(j, ret);
    emit(j, RS_BLOCK_SIZE - j->z.avail_out);
  } while (ret != Z_STREAM_END && (j->z.avail_out == 0 || (flush == Z_FINISH && ret != Z_BUF_ERROR)));
  return ret;
}

/* ---- compress ------------------------------------------------------------------------------- */

static VALUE compress_body(VALUE p) {
  zjob *j = (zjob *)p;
  for (;;) {
    bool more = next_input(j);
    int ret = pump(j, more ? Z_NO_FLUSH : Z_FINISH);
    if (!more) {
      if (ret != Z_STREAM_END) raise_for(j, ret);
      break;
    }
  }
  finish_output(j);
  return Qnil;
}

/* ---- decompress ------------------------------------------------------------------------------ */

static void header_to_info(zjob *j) {
  if (NIL_P(j->info) || j->u.members > 1) return;
  gz_header *h = &j->u.hdr;
  rb_hash_aset(j->info, ID2SYM(id_mtime), rb_time_new((time_t)h->time, 0));
  rb_hash_aset(j->info, ID2SYM(id_os), INT2FIX(h->os));
  rb_hash_aset(j->info, ID2SYM(id_orig_name), h->name && h->name[0] ? rb_str_new_cstr((char *)h->name) : Qnil);
  rb_hash_aset(j->info, ID2SYM(id_comment), h->comment && h->comment[0] ? rb_str_new_cstr((char *)h->comment) : Qnil);
  /* XFL: 2 means the slowest, best compression; 4 the fastest. */
  rb_hash_aset(j->info, ID2SYM(id_level), h->xflags == 2 ? INT2FIX(9) : h->xflags == 4 ? INT2FIX(1) : Qnil);
}

NORETURN(static void raise_unzip(rs_unzip *u));
static void raise_unzip(rs_unzip *u) {
  switch (u->error) {
  case RS_UNZIP_EMEM: rb_raise(rb_eNoMemError, "zlib: %s", u->msg);
  case RS_UNZIP_ETRUNC: raise_zlib("Zlib::BufError", u->msg);
  case RS_UNZIP_ECRC: raise_zlib("Zlib::GzipFile::CRCError", u->msg);
  case RS_UNZIP_ELENGTH: raise_zlib("Zlib::GzipFile::LengthError", u->msg);
  case RS_UNZIP_EHEADER:
  case RS_UNZIP_ENOTGZIP:
  case RS_UNZIP_EGARBAGE: raise_zlib("Zlib::GzipFile::Error", u->msg);
  default: raise_zlib("Zlib::DataError", u->msg);
  }
}

static int zcall_inflate(void *p) {
  z_stream *z = p;
  return inflate(z, Z_NO_FLUSH) + 16; /* rs_run_work results are >= 0 */
}

/* Runs inflate on a worker thread when there is real work. */
static int inflate_off_loop(void *ctx, z_stream *z) {
  (void)ctx;
  if (z->avail_in < 4096) return inflate(z, Z_NO_FLUSH);
  return rs_run_work(zcall_inflate, z) - 16;
}

static VALUE decompress_body(VALUE p) {
  zjob *j = (zjob *)p;
  for (;;) {
    if (j->zs->avail_in == 0 && !next_input(j)) {
      if (rs_unzip_eof(&j->u) == RS_UNZIP_ERROR) raise_unzip(&j->u);
      break;
    }
    j->zs->next_out = j->out_block[j->out_cur];
    j->zs->avail_out = RS_BLOCK_SIZE;
    int st = rs_unzip_run(&j->u);
    emit(j, RS_BLOCK_SIZE - j->zs->avail_out);
    if (st == RS_UNZIP_ERROR) raise_unzip(&j->u);
    if (st == RS_UNZIP_MEMBER) header_to_info(j);
    if (st == RS_UNZIP_END) break;
  }
  finish_output(j);
  return Qnil;
}

/* ---- setup and teardown ------------------------------------------------------------------------ */

static void release_block(zjob *j, void *block, void *kept) {
  if (block && block != kept) rs_buf_put(j->pool, block);
}

static VALUE zjob_cleanup(VALUE p) {
  zjob *j = (zjob *)p;
  if (j->rd_ready) rs_reader_cleanup(&j->rd, Qnil);
  /* A write still in flight: wait for it, so nothing is left pending. If
   * that wait is interrupted, the op keeps its block until it completes. */
  if (j->wr.op) rs_pending_drain(&j->wr);
  void *kept_wr = j->wr.op_owns_block ? j->wr.block : NULL;
  j->wr.block = NULL;
  for (int i = 0; i < 2; i++) release_block(j, j->out_block[i], kept_wr);
  release_block(j, j->name_buf, NULL);
  release_block(j, j->comment_buf, NULL);
  if (j->mode == ZM_GZIP || j->mode == ZM_DEFLATE) {
    if (j->z_ready) deflateEnd(&j->z);
  } else {
    rs_unzip_end(&j->u);
  }
  return Qnil;
}

static void *take_block(zjob *j) {
  void *b = rs_buf_get(j->pool);
  if (!b) rb_raise(rb_eNoMemError, "%s: cannot allocate a buffer", j->name);
  return b;
}

static void setup_src(zjob *j, VALUE src) {
  j->src_obj = src;
  j->src_chunk = Qnil;
  if (RB_TYPE_P(src, T_STRING)) {
    j->src_kind = SRC_STRING;
    /* zlib reads it with the GVL released: read a frozen String (itself,
     * or a copy-on-write view of one that is not), which no other thread
     * can change under us. rb_str_locktmp would do that too, but would make
     * two threads compressing one String raise. */
    j->src_obj = rb_str_new_frozen(src);
  } else if (RB_INTEGER_TYPE_P(src) || RB_TYPE_P(src, T_FILE) || !rb_respond_to(src, id_readpartial)) {
    j->src_kind = SRC_FD;
    j->src_fd = rs_io_end_fd(src, RS_SIDE_READ);
  } else {
    j->src_kind = SRC_READER;
  }
}

static void setup_dst(zjob *j, VALUE dst) {
  j->dst_obj = dst;
  if (RB_TYPE_P(dst, T_STRING)) {
    rb_check_frozen(dst);
    j->dst_kind = DST_STRING;
  } else if (RB_INTEGER_TYPE_P(dst) || RB_TYPE_P(dst, T_FILE) || !rb_respond_to(dst, id_write)) {
    j->dst_kind = DST_FD;
    j->dst_fd = rs_io_end_fd(dst, RS_SIDE_WRITE);
  } else {
    j->dst_kind = DST_WRITER; /* an SSLSocket, say: through its own write */
  }
}

static void zjob_init(zjob *j, int mode, const char *name, VALUE src, VALUE dst) {
  memset(j, 0, sizeof(*j));
  j->mode = mode;
  j->name = name;
  j->info = Qnil;
  j->src_fd = j->dst_fd = -1;
  j->zs = (mode == ZM_GZIP || mode == ZM_DEFLATE) ? &j->z : &j->u.z;
  setup_dst(j, dst);
  setup_src(j, src);
}

static void take_blocks(zjob *j) {
  j->pool = rs_current_pool();
  if (!j->pool) rb_raise(rb_eNoMemError, "%s: cannot allocate a buffer pool", j->name);
  for (int i = 0; i < 2; i++) j->out_block[i] = take_block(j);
  if (j->src_kind == SRC_FD) {
    rs_reader_init(&j->rd, j->src_fd, RS_BLOCK_SIZE);
    j->rd_ready = true;
    VALUE io = rs_io_end_io(j->src_obj, RS_SIDE_READ);
    rs_reader_set_io(&j->rd, io == Qundef ? Qnil : io);
  }
}

static VALUE run_job(zjob *j, int (*init)(zjob *, void *), void *arg) {
  take_blocks(j);
  int ret = init(j, arg);
  if (ret != Z_OK) raise_for(j, ret);
  j->z_ready = true;
  bool compressing = j->mode == ZM_GZIP || j->mode == ZM_DEFLATE;
  return compressing ? compress_body((VALUE)j) : decompress_body((VALUE)j);
}

/* ---- options --------------------------------------------------------------------------------------- */

typedef struct copts {
  int level, strategy;
  bool gzip;
  uLong mtime;
  VALUE orig_name, comment;
} copts;

static int check_level(VALUE v) {
  if (NIL_P(v)) return Z_DEFAULT_COMPRESSION;
  int level = NUM2INT(v);
  if (level < -1 || level > 9) rb_raise(rb_eArgError, "level must be -1..9, not %d", level);
  return level;
}

static int check_strategy(VALUE v) {
  if (NIL_P(v)) return Z_DEFAULT_STRATEGY;
  int s = NUM2INT(v);
  if (s < Z_DEFAULT_STRATEGY || s > Z_FIXED) rb_raise(rb_eArgError, "strategy must be one of Zlib's strategies (0..4), not %d", s);
  return s;
}

static uLong check_mtime(VALUE v) {
  if (v == Qundef || NIL_P(v)) return (uLong)time(NULL);
  if (v == Qfalse) return 0;
  if (rb_obj_is_kind_of(v, rb_cTime)) v = rb_funcall(v, id_to_i, 0);
  if (!RB_INTEGER_TYPE_P(v)) rb_raise(rb_eTypeError, "mtime must be an Integer, a Time, nil or false");
  long long t = NUM2LL(v);
  if (t < 0 || t > 0xffffffffLL) rb_raise(rb_eArgError, "mtime out of range for gzip");
  return (uLong)t;
}

static VALUE check_cstr(VALUE v, const char *what) {
  if (v == Qundef || NIL_P(v)) return Qnil;
  StringValue(v);
  if (memchr(RSTRING_PTR(v), 0, (size_t)RSTRING_LEN(v))) rb_raise(rb_eArgError, "%s must not contain NUL", what);
  if (RSTRING_LEN(v) >= RS_BLOCK_SIZE) rb_raise(rb_eArgError, "%s is too long", what);
  return v;
}

static Bytef *copy_cstr(zjob *j, VALUE str) {
  if (NIL_P(str)) return Z_NULL;
  Bytef *b = take_block(j);
  memcpy(b, RSTRING_PTR(str), (size_t)RSTRING_LEN(str));
  b[RSTRING_LEN(str)] = 0;
  return b;
}

static int init_deflate(zjob *j, void *arg) {
  copts *o = arg;
  int ret = deflateInit2(&j->z, o->level, Z_DEFLATED, o->gzip ? 15 + 16 : 15, 8, o->strategy);
  if (ret != Z_OK || !o->gzip) return ret;
  j->hdr.time = o->mtime;
  j->hdr.os = 3; /* Unix */
  /* deflate() reads these when it writes the header: keep our own copies. */
  j->hdr.name = j->name_buf = copy_cstr(j, o->orig_name);
  j->hdr.comment = j->comment_buf = copy_cstr(j, o->comment);
  return deflateSetHeader(&j->z, &j->hdr);
}

static int init_inflate(zjob *j, void *arg) {
  (void)arg;
  bool gzip = j->mode == ZM_GUNZIP;
  if (gzip) {
    j->name_buf = take_block(j);
    j->comment_buf = take_block(j);
  }
  int ret = rs_unzip_init(&j->u, gzip, j->name_buf, RS_BLOCK_SIZE - 1, j->comment_buf, RS_BLOCK_SIZE - 1);
  j->u.inflate_fn = inflate_off_loop;
  return ret;
}

typedef struct job_args {
  zjob *j;
  int (*init)(zjob *, void *);
  void *arg;
} job_args;

static VALUE job_main(VALUE p) {
  job_args *a = (job_args *)p;
  return run_job(a->j, a->init, a->arg);
}

static VALUE run_guarded(zjob *j, int (*init)(zjob *, void *), void *arg) {
  job_args a = {j, init, arg};
  rb_ensure(job_main, (VALUE)&a, zjob_cleanup, (VALUE)j);
  RB_GC_GUARD(j->src_obj);
  RB_GC_GUARD(j->src_chunk);
  RB_GC_GUARD(j->dst_obj);
  RB_GC_GUARD(j->info);
  return LL2NUM(j->written);
}

static VALUE compress_call(int argc, VALUE *argv, bool gzip) {
  VALUE src, dst, opts;
  rb_scan_args(argc, argv, "2:", &src, &dst, &opts);
  ID keys[5] = {id_level, id_strategy, id_mtime, id_orig_name, id_comment};
  VALUE vals[5] = {Qundef, Qundef, Qundef, Qundef, Qundef};
  if (!NIL_P(opts)) rb_get_kwargs(opts, keys, 0, gzip ? 5 : 1, vals);
  copts o = {.gzip = gzip};
  o.level = check_level(vals[0] == Qundef ? INT2FIX(6) : vals[0]);
  o.strategy = check_strategy(vals[1] == Qundef ? Qnil : vals[1]);
  o.mtime = gzip ? check_mtime(vals[2]) : 0;
  o.orig_name = check_cstr(vals[3], "orig_name");
  o.comment = check_cstr(vals[4], "comment");
  zjob j;
  zjob_init(&j, gzip ? ZM_GZIP : ZM_DEFLATE, gzip ? "gzip" : "deflate", src, dst);
  VALUE r = run_guarded(&j, init_deflate, &o);
  RB_GC_GUARD(o.orig_name);
  RB_GC_GUARD(o.comment);
  return r;
}

/* @see lib/ringspun/io.rb for the documented Ruby signatures. */
static VALUE io_s_gzip(int argc, VALUE *argv, VALUE klass) { return compress_call(argc, argv, true); }
static VALUE io_s_deflate(int argc, VALUE *argv, VALUE klass) { return compress_call(argc, argv, false); }

static VALUE io_s_gunzip(int argc, VALUE *argv, VALUE klass) {
  VALUE src, dst, info;
  rb_scan_args(argc, argv, "21", &src, &dst, &info);
  if (!NIL_P(info)) Check_Type(info, T_HASH);
  zjob j;
  zjob_init(&j, ZM_GUNZIP, "gunzip", src, dst);
  j.info = info;
  return run_guarded(&j, init_inflate, NULL);
}

static VALUE io_s_inflate(VALUE klass, VALUE src, VALUE dst) {
  zjob j;
  zjob_init(&j, ZM_INFLATE, "inflate", src, dst);
  return run_guarded(&j, init_inflate, NULL);
}

void rs_init_zstream(VALUE mRingspun) {
  (void)mRingspun;
  id_readpartial = rb_intern("readpartial");
  id_write = rb_intern("write");
  id_mtime = rb_intern("mtime");
  id_orig_name = rb_intern("orig_name");
  id_comment = rb_intern("comment");
  id_os = rb_intern("os");
  id_level = rb_intern("level");
  id_strategy = rb_intern("strategy");
  id_to_i = rb_intern("to_i");
  eZlibError = Qnil;
  rb_gc_register_address(&eZlibError);
  rb_define_singleton_method(rb_cIO, "gzip", io_s_gzip, -1);
  rb_define_singleton_method(rb_cIO, "gunzip", io_s_gunzip, -1);
  rb_define_singleton_method(rb_cIO, "deflate", io_s_deflate, -1);
  rb_define_singleton_method(rb_cIO, "inflate", io_s_inflate, 2);
}
