/* Feeding parsers: IO#read_loop, BasicSocket#recv_loop, IO#feed_loop.
 *
 * A tight loop in C that yields each chunk as a binary String. Chunks are
 * read straight into the String handed over (the way IO#readpartial reads
 * into its result), so no byte is copied twice:
 * - a new String per chunk, the default of read_loop and recv_loop;
 * - one reused String (read_loop's `buffer` argument, and feed_loop unless
 *   `reuse: false`), overwritten by the next read: valid only inside the
 *   block, as readpartial(maxlen, buf) reuses buf.
 * Each read is one non-blocking attempt, then a wait (the ring on io_uring,
 * readiness elsewhere). Bytes Ruby already buffered for the IO come first.
 *
 * On a socket under io_uring, recv_loop and feed_loop receive with
 * multishot receive into the shared buffer ring (io/reader.c) instead, so
 * that a slow consumer holds no buffer of its own; that costs one copy
 * from the ring into the String. When such a loop ends early (break, an
 * exception), bytes the kernel already delivered go back into the IO's
 * read buffer. */
#include "ringspun.h"
#include <ruby/encoding.h>
#include <ruby/io.h>

static ID id_call;

typedef struct loop_args {
  VALUE io;
  int fd;
  long maxlen;
  VALUE buffer; /* the reused String, or Qnil for a new String per chunk */
  /* feed_loop: receiver.public_send(method, chunk, &block) */
  VALUE receiver;
  ID method;
  VALUE block;
  const char *name;
  /* a read that completed as an exception struck: its bytes, given back */
  VALUE reading;
  ssize_t salvaged;
  /* multishot receive (sockets under io_uring) */
  bool multishot;
  bool reader_ready;
  rs_reader r;
} loop_args;

static void deliver(loop_args *a, VALUE chunk) {
  if (NIL_P(a->receiver)) rb_yield(chunk);
  else rb_funcall_with_block(a->receiver, a->method, 1, &chunk, a->block);
}

/* The String the next chunk goes into, with room for maxlen bytes. A
 * reused one is made writable again each time: the block may have frozen,
 * shared or resized it, and what it shared keeps the old bytes. */
static VALUE target(loop_args *a) {
  if (NIL_P(a->buffer)) return rb_str_buf_new(a->maxlen);
  rb_str_modify(a->buffer);
  rb_str_resize(a->buffer, a->maxlen);
  return a->buffer;
}

/* A new String gives back what the read did not fill, as readpartial's
 * result does; a reused one keeps its room for the next read. */
static VALUE filled(loop_args *a, VALUE str, long n) {
  rb_str_set_len(str, n);
  if (NIL_P(a->buffer)) rb_str_resize(str, n); /* (copies len bytes where it moves them) */
  return str;
}

/* Bytes Ruby buffered for the IO (after a gets, say), at most maxlen. */
static VALUE next_buffered(loop_args *a) {
  VALUE got = rs_io_take_buffered(a->io, a->maxlen);
  if (NIL_P(got) || NIL_P(a->buffer)) return got;
  VALUE str = target(a);
  memcpy(RSTRING_PTR(str), RSTRING_PTR(got), (size_t)RSTRING_LEN(got));
  return filled(a, str, RSTRING_LEN(got));
}

/* The next chunk read straight from the fd; Qnil at end of input. */
static VALUE next_direct(loop_args *a) {
  VALUE str = target(a);
  a->reading = str;
  ssize_t n = rs_io_read_salvage(a->fd, RSTRING_PTR(str), (size_t)a->maxlen, str, &a->salvaged);
  a->reading = Qnil;
  if (n <= 0) {
    rb_str_set_len(str, 0); /* a reused buffer ends empty, as read(n, buf) leaves it at EOF */
    if (n < 0) rs_raise_errno((int)-n, a->name);
    return Qnil;
  }
  return filled(a, str, n);
}

/* The next chunk from the buffer ring, copied into the String. */
static VALUE next_multishot(loop_args *a) {
  const char *data = NULL;
  ssize_t n = rs_reader_next(&a->r, &data);
  if (n <= 0) {
    if (!NIL_P(a->buffer)) rb_str_set_len(target(a), 0);
    if (n < 0) rs_raise_errno((int)-n, a->name);
    return Qnil;
  }
  if (NIL_P(a->buffer)) return rb_str_new(data, n);
  VALUE str = target(a);
  memcpy(RSTRING_PTR(str), data, (size_t)n);
  return filled(a, str, n);
}

static VALUE loop_body(VALUE p) {
  loop_args *a = (loop_args *)p;
  if (!a->multishot) { /* (the multishot reader takes Ruby's bytes itself) */
    VALUE chunk;
    while (!NIL_P(chunk = next_buffered(a))) deliver(a, chunk);
  }
  for (;;) {
    VALUE chunk = a->multishot ? next_multishot(a) : next_direct(a);
    if (NIL_P(chunk)) break;
    deliver(a, chunk);
  }
  return a->io;
}

static VALUE loop_ensure(VALUE p) {
  loop_args *a = (loop_args *)p;
  if (a->reader_ready) rs_reader_cleanup(&a->r, a->io);
  /* A Timeout struck as a read completed: the next read of the IO gets them. */
  if (a->salvaged > 0) rs_io_unread(a->io, RSTRING_PTR(a->reading), a->salvaged);
  return Qnil;
}

/* Multishot receive, where the fd is a socket and the backend has it. */
static void try_multishot(loop_args *a) {
  rs_reader_init(&a->r, a->fd, (size_t)a->maxlen);
  rs_reader_set_io(&a->r, a->io);
  a->reader_ready = true;
  rs_reader_allow_multishot(&a->r);
  if (a->r.ms) return;
  rs_reader_cleanup(&a->r, Qnil); /* nothing read yet: nothing to give back */
  a->reader_ready = false;
  a->multishot = false;
}

static VALUE run_loop(loop_args *a, long maxlen, bool socket_loop) {
  if (maxlen <= 0) rb_raise(rb_eArgError, "maxlen must be positive");
  rb_io_t *fptr;
  GetOpenFile(a->io, fptr);
  rb_io_check_readable(fptr);
  a->fd = rb_io_descriptor(a->io);
  a->reading = Qnil;
  a->maxlen = maxlen;
  if (!NIL_P(a->buffer)) rb_enc_associate(a->buffer, rb_ascii8bit_encoding());
  a->multishot = socket_loop;
  if (socket_loop) try_multishot(a);
  rb_ensure(loop_body, (VALUE)a, loop_ensure, (VALUE)a);
  RB_GC_GUARD(a->buffer);
  return a->io;
}

/* An optional reused buffer: a String (it is made binary) or nil. */
static VALUE buffer_arg(VALUE v) {
  if (NIL_P(v)) return Qnil;
  StringValue(v);
  rb_check_frozen(v);
  return v;
}

static VALUE plain_loop(int argc, VALUE *argv, VALUE self, const char *name, bool socket_loop) {
  rb_check_arity(argc, 0, 2);
  rb_need_block();
  loop_args a = {.io = self, .receiver = Qnil, .block = Qnil, .name = name};
  a.buffer = buffer_arg(argc > 1 ? argv[1] : Qnil);
  return run_loop(&a, argc > 0 && !NIL_P(argv[0]) ? NUM2LONG(argv[0]) : 65536, socket_loop);
}

static VALUE io_read_loop(int argc, VALUE *argv, VALUE self) { return plain_loop(argc, argv, self, "read_loop", false); }

static VALUE sock_recv_loop(int argc, VALUE *argv, VALUE self) { return plain_loop(argc, argv, self, "recv_loop", true); }

static VALUE io_feed_loop(int argc, VALUE *argv, VALUE self) {
  VALUE receiver, method, opts;
  rb_scan_args(argc, argv, "11:", &receiver, &method, &opts);
  ID keys[2] = {rb_intern("maxlen"), rb_intern("reuse")};
  VALUE kw[2] = {Qundef, Qundef};
  if (!NIL_P(opts)) rb_get_kwargs(opts, keys, 0, 2, kw);
  VALUE vmax = kw[0], vreuse = kw[1];
  long maxlen = vmax == Qundef ? 65536 : NUM2LONG(vmax);
  loop_args a = {.io = self, .receiver = receiver, .name = "feed_loop"};
  a.method = NIL_P(method) ? id_call : rb_to_id(method);
  a.block = rb_block_given_p() ? rb_block_proc() : Qnil;
  a.buffer = vreuse == Qundef || RTEST(vreuse) ? rb_str_buf_new(maxlen > 0 ? maxlen : 0) : Qnil;
  VALUE r = run_loop(&a, maxlen, true); /* multishot where self is a socket */
  RB_GC_GUARD(a.block);
  return r;
}

void rs_init_loops(VALUE mRingspun) {
  (void)mRingspun;
  id_call = rb_intern("call");
  rb_define_method(rb_cIO, "read_loop", io_read_loop, -1);
  rb_define_method(rb_cIO, "feed_loop", io_feed_loop, -1);
  rb_require("socket");
  rb_define_method(rb_path2class("BasicSocket"), "recv_loop", sock_recv_loop, -1);
}
