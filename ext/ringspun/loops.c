/* Feeding parsers: IO#read_loop, BasicSocket#recv_loop, IO#feed_loop.
 *
 * A tight loop in C over the read-ahead reader: under a Ringspun scheduler
 * on io_uring the next read is in flight while the block runs. Each chunk
 * is a new binary String. When the loop ends early (break, an exception),
 * bytes a read-ahead already took go back into the IO's read buffer. */
#include "ringspun.h"
#include <ruby/io.h>

static ID id_call;

typedef struct loop_args {
  VALUE io;
  rs_reader r;
  bool reader_ready;
  /* feed_loop: receiver.public_send(method, chunk, &block) */
  VALUE receiver;
  ID method;
  VALUE block;
  const char *name;
  bool multishot; /* recv_loop and feed_loop on sockets */
} loop_args;

static void deliver(loop_args *a, VALUE chunk) {
  if (NIL_P(a->receiver)) rb_yield(chunk);
  else rb_funcall_with_block(a->receiver, a->method, 1, &chunk, a->block);
}

static VALUE loop_body(VALUE p) {
  loop_args *a = (loop_args *)p;
  for (;;) {
    const char *data = NULL;
    ssize_t n = rs_reader_next(&a->r, &data);
    if (n < 0) rs_raise_errno((int)-n, a->name);
    if (n == 0) break;
    deliver(a, rb_str_new(data, n));
  }
  return a->io;
}

static VALUE loop_ensure(VALUE p) {
  loop_args *a = (loop_args *)p;
  if (a->reader_ready) rs_reader_cleanup(&a->r, a->io);
  return Qnil;
}

static VALUE run_loop(loop_args *a, long maxlen) {
  if (maxlen <= 0) rb_raise(rb_eArgError, "maxlen must be positive");
  rb_io_t *fptr;
  GetOpenFile(a->io, fptr);
  rb_io_check_readable(fptr);
  rs_reader_init(&a->r, rb_io_descriptor(a->io), (size_t)maxlen);
  rs_reader_set_io(&a->r, a->io); /* what Ruby buffered comes first */
  a->reader_ready = true;
  if (a->multishot) rs_reader_allow_multishot(&a->r);
  rb_ensure(loop_body, (VALUE)a, loop_ensure, (VALUE)a);
  return a->io;
}

static VALUE io_read_loop(int argc, VALUE *argv, VALUE self) {
  rb_check_arity(argc, 0, 1);
  rb_need_block();
  loop_args a = {.io = self, .receiver = Qnil, .block = Qnil, .name = "read_loop"};
  return run_loop(&a, argc ? NUM2LONG(argv[0]) : 65536);
}

static VALUE sock_recv_loop(int argc, VALUE *argv, VALUE self) {
  rb_check_arity(argc, 0, 1);
  rb_need_block();
  loop_args a = {.io = self, .receiver = Qnil, .block = Qnil, .name = "recv_loop", .multishot = true};
  return run_loop(&a, argc ? NUM2LONG(argv[0]) : 65536);
}

static VALUE io_feed_loop(int argc, VALUE *argv, VALUE self) {
  VALUE receiver, method, opts;
  rb_scan_args(argc, argv, "11:", &receiver, &method, &opts);
  VALUE vmax = rs_kwarg(opts, "maxlen");
  long maxlen = vmax == Qundef ? 65536 : NUM2LONG(vmax);
  loop_args a = {.io = self, .receiver = receiver, .name = "feed_loop", .multishot = true};
  a.method = NIL_P(method) ? id_call : rb_to_id(method);
  a.block = rb_block_given_p() ? rb_block_proc() : Qnil;
  VALUE r = run_loop(&a, maxlen);
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
