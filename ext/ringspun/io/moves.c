/* splice(2), tee(2) and sendfile(2) steps for the zero-copy primitives
 * (splice.c, http1_io.c). Every step is a non-blocking call, and a side
 * that is not ready is waited for through rs_io_wait_fd: an io_uring poll
 * under a Ringspun scheduler on io_uring, epoll, another scheduler's
 * io_wait, or poll(2) with the GVL released.
 *
 * Why not IORING_OP_SPLICE: io_uring always runs it in an io-wq worker, and
 * that hop measured 3x slower with 10x the CPU of the syscall for 1 GiB file
 * to loopback socket (kernel 6.18); a splice that waits there would also pin
 * a worker. The poll parks no worker, so idle transfers cost no threads. */
#include "io/io.h"
#include "runtime/errors.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- one step ------------------------------------------------------------------ */

long rs_splice_step(int kind, int in, int out, size_t len) {
  if (len > RS_SPLICE_MAX_CHUNK) len = RS_SPLICE_MAX_CHUNK;
  for (;;) {
    ssize_t n = kind == RS_MOVE_TEE ? tee(in, out, len, SPLICE_F_NONBLOCK)
                                  : splice(in, NULL, out, NULL, len, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

/* After EAGAIN: wait for the side that is not ready. Returns 0 or -errno
 * and names the side in *side. */
static int wait_blocked_side(int in, int out, const char **side) {
  if (!rs_fd_ready(in, POLLIN)) {
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

long rs_move_once(int kind, int in, int out, size_t len, const char *call) {
  for (;;) {
    long n = rs_splice_step(kind, in, out, len);
    if (n >= 0) return n;
    if (n != -EAGAIN) rs_raise_side(call, (int)-n, side_of((int)-n, in));
    const char *side = "src";
    int w = wait_blocked_side(in, out, &side);
    if (w < 0) rs_raise_side(call, -w, side);
  }
}

long rs_splice_some(int in, int out, size_t len, const char *call) {
  return rs_move_once(RS_MOVE_SPLICE, in, out, len, call);
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
    long n = rs_move_once(RS_MOVE_SPLICE, in, out, len, call);
    if (n == 0) rs_raise_side(call, EPIPE, "dest");
    len -= (size_t)n;
  }
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


int rs_pipe_open(int fds[2], size_t want, size_t *cap) {
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) return -errno;
  /* A bigger pipe means fewer, larger splices; the limit for unprivileged
   * users (/proc/sys/fs/pipe-max-size) may refuse it, which is harmless. */
  if (want > 65536) fcntl(fds[1], F_SETPIPE_SZ, (int)(want > 1048576 ? 1048576 : want));
  int sz = fcntl(fds[1], F_GETPIPE_SZ);
  if (cap) *cap = sz > 0 ? (size_t)sz : 65536;
  return 0;
}
