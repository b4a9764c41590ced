/* A chunk reader with read-ahead, shared by the primitives that consume a
 * stream (zstream.c, loops.c, msgpack.c). Under a Ringspun scheduler on
 * io_uring the next read is in flight while the caller works on the current
 * chunk; elsewhere each chunk is read when asked for. Two pool blocks. */
#include "ringspun.h"
#include <errno.h>
#include <ruby/io.h>
#include <string.h>

static ID id_ungetbyte;

static void start(rs_reader *r) {
  rs_pending *p = &r->pend;
  p->block = r->block[r->cur];
  p->pool = r->pool;
  p->op_owns_block = false;
  rs_pending_start(p, RS_OP_READ, r->fd, p->block, r->chunk);
}

void rs_reader_init(rs_reader *r, int fd, size_t chunk) {
  memset(r, 0, sizeof(*r));
  r->fd = fd;
  r->chunk = chunk == 0 || chunk > RS_BLOCK_SIZE ? RS_BLOCK_SIZE : chunk;
  r->pool = rs_current_pool();
  if (!r->pool) rb_raise(rb_eNoMemError, "ringspun: cannot allocate a buffer pool");
  for (int i = 0; i < 2; i++) {
    r->block[i] = rs_buf_get(r->pool);
    if (!r->block[i]) rb_raise(rb_eNoMemError, "ringspun: cannot allocate a buffer");
  }
}

ssize_t rs_reader_next(rs_reader *r, const char **data) {
  if (r->eof) return 0;
  if (!r->pend.active) start(r);
  ssize_t n = rs_pending_finish(&r->pend);
  if (n <= 0) {
    if (n == 0) r->eof = true;
    return n;
  }
  *data = r->block[r->cur];
  r->cur ^= 1;
  if (r->pend.s) start(r); /* read-ahead only where it overlaps */
  return n;
}

static VALUE finish_value(VALUE p) { return LONG2NUM(rs_pending_finish((rs_pending *)p)); }

void rs_reader_cleanup(rs_reader *r, VALUE io) {
  /* A read-ahead that already took bytes from the fd must not lose them:
   * wait for it (cancelled if still waiting), and give its bytes back to
   * the IO's read buffer so the next IO#read sees them. */
  if (r->pend.active && r->pend.op && !NIL_P(io)) {
    rs_op_cancel(r->pend.s, r->pend.op);
    int state = 0;
    VALUE n = rb_protect(finish_value, (VALUE)&r->pend, &state);
    if (!state && NUM2LONG(n) > 0) rb_funcall(io, id_ungetbyte, 1, rb_str_new(r->pend.buf, NUM2LONG(n)));
    if (state) rb_set_errinfo(Qnil);
  }
  void *kept = NULL;
  if (r->pend.op) {
    rs_op *op = r->pend.op;
    r->pend.op = NULL;
    rs_op_release(r->pend.s, op);
  }
  if (r->pend.op_owns_block) kept = r->pend.block;
  r->pend.active = false;
  for (int i = 0; i < 2; i++) {
    if (r->block[i] && r->block[i] != kept) rs_buf_put(r->pool, r->block[i]);
    r->block[i] = NULL;
  }
}

void rs_init_reader(VALUE mRingspun) {
  (void)mRingspun;
  id_ungetbyte = rb_intern("ungetbyte");
}
