/* A chunk reader with read-ahead, shared by the primitives that consume a
 * stream (zstream.c, msgpack.c, and loops.c for multishot receive). Under a
 * Ringspun scheduler on io_uring the next read is in flight while the caller
 * works on the current chunk; elsewhere each chunk is read when asked for.
 * Two pool blocks. */
#include "io/reader.h"
#include <errno.h>
#include <ruby/io.h>
#include <string.h>
#include <sys/stat.h>

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
  r->io = Qnil;
  r->chunk = chunk == 0 || chunk > RS_BLOCK_SIZE ? RS_BLOCK_SIZE : chunk;
  r->pool = rs_current_pool();
  if (!r->pool) rb_raise(rb_eNoMemError, "ringspun: cannot allocate a buffer pool");
  for (int i = 0; i < 2; i++) {
    r->block[i] = rs_buf_get(r->pool);
    if (!r->block[i]) rb_raise(rb_eNoMemError, "ringspun: cannot allocate a buffer");
  }
}

/* ---- multishot receive -------------------------------------------------------- */

void rs_reader_allow_multishot(rs_reader *r) {
  rs_sched *s = rs_sched_current();
  if (!s || !s->backend.ops->bufring_setup) return;
  struct stat st;
  if (fstat(r->fd, &st) < 0 || !S_ISSOCK(st.st_mode)) return;
  if (s->backend.ops->bufring_setup(&s->backend) < 0) return;
  r->ms = s;
  r->ms_bid = -1;
}

static void recycle_current(rs_reader *r) {
  if (r->ms_bid >= 0) r->ms->backend.ops->bufring_recycle(&r->ms->backend, (unsigned)r->ms_bid);
  r->ms_bid = -1;
  r->ms_len = 0;
}

static void arm(rs_reader *r) {
  rs_op *op = rs_op_new(r->ms, RS_OP_RECV_MULTI);
  op->fd = r->fd;
  op->block = rs_buf_get(r->pool);
  if (!op->block) {
    rs_op_release(r->ms, op);
    rb_raise(rb_eNoMemError, "ringspun: cannot allocate a buffer");
  }
  op->block_pool = r->pool;
  memset(op->block, 0, sizeof(rs_msq));
  if (rs_op_start(r->ms, op) < 0) rb_raise(rb_eIOError, "ringspun: cannot submit a multishot receive");
  r->ms_op = op;
}

static void disarm(rs_reader *r) {
  if (!r->ms_op) return;
  rs_op *op = r->ms_op;
  r->ms_op = NULL;
  rs_op_release(r->ms, op);
}

/* The next completion of the multishot op, re-arming it when the kernel
 * ended it (ENOBUFS, or a completion with no more to follow). */
static rs_cqe next_completion(rs_reader *r) {
  for (;;) {
    if (!r->ms_op) arm(r);
    rs_msq *q = r->ms_op->block;
    if (q->len > 0) {
      rs_cqe c = q->cqe[q->head];
      q->head = (q->head + 1) % RS_MSQ_CAP;
      q->len--;
      if (!c.more) disarm(r);
      if (c.result == -ECANCELED) continue; /* paused for holding too many buffers */
      return c;
    }
    rs_op_park_news(r->ms, r->ms_op);
  }
}

static ssize_t next_multishot(rs_reader *r, const char **data) {
  if (r->ms_len == 0) {
    recycle_current(r);
    rs_cqe c = next_completion(r);
    if (c.result == -ENOBUFS) {
      /* The shared ring is empty (other readers hold its buffers): read
       * this chunk the plain way instead of re-arming into ENOBUFS. */
      char *dst = r->block[r->cur];
      r->cur ^= 1;
      ssize_t n = rs_io_read_keep(r->fd, dst, r->chunk, Qnil);
      if (n > 0) *data = dst;
      return n;
    }
    if (c.result <= 0) {
      if (c.bid >= 0) r->ms->backend.ops->bufring_recycle(&r->ms->backend, (unsigned)c.bid);
      return c.result;
    }
    r->ms_bid = c.bid;
    r->ms_cur = r->ms->backend.ops->bufring_buf(&r->ms->backend, (unsigned)r->ms_bid);
    r->ms_len = (size_t)c.result;
  }
  size_t n = r->ms_len < r->chunk ? r->ms_len : r->chunk;
  *data = r->ms_cur;
  r->ms_cur += n;
  r->ms_len -= n;
  return (ssize_t)n;
}

/* Stops the multishot op and gathers every byte it took, in order. */
static VALUE take_back_multishot(rs_reader *r) {
  VALUE back = rb_str_new(r->ms_cur, (long)r->ms_len);
  recycle_current(r);
  if (!r->ms_op) return back;
  rs_op *op = r->ms_op;
  rs_op_cancel(r->ms, op);
  rs_msq *q = op->block;
  for (;;) {
    for (; q->len > 0; q->len--, q->head = (q->head + 1) % RS_MSQ_CAP) {
      rs_cqe c = q->cqe[q->head];
      if (c.bid < 0) continue;
      if (c.result > 0) rb_str_cat(back, r->ms->backend.ops->bufring_buf(&r->ms->backend, (unsigned)c.bid), c.result);
      r->ms->backend.ops->bufring_recycle(&r->ms->backend, (unsigned)c.bid);
    }
    if (!op->kernel_refs) break;
    rs_op_park_news(r->ms, op);
  }
  disarm(r);
  return back;
}

/* ---- plain reads ---------------------------------------------------------------- */

void rs_reader_set_io(rs_reader *r, VALUE io) { r->io = io; }

/* Bytes Ruby buffered for the IO, copied into a block: they come first. */
static ssize_t next_buffered(rs_reader *r, const char **data) {
  VALUE got = rs_io_take_buffered(r->io, (long)r->chunk);
  if (NIL_P(got)) return 0;
  long n = RSTRING_LEN(got);
  char *dst = r->block[r->cur];
  memcpy(dst, RSTRING_PTR(got), (size_t)n);
  RB_GC_GUARD(got);
  *data = dst;
  r->cur ^= 1;
  return n;
}

ssize_t rs_reader_next(rs_reader *r, const char **data) {
  if (r->eof) return 0;
  if (!r->pend.active && !r->ms_op) {
    ssize_t b = next_buffered(r, data);
    if (b > 0) return b;
  }
  if (r->ms) {
    ssize_t n = next_multishot(r, data);
    if (n == 0) r->eof = true;
    return n;
  }
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

static VALUE take_back_value(VALUE p) { return take_back_multishot((rs_reader *)p); }

void rs_reader_cleanup_into(rs_reader *r, VALUE *back) {
  if (r->ms) {
    int state = 0;
    VALUE ms_back = rb_protect(take_back_value, (VALUE)r, &state);
    if (state) rb_set_errinfo(Qnil);
    disarm(r);
    recycle_current(r);
    if (!state) *back = rs_bytes_prepend(*back, RSTRING_PTR(ms_back), RSTRING_LEN(ms_back));
  }
  /* A read-ahead that already took bytes from the fd must not lose them:
   * wait for it (cancelled if still waiting), and give its bytes back to
   * the IO's read buffer so the next IO#read sees them. */
  if (r->pend.active && r->pend.op) {
    /* Wait for it (cancelled if still waiting): nothing stays pending. */
    ssize_t n = rs_pending_drain(&r->pend);
    if (n > 0) *back = rs_bytes_prepend(*back, r->pend.buf, n);
  } else if (r->pend.salvaged > 0) {
    *back = rs_bytes_prepend(*back, r->pend.buf, r->pend.salvaged); /* read as a Timeout struck */
  }
  r->pend.salvaged = 0;
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

void rs_reader_cleanup(rs_reader *r, VALUE io) {
  VALUE back = Qnil;
  rs_reader_cleanup_into(r, &back);
  if (!NIL_P(io) && !NIL_P(back)) rs_io_unread(io, RSTRING_PTR(back), RSTRING_LEN(back));
  RB_GC_GUARD(back);
}
