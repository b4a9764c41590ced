/* IO operations (ARCHITECTURE.md, layer 4), each with two strategies:
 * native (a Ringspun scheduler on io_uring: an op, the fiber parks) and
 * readiness (everything else: the non-blocking call, and on EAGAIN a wait
 * through whatever scheduler is current, or poll(2) without the GVL).
 *   ends.c    a primitive's arguments: the fd of a Ruby IO end, Ruby's
 *             read buffer (take bytes out, give bytes back), keywords;
 *   ready.c   the readiness strategy: waits, one fd or several, and the
 *             splice(2), tee(2) and sendfile(2) steps, which always take it;
 *   rw.c      read and write in both strategies, once or kept in flight;
 *   reader.c  a chunk reader with read-ahead (reader.h). */
#ifndef RINGSPUN_IO_H
#define RINGSPUN_IO_H 1
#include <ruby.h>
#include <sys/types.h>
#include "runtime/sched.h"

/* ---- a primitive's arguments (ends.c) ------------------------------------------ */

int rs_io_fd(VALUE io);    /* raises IOError on a closed IO, TypeError else */
/* The one keyword argument `name` of opts (a Hash or nil), Qundef when
 * absent; any other key raises ArgumentError. */
VALUE rs_kwarg(VALUE opts, const char *name);
/* A duration in seconds (Numeric, as Fiber::Scheduler hooks take it) in
 * ns; ArgumentError if negative. */
int64_t rs_duration_ns(VALUE d);
enum { RS_SIDE_READ = 0, RS_SIDE_WRITE = 1 };
/* The fd to read from (or write to) for a primitive's argument: an IO, a
 * Ringspun::Pipe (its matching end) or an Integer fd. An object that wraps
 * another IO (OpenSSL::SSL::SSLSocket) raises ArgumentError: splicing under
 * it would bypass TLS. */
int rs_io_end_fd(VALUE obj, int side);
/* The Ruby IO behind a primitive's argument: the IO itself, a Pipe's end,
 * a Delegator's IO; Qnil for an Integer fd, Qundef for anything else. */
VALUE rs_io_end_io(VALUE obj, int side);

typedef struct rs_end {
  int fd;
  bool is_pipe;
  bool is_file;     /* a regular file */
  bool is_socket;
  bool nonblock;    /* O_NONBLOCK is set */
  int64_t size;     /* st_size, when the stat was taken */
} rs_end;

/* A primitive's src (RS_SIDE_READ) or dest, checked: open, the right
 * access mode; raises Errno naming `call` and the side otherwise. */
rs_end rs_end_of(VALUE obj, int side, const char *call);

/* Up to max (at most RS_TAKE_MAX) bytes Ruby already read into io's
 * buffer, taken out of it as a binary String; nil when there are none or
 * io is not an IO. A primitive moves them before it reads the fd itself. */
VALUE rs_io_take_buffered(VALUE io, long max);
/* Ruby holds bytes it read ahead for io (an IO; false for anything else). */
bool rs_io_has_buffered(VALUE io);
#define RS_TAKE_MAX 65536L /* the most one rs_io_take_buffered returns */
/* Puts bytes back in front of io's read buffer (before what it holds).
 * Raises IOError when Ruby's buffer cannot take them all. */
void rs_io_unread(VALUE io, const char *data, long n);
/* data followed by acc (a String, or nil for none), as a new String: the
 * pieces of one give-back gathered front to back, so one rs_io_unread puts
 * them all back (each ungetbyte may fix the buffer's capacity). */
VALUE rs_bytes_prepend(VALUE acc, const char *data, long n);

/* ---- waiting (ready.c) ------------------------------------------------------------ */

/* Wait for readiness; returns revents (> 0), 0 on timeout, -errno. */
int rs_io_wait_fd(int fd, short events, int64_t timeout_ns);
struct pollfd;
/* Waits until one of n fds has one of its events, or timeout_ns passes
 * (< 0: forever); the caller polls for the details. Returns 1 when one is
 * ready, 0 on timeout, -errno. */
int rs_io_wait_any(struct pollfd *pfds, long n, int64_t timeout_ns);
/* poll(2) with no timeout: fd has one of events now. */
bool rs_fd_ready(int fd, short events);

/* ---- reading and writing (rw.c) ------------------------------------------------------ */

/* One read/write of up to len bytes, waiting for readiness as needed.
 * `keep` is the Ruby object owning buf (or Qnil when buf is C memory): the
 * kernel may write into it until the operation's completion arrives.
 * Returns bytes moved (0: end of input) or -errno. */
ssize_t rs_io_read_keep(int fd, void *buf, size_t len, VALUE keep);
ssize_t rs_io_write_keep(int fd, const void *buf, size_t len, VALUE keep);
/* rs_io_read_keep for a reader that must lose no byte to an exception (a
 * Timeout): on io_uring, a read that completed as its wait was interrupted
 * sets *salvaged to its count (the bytes are in buf) before the exception
 * goes on; elsewhere the exception can only come before the read. */
ssize_t rs_io_read_salvage(int fd, void *buf, size_t len, VALUE keep, ssize_t *salvaged);
/* One attempt that does not wait for readiness: bytes moved or -errno,
 * -EAGAIN when the fd is not ready (the caller waits as it likes). */
ssize_t rs_io_once(int kind, int fd, void *buf, size_t len, VALUE keep);
/* pread(2)/pwrite(2) at file offset off (kind RS_OP_READ or RS_OP_WRITE),
 * through the ring where it can be: bytes moved or -errno. */
ssize_t rs_io_prw_keep(int kind, int fd, void *buf, size_t len, int64_t off, VALUE keep);
/* Writes all of buf with write(2)/send(2), waiting for readiness as needed;
 * `more` hints that more data follows (MSG_MORE on sockets). */
void rs_write_all_direct(int fd, const void *buf, size_t len, bool more, const char *call);
/* Writes the bytes Ruby already buffered for src (at most max) to out;
 * returns how many. */
int64_t rs_move_buffered(VALUE src, int out, size_t max, const char *call);
/* The pool for the current fiber: its scheduler's, or the thread's. */
rs_buf_pool *rs_current_pool(void);

/* A read or write that may be kept in flight while the fiber works (the
 * native strategy: an SQE submitted now); elsewhere it runs at finish.
 * The buffer lies in a pool block. While the kernel may write the block
 * the op owns it: if the fiber is interrupted or gives up, the block goes
 * back to its pool only when the completion arrives. */
typedef struct rs_pending {
  rs_sched *s;       /* native scheduler, or NULL */
  rs_op *op;         /* in flight, or NULL */
  int kind;          /* RS_OP_READ or RS_OP_WRITE */
  int fd;
  char *buf;
  size_t len;
  void *block;       /* the pool block holding buf */
  rs_buf_pool *pool;
  bool active;
  bool op_owns_block;
  ssize_t salvaged;  /* a read that completed as its wait was interrupted */
} rs_pending;

void rs_pending_start(rs_pending *p, int kind, int fd, void *buf, size_t len);
/* Reads: bytes read (0 at end of input). Writes: writes all of len.
 * Returns -errno on failure. */
ssize_t rs_pending_finish(rs_pending *p);
/* Cancels an operation still in flight and waits for its completion, so
 * nothing is left pending; returns its result (a read may have taken
 * bytes: they are in p->buf). Never raises. */
ssize_t rs_pending_drain(rs_pending *p);

/* ---- splice, tee, sendfile (ready.c) ---------------------------------------------------- */

enum { RS_MOVE_SPLICE = 0, RS_MOVE_TEE = 1 };
#define RS_SPLICE_MAX_CHUNK (1U << 30)

/* One splice or tee with SPLICE_F_NONBLOCK; returns bytes, 0 or -errno
 * (-EAGAIN included). */
long rs_splice_step(int kind, int in, int out, size_t len);
/* One splice/tee that waits until it moves something or reaches the end;
 * raises Errno naming `call` and the side. */
long rs_move_once(int kind, int in, int out, size_t len, const char *call);
/* splice(2) that waits for readiness; returns bytes (0: end of input). */
long rs_splice_some(int in, int out, size_t len, const char *call);
/* One sendfile(2) from in's file position that waits for out; returns
 * bytes (0: end of file). Raises on failure, except that with `refusable`
 * EINVAL/ENOSYS (no sendfile between these two) come back as -errno. */
long rs_sendfile_some(int out, int in, size_t len, const char *call, bool refusable);
/* Splices exactly len bytes (the caller knows they are there). */
void rs_splice_exactly(int in, int out, size_t len, const char *call);
/* A private pipe, O_CLOEXEC|O_NONBLOCK, sized toward `want`. */
int rs_pipe_open(int fds[2], size_t want, size_t *cap);

void rs_init_io_ends(void);
void rs_init_io_ready(void);
#endif
