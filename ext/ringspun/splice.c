/* Zero-copy moves: IO.splice, IO.tee, IO.double_splice.
 *
 * Every step is splice(2)/tee(2) with SPLICE_F_NONBLOCK, and a side that is
 * not ready is waited for through rs_io_wait_fd: an io_uring poll under a
 * Ringspun scheduler on io_uring, epoll, another scheduler's io_wait, or
 * poll(2) with the GVL released.
 *
 * Why not IORING_OP_SPLICE: io_uring always runs it in an io-wq worker, and
 * that hop measured 3x slower with 10x the CPU of the syscall for 1 GiB file
 * to loopback socket (kernel 6.18); a splice that waits there would also pin
 * a worker. The poll parks no worker, so idle transfers cost no threads. */
#include "ringspun.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#define RS_SPLICE_MAX_CHUNK (1U << 30)
/* The most one sendfile(2) of double_splice asks for (see dsplice_sendfile). */
#define RS_SENDFILE_STEP (1U << 20)

/* ---- one step ------------------------------------------------------------------ */

/* One splice or tee with SPLICE_F_NONBLOCK; returns bytes, 0 or -errno
 * (-EAGAIN included). */
static long splice_step(int kind, int in, int out, size_t len) {
  if (len > RS_SPLICE_MAX_CHUNK) len = RS_SPLICE_MAX_CHUNK;
  for (;;) {
    ssize_t n = kind == RS_OP_TEE ? tee(in, out, len, SPLICE_F_NONBLOCK)
                                  : splice(in, NULL, out, NULL, len, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

static bool fd_ready(int fd, short events) {
  struct pollfd p = {.fd = fd, .events = events};
  return poll(&p, 1, 0) > 0;
}

/* After EAGAIN: wait for the side that is not ready. Returns 0 or -errno
 * and names the side in *side. */
static int wait_blocked_side(int in, int out, const char **side) {
  if (!fd_ready(in, POLLIN)) {
    *side = "src";
    int r = rs_io_wait_fd(in, POLLIN, -1);
    return r < 0 ? r : 0;
  }
  *side = "dest";
  int r = rs_io_wait_fd(out, POLLOUT, -1);
  return r < 0 ? r : 0;
}

/* Which side an errno belongs to, for the message: a reset or hung-up
 * source says so through poll(2); writing errors are the destination's. */
static const char *side_of(int err, int in) {
  struct stat st;
  if ((err == ECONNRESET || err == ENOTCONN || err == ETIMEDOUT) && fstat(in, &st) == 0 && S_ISSOCK(st.st_mode)) {
    /* Only a socket source can be reset (a pipe whose writer is gone also
     * shows POLLHUP). */
    struct pollfd p = {.fd = in, .events = POLLIN};
    if (poll(&p, 1, 0) > 0 && (p.revents & (POLLERR | POLLHUP))) return "src";
  }
  switch (err) {
  case EPIPE:
  case ECONNRESET:
  case ENOSPC:
  case EDQUOT:
  case EFBIG:
  case ENOTCONN:
    return "dest";
  default:
    return "src";
  }
}

/* One splice/tee that waits until it moves something or reaches the end. */
static long move_once_named(int kind, int in, int out, size_t len, const char *call) {
  for (;;) {
    long n = splice_step(kind, in, out, len);
    if (n >= 0) return n;
    if (n != -EAGAIN) rs_raise_side(call, (int)-n, side_of((int)-n, in));
    const char *side = "src";
    int w = wait_blocked_side(in, out, &side);
    if (w < 0) rs_raise_side(call, -w, side);
  }
}

static long move_once(int kind, int in, int out, size_t len) {
  return move_once_named(kind, in, out, len, kind == RS_OP_TEE ? "tee" : "splice");
}

long rs_splice_some(int in, int out, size_t len, const char *call) {
  return move_once_named(RS_OP_SPLICE, in, out, len, call);
}

long rs_sendfile_some(int out, int in, size_t len, const char *call, bool refusable) {
  for (;;) {
    ssize_t n = sendfile(out, in, NULL, len);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    if (refusable && (errno == EINVAL || errno == ENOSYS)) return -errno;
    if (errno != EAGAIN) rs_raise_side(call, errno, side_of(errno, in)); /* EIO: src */
    int w = rs_io_wait_fd(out, POLLOUT, -1);
    if (w < 0) rs_raise_side(call, -w, "dest");
  }
}

void rs_splice_exactly(int in, int out, size_t len, const char *call) {
  while (len > 0) {
    long n = move_once_named(RS_OP_SPLICE, in, out, len, call);
    if (n == 0) rs_raise_side(call, EPIPE, "dest");
    len -= (size_t)n;
  }
}

/* ---- argument checks ---------------------------------------------------------------- */

/* Returns the fd's status flags. */
static int check_access(int fd, bool want_write, const char *call, const char *side) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) rs_raise_side(call, errno, side);
  int mode = fl & O_ACCMODE;
  bool ok = want_write ? (mode == O_WRONLY || mode == O_RDWR) : (mode == O_RDONLY || mode == O_RDWR);
  if (!ok) rs_raise_side(call, EBADF, side);
  return fl;
}

rs_end rs_end_of(VALUE obj, int side, const char *call) {
  rs_end e;
  e.fd = rs_io_end_fd(obj, side);
  struct stat st;
  if (fstat(e.fd, &st) < 0) rs_raise_side(call, errno, side == RS_SIDE_READ ? "src" : "dest");
  e.is_pipe = S_ISFIFO(st.st_mode);
  e.is_file = S_ISREG(st.st_mode);
  e.is_socket = S_ISSOCK(st.st_mode);
  e.size = (int64_t)st.st_size;
  e.nonblock = (check_access(e.fd, side == RS_SIDE_WRITE, call, side == RS_SIDE_READ ? "src" : "dest") & O_NONBLOCK) != 0;
  return e;
}

static long check_len(VALUE maxlen) {
  long len = NUM2LONG(maxlen);
  if (len == 0) rb_raise(rb_eArgError, "maxlen must not be 0");
  return len;
}

/* Bytes Ruby already read into src's buffer precede the fd's: they are
 * written to out first. Returns how many. */
int64_t rs_move_buffered(VALUE src, int out, size_t max, const char *call) {
  VALUE io = rs_io_end_io(src, RS_SIDE_READ);
  if (io == Qundef) return 0;
  size_t total = 0;
  while (total < max) {
    /* Each take is at most RS_TAKE_MAX, so the long never overflows. */
    size_t left = max - total;
    VALUE got = rs_io_take_buffered(io, left > RS_TAKE_MAX ? RS_TAKE_MAX : (long)left);
    if (NIL_P(got)) break;
    rs_write_all_direct(out, RSTRING_PTR(got), (size_t)RSTRING_LEN(got), false, call);
    total += (size_t)RSTRING_LEN(got);
    RB_GC_GUARD(got);
  }
  return (int64_t)total;
}

/* ---- IO.splice / IO.tee ---------------------------------------------------------------- */

static VALUE io_s_splice(VALUE klass, VALUE src, VALUE dest, VALUE maxlen) {
  long len = check_len(maxlen);
  rs_end in = rs_end_of(src, RS_SIDE_READ, "splice"), out = rs_end_of(dest, RS_SIDE_WRITE, "splice");
  if (!in.is_pipe && !out.is_pipe) rs_raise_errno(EINVAL, "splice: neither src nor dest is a pipe");
  if (len > 0) {
    int64_t b = rs_move_buffered(src, out.fd, (size_t)len, "splice");
    return LONG2NUM(b > 0 ? b : move_once(RS_OP_SPLICE, in.fd, out.fd, (size_t)len));
  }
  size_t chunk = len == LONG_MIN ? RS_SPLICE_MAX_CHUNK : (size_t)-len;
  int64_t total = rs_move_buffered(src, out.fd, SIZE_MAX, "splice");
  for (;;) {
    long n = move_once(RS_OP_SPLICE, in.fd, out.fd, chunk);
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
  return LONG2NUM(move_once(RS_OP_TEE, in.fd, out.fd, (size_t)len));
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

int rs_pipe_open(int fds[2], size_t want, size_t *cap) {
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) return -errno;
  /* A bigger pipe means fewer, larger splices; the limit for unprivileged
   * users (/proc/sys/fs/pipe-max-size) may refuse it, which is harmless. */
  if (want > 65536) fcntl(fds[1], F_SETPIPE_SZ, (int)(want > 1048576 ? 1048576 : want));
  int sz = fcntl(fds[1], F_GETPIPE_SZ);
  if (cap) *cap = sz > 0 ? (size_t)sz : 65536;
  return 0;
}

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
    long n = splice_step(RS_OP_SPLICE, d->pipe_r, d->dst, (size_t)d->in_pipe);
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
      long n = splice_step(RS_OP_SPLICE, d->src, d->pipe_w, fill_len(d));
      if (n >= 0) account_fill(d, n), progress = true;
      else if (n == -EAGAIN) src_blocked = true;
      else rs_raise_side("double_splice", (int)-n, "src");
    }
    if (d->in_pipe > 0) {
      long n = splice_step(RS_OP_SPLICE, d->pipe_r, d->dst, (size_t)d->in_pipe);
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
