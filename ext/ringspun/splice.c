/* Zero-copy moves: IO.splice, IO.tee, IO.double_splice, on the splice
 * and sendfile steps of io/ready.c. */
#include "ringspun.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

/* The most one sendfile(2) of double_splice asks for (see dsplice_sendfile). */
#define RS_SENDFILE_STEP (1U << 20)

static long check_len(VALUE maxlen) {
  long len = NUM2LONG(maxlen);
  if (len == 0) rb_raise(rb_eArgError, "maxlen must not be 0");
  return len;
}

/* ---- IO.splice / IO.tee ---------------------------------------------------------------- */

static VALUE io_s_splice(VALUE klass, VALUE src, VALUE dest, VALUE maxlen) {
  long len = check_len(maxlen);
  rs_end in = rs_end_of(src, RS_SIDE_READ, "splice"), out = rs_end_of(dest, RS_SIDE_WRITE, "splice");
  if (!in.is_pipe && !out.is_pipe) rs_raise_errno(EINVAL, "splice: neither src nor dest is a pipe");
  if (len > 0) {
    int64_t b = rs_move_buffered(src, out.fd, (size_t)len, "splice");
    return LONG2NUM(b > 0 ? b : rs_move_once(RS_MOVE_SPLICE, in.fd, out.fd, (size_t)len, "splice"));
  }
  size_t chunk = len == LONG_MIN ? RS_SPLICE_MAX_CHUNK : (size_t)-len;
  int64_t total = rs_move_buffered(src, out.fd, SIZE_MAX, "splice");
  for (;;) {
    long n = rs_move_once(RS_MOVE_SPLICE, in.fd, out.fd, chunk, "splice");
    if (n == 0) return LL2NUM(total);
    total += n;
  }
}

static VALUE io_s_tee(VALUE klass, VALUE src, VALUE dest, VALUE maxlen) {
  long len = check_len(maxlen);
  if (len < 0) rb_raise(rb_eArgError, "maxlen must be positive for tee");
  rs_end in = rs_end_of(src, RS_SIDE_READ, "tee"), out = rs_end_of(dest, RS_SIDE_WRITE, "tee");
  if (!in.is_pipe) rs_raise_errno(EINVAL, "tee: src is not a pipe");
  if (!out.is_pipe) rs_raise_errno(EINVAL, "tee: dest is not a pipe");
  return LONG2NUM(rs_move_once(RS_MOVE_TEE, in.fd, out.fd, (size_t)len, "tee"));
}

/* ---- IO.double_splice ------------------------------------------------------------------- */

typedef struct dsplice {
  int src, dst;
  int pipe_r, pipe_w;
  size_t chunk;
  size_t cap;       /* pipe capacity */
  int64_t in_pipe;  /* bytes spliced into the pipe, not yet out */
  int64_t total;
  bool eof;
  VALUE src_io;     /* the IO behind src (nil for an fd): takes back what an interruption strands */
} dsplice;

static int open_pipe(dsplice *d) {
  int fds[2];
  int ret = rs_pipe_open(fds, d->chunk, &d->cap);
  if (ret < 0) return ret;
  d->pipe_r = fds[0];
  d->pipe_w = fds[1];
  return 0;
}

static size_t fill_len(dsplice *d) {
  size_t room = d->cap - (size_t)d->in_pipe;
  return room < d->chunk ? room : d->chunk;
}

static void account_fill(dsplice *d, long n) {
  if (n == 0) d->eof = true;
  else d->in_pipe += n;
}

static void account_drain(dsplice *d, long n) {
  d->in_pipe -= n;
  d->total += n;
}

/* An interruption (Timeout, Fiber#raise) or a failed dest can leave bytes
 * in the private pipe that left src but never reached dest. Closing the
 * pipe would lose them: give dest what it takes without waiting, and put
 * the rest back in front of src's read buffer, so the next call on src
 * picks up exactly where this one stopped. An Integer fd has no buffer to
 * take them back. */
static void salvage_pipe(dsplice *d) {
  while (d->in_pipe > 0) {
    long n = rs_splice_step(RS_MOVE_SPLICE, d->pipe_r, d->dst, (size_t)d->in_pipe);
    if (n <= 0) break;
    account_drain(d, n);
  }
  if (d->in_pipe <= 0 || NIL_P(d->src_io) || d->src_io == Qundef) return;
  VALUE str = rb_str_buf_new(d->in_pipe); /* not malloc: rs_io_unread may raise */
  char *buf = RSTRING_PTR(str);
  long got = 0;
  while (got < d->in_pipe) {
    ssize_t n = read(d->pipe_r, buf + got, (size_t)(d->in_pipe - got));
    if (n > 0) got += n;
    else if (n < 0 && errno == EINTR) continue;
    else break;
  }
  d->in_pipe -= got;
  rs_io_unread(d->src_io, buf, got);
  RB_GC_GUARD(str);
}

static VALUE close_pipe(VALUE p) {
  dsplice *d = (dsplice *)p;
  if (d->in_pipe > 0 && d->pipe_r >= 0) salvage_pipe(d);
  if (d->pipe_r >= 0) close(d->pipe_r);
  if (d->pipe_w >= 0) close(d->pipe_w);
  d->pipe_r = d->pipe_w = -1;
  return Qnil;
}

/* Both halves move whenever they can: a non-blocking splice into the pipe,
 * one out of it; when neither moves, wait for the side that holds things
 * up. Data in the pipe can only leave through dest, so with bytes in the
 * pipe we wait for dest. */
static VALUE dsplice_run(VALUE p) {
  dsplice *d = (dsplice *)p;
  while (!d->eof || d->in_pipe > 0) {
    bool progress = false, src_blocked = false, dst_blocked = false;
    if (!d->eof && (size_t)d->in_pipe < d->cap) {
      long n = rs_splice_step(RS_MOVE_SPLICE, d->src, d->pipe_w, fill_len(d));
      if (n >= 0) account_fill(d, n), progress = true;
      else if (n == -EAGAIN) src_blocked = true;
      else rs_raise_side("double_splice", (int)-n, "src");
    }
    if (d->in_pipe > 0) {
      long n = rs_splice_step(RS_MOVE_SPLICE, d->pipe_r, d->dst, (size_t)d->in_pipe);
      if (n > 0) account_drain(d, n), progress = true;
      else if (n == -EAGAIN || n == 0) dst_blocked = true;
      else rs_raise_side("double_splice", (int)-n, "dest");
    }
    if (progress) continue;
    int w;
    if (d->in_pipe > 0 && (dst_blocked || !src_blocked)) {
      w = rs_io_wait_fd(d->dst, POLLOUT, -1);
      if (w < 0) rs_raise_side("double_splice", -w, "dest");
    } else {
      w = rs_io_wait_fd(d->src, POLLIN, -1);
      if (w < 0) rs_raise_side("double_splice", -w, "src");
    }
  }
  return Qnil;
}

/* From a regular file no pipe is needed: sendfile(2) moves file pages to
 * dest in one call where the pipe takes two splices, and there is no pipe
 * to open, size and close (about 20 fewer system calls per MiB), nor bytes
 * to strand in one. dest must be non-blocking, so a full socket says
 * EAGAIN and the fiber waits instead of the thread. Each call moves what
 * dest takes, at most `step` bytes so one copy cannot hold the loop while
 * a fast reader keeps draining. (Running these calls on the scheduler's
 * worker threads, to use a second core, was tried: 1,000 concurrent 1 MiB
 * copies took 0.5-0.6 CPU s instead of 0.36-0.44 for no steady gain.)
 * Returns false, before moving a byte, when the kernel cannot sendfile
 * between these two. */
static bool dsplice_sendfile(dsplice *d, size_t step) {
  bool moved = false;
  for (;;) {
    long n = rs_sendfile_some(d->dst, d->src, step, "double_splice", !moved);
    if (n < 0) return false;
    if (n == 0) return true;
    d->total += n;
    moved = true;
  }
}

static VALUE io_s_double_splice(int argc, VALUE *argv, VALUE klass) {
  VALUE src, dest, opts;
  rb_scan_args(argc, argv, "2:", &src, &dest, &opts);
  size_t chunk = 65536;
  VALUE vchunk = rs_kwarg(opts, "chunk_size");
  if (vchunk != Qundef) {
    long c = NUM2LONG(vchunk);
    if (c <= 0) rb_raise(rb_eArgError, "chunk_size must be positive");
    chunk = (size_t)c > RS_SPLICE_MAX_CHUNK ? RS_SPLICE_MAX_CHUNK : (size_t)c;
  }
  rs_end in = rs_end_of(src, RS_SIDE_READ, "double_splice"), out = rs_end_of(dest, RS_SIDE_WRITE, "double_splice");
  dsplice d = {.src = in.fd, .dst = out.fd, .pipe_r = -1, .pipe_w = -1, .chunk = chunk,
               .src_io = rs_io_end_io(src, RS_SIDE_READ)};
  d.total = rs_move_buffered(src, out.fd, SIZE_MAX, "double_splice");
  if (in.is_file && (out.is_socket || out.is_pipe) && out.nonblock &&
      dsplice_sendfile(&d, chunk < RS_SENDFILE_STEP ? RS_SENDFILE_STEP : chunk))
    return LL2NUM(d.total);
  int ret = open_pipe(&d);
  if (ret < 0) rs_raise_errno(-ret, "double_splice: pipe2");
  rb_ensure(dsplice_run, (VALUE)&d, close_pipe, (VALUE)&d);
  return LL2NUM(d.total);
}

void rs_init_splice(VALUE mRingspun) {
  (void)mRingspun;
  rb_define_singleton_method(rb_cIO, "splice", io_s_splice, 3);
  rb_define_singleton_method(rb_cIO, "tee", io_s_tee, 3);
  rb_define_singleton_method(rb_cIO, "double_splice", io_s_double_splice, -1);
}
