/* The IO hooks of Ringspun::Scheduler: io_wait, io_read, io_write, and where
 * the running Ruby calls them io_pread, io_pwrite (3.3+) and io_select.
 *
 * Which hooks exist, and with which arguments, is decided when the extension
 * is compiled for a Ruby, never from its version string:
 * - RUBY_FIBER_SCHEDULER_VERSION undefined (Ruby 3.1, "version 1"):
 *   io_read(io, buffer, length), io_write(io, buffer, length);
 * - version 2 (Ruby 3.2+): io_read(io, buffer, length, offset), offset into
 *   the buffer, results through rb_fiber_scheduler_io_result;
 * - have_func finds rb_fiber_scheduler_io_pread_memory (io_pread/io_pwrite) and
 *   rb_fiber_scheduler_io_select (io_select).
 * In every version `length` is the least to move, and 0 means one attempt:
 * -EAGAIN then makes Ruby wait with io_wait (or return :wait_readable). */
#include "ringspun.h"
#include <errno.h>
#include <poll.h>
#include <ruby/fiber/scheduler.h>
#include <ruby/io.h>
#include <ruby/io/buffer.h>
#include <unistd.h>

#ifdef RUBY_FIBER_SCHEDULER_VERSION
#define RS_SCHEDULER_VERSION RUBY_FIBER_SCHEDULER_VERSION
#else
#define RS_SCHEDULER_VERSION 1
#endif

/* What an io_* hook returns: bytes moved, or -errno. */
static VALUE io_result(ssize_t n) {
#if RS_SCHEDULER_VERSION >= 2
  return n < 0 ? rb_fiber_scheduler_io_result(-1, (int)-n) : rb_fiber_scheduler_io_result(n, 0);
#else
  return n < 0 ? INT2NUM((int)n) : SSIZET2NUM(n);
#endif
}

static VALUE sched_io_wait(VALUE self, VALUE io, VALUE events, VALUE timeout) {
  rs_sched_get(self);
  int fd = rs_io_fd(io);
  int ev = NUM2INT(events) & (POLLIN | POLLPRI | POLLOUT);
  int64_t t = NIL_P(timeout) ? -1 : rs_duration_ns(timeout);
  int ret = rs_io_wait_fd(fd, (short)ev, t);
  if (ret == 0) return Qfalse;
  if (ret < 0) rs_raise_errno(-ret, "io_wait");
  /* An error or hangup makes every requested direction "ready": the next
   * system call reports what happened. (io_uring adds POLLRDHUP to every
   * poll: a POLLOUT wait may end with only that bit.) */
  if (ret & (POLLERR | POLLHUP | POLLNVAL | POLLRDHUP)) return INT2NUM(ev);
  return INT2NUM(ret & ev);
}

/* The part of an IO::Buffer a hook may use: from `offset` to its end. */
typedef struct span {
  char *base;
  size_t size;
} span;

static span buffer_span(VALUE buffer, size_t offset, int kind) {
  void *base;
  size_t size;
  if (kind == RS_OP_READ) {
    rb_io_buffer_get_bytes_for_writing(buffer, &base, &size);
  } else {
    const void *ro;
    rb_io_buffer_get_bytes_for_reading(buffer, &ro, &size);
    base = (void *)ro; /* the kernel only reads it */
  }
  if (offset > size) rb_raise(rb_eArgError, "offset %zu is past the buffer's end (%zu bytes)", offset, size);
  return (span){(char *)base + offset, size - offset};
}

/* One transfer: at file offset `at`, or at the file position when at < 0. */
static ssize_t rw_once(int kind, int fd, char *p, size_t len, int64_t at, VALUE keep) {
  if (at >= 0) return rs_io_prw_keep(kind, fd, p, len, at, keep);
  return kind == RS_OP_READ ? rs_io_read_keep(fd, p, len, keep) : rs_io_write_keep(fd, p, len, keep);
}

/* At least `want` bytes (bounded by the span) for io_read/io_write (at < 0)
 * and io_pread/io_pwrite. A failure after some bytes returns those. A read
 * of 0 is the end of input; so is a positional write of 0 (a regular file
 * has no "not ready" to report). */
static VALUE rw_at_least(int kind, int fd, span sp, size_t want, int64_t at, VALUE keep) {
  size_t done = 0;
  do {
    ssize_t n = rw_once(kind, fd, sp.base + done, sp.size - done, at < 0 ? -1 : at + (int64_t)done, keep);
    if (n < 0) return done ? io_result((ssize_t)done) : io_result(n);
    if (n == 0 && (kind == RS_OP_READ || at >= 0)) break;
    done += (size_t)n;
  } while (done < want && done < sp.size);
  return io_result((ssize_t)done);
}

/* io_read/io_write: at least `want` bytes, or one attempt when want is 0. */
static VALUE stream_rw(int kind, VALUE io, VALUE buffer, size_t want, size_t offset) {
  int fd = rs_io_fd(io);
  span sp = buffer_span(buffer, offset, kind);
  if (want == 0) return io_result(rs_io_once(kind, fd, sp.base, sp.size, buffer));
  return rw_at_least(kind, fd, sp, want, -1, buffer);
}

#if RS_SCHEDULER_VERSION >= 2
static VALUE sched_io_read(VALUE self, VALUE io, VALUE buffer, VALUE length, VALUE offset) {
  rs_sched_get(self);
  return stream_rw(RS_OP_READ, io, buffer, NUM2SIZET(length), NUM2SIZET(offset));
}

static VALUE sched_io_write(VALUE self, VALUE io, VALUE buffer, VALUE length, VALUE offset) {
  rs_sched_get(self);
  return stream_rw(RS_OP_WRITE, io, buffer, NUM2SIZET(length), NUM2SIZET(offset));
}
#define IO_RW_ARITY 4
#else
static VALUE sched_io_read(VALUE self, VALUE io, VALUE buffer, VALUE length) {
  rs_sched_get(self);
  return stream_rw(RS_OP_READ, io, buffer, NUM2SIZET(length), 0);
}

static VALUE sched_io_write(VALUE self, VALUE io, VALUE buffer, VALUE length) {
  rs_sched_get(self);
  return stream_rw(RS_OP_WRITE, io, buffer, NUM2SIZET(length), 0);
}
#define IO_RW_ARITY 3
#endif

#ifdef HAVE_RB_FIBER_SCHEDULER_IO_PREAD_MEMORY
/* io_pread/io_pwrite: at file offset `from`, at least `length` bytes (one
 * transfer when 0). */
static VALUE positional_rw(int kind, VALUE io, VALUE buffer, VALUE from, VALUE length, VALUE offset) {
  int fd = rs_io_fd(io);
  span sp = buffer_span(buffer, NUM2SIZET(offset), kind);
  int64_t at = NUM2LL(from);
  size_t want = NUM2SIZET(length);
  if (at < 0) return io_result(-EINVAL);
  return rw_at_least(kind, fd, sp, want, at, buffer);
}

static VALUE sched_io_pread(VALUE self, VALUE io, VALUE buffer, VALUE from, VALUE length, VALUE offset) {
  rs_sched_get(self);
  return positional_rw(RS_OP_READ, io, buffer, from, length, offset);
}

#ifdef HAVE_RUBY_THREAD_HAS_GVL_P
int ruby_thread_has_gvl_p(void);

/* Ruby 3.4.5's IO#pwrite calls this hook inside rb_thread_io_blocking_call,
 * that is without the GVL (its IO#pread does not). Parking the fiber, or
 * anything else that runs Ruby, would corrupt the VM there (seen: the timer
 * thread spinning forever on a broken thread list). So: one pwrite(2)
 * loop, touching only what Ruby handed over. */
static VALUE pwrite_without_gvl(VALUE io, VALUE buffer, VALUE from, VALUE length, VALUE offset) {
  const void *base;
  size_t size, off = NUM2SIZET(offset), want = NUM2SIZET(length), done = 0;
  rb_io_buffer_get_bytes_for_reading(buffer, &base, &size);
  int fd = rb_io_descriptor(io);
  int64_t at = NUM2LL(from);
  if (off > size) return io_result(-EINVAL);
  do {
    ssize_t n = pwrite(fd, (const char *)base + off + done, size - off - done, (off_t)(at + (int64_t)done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return done ? io_result((ssize_t)done) : io_result(-errno);
    if (n == 0) break;
    done += (size_t)n;
  } while (done < want && done < size - off);
  return io_result((ssize_t)done);
}
#endif

static VALUE sched_io_pwrite(VALUE self, VALUE io, VALUE buffer, VALUE from, VALUE length, VALUE offset) {
#ifdef HAVE_RUBY_THREAD_HAS_GVL_P
  if (!ruby_thread_has_gvl_p()) return pwrite_without_gvl(io, buffer, from, length, offset);
#endif
  rs_sched_get(self);
  return positional_rw(RS_OP_WRITE, io, buffer, from, length, offset);
}
#endif

#ifdef HAVE_RB_FIBER_SCHEDULER_IO_SELECT
/* ---- io_select ------------------------------------------------------------------------ */

/* IO.select's three lists flattened: one pollfd per object and list. */
typedef struct sel {
  VALUE lists[3];       /* as given (Arrays or nil) */
  struct pollfd *pfds;
  long n;
} sel;

static const short sel_events[3] = {POLLIN, POLLOUT, POLLPRI};

/* IO.select takes IOs and what converts to one (to_io), not fds. */
static VALUE sel_io(VALUE obj) { return RB_TYPE_P(obj, T_FILE) ? obj : rb_convert_type(obj, T_FILE, "IO", "to_io"); }

static void sel_collect(sel *s) {
  long total = 0;
  for (int k = 0; k < 3; k++)
    if (!NIL_P(s->lists[k])) total += RARRAY_LEN(s->lists[k] = rb_convert_type(s->lists[k], T_ARRAY, "Array", "to_ary"));
  s->pfds = total ? ALLOC_N(struct pollfd, total) : NULL;
  for (int k = 0; k < 3; k++) {
    if (NIL_P(s->lists[k])) continue;
    for (long i = 0; i < RARRAY_LEN(s->lists[k]); i++) {
      VALUE obj = RARRAY_AREF(s->lists[k], i);
      s->pfds[s->n++] = (struct pollfd){.fd = rs_io_fd(sel_io(obj)), .events = sel_events[k]};
    }
  }
}

/* Polls every fd without waiting; a readable with bytes in Ruby's buffer
 * counts as ready. Returns IO.select's [r, w, e], or nil when none is. */
static VALUE sel_result(sel *s) {
  if (s->n && poll(s->pfds, (nfds_t)s->n, 0) < 0 && errno != EINTR) rs_raise_errno(errno, "io_select: poll");
  VALUE out[3] = {rb_ary_new(), rb_ary_new(), rb_ary_new()};
  bool any = false;
  long at = 0;
  for (int k = 0; k < 3; k++) {
    if (NIL_P(s->lists[k])) continue;
    for (long i = 0; i < RARRAY_LEN(s->lists[k]); i++, at++) {
      VALUE obj = RARRAY_AREF(s->lists[k], i);
      bool ready = s->pfds[at].revents != 0 || (k == 0 && rs_io_has_buffered(sel_io(obj)));
      /* POLLPRI is the only event of an exceptable; an error or hangup
       * makes a reader or writer ready, as select(2) does. */
      if (ready && (k < 2 || (s->pfds[at].revents & POLLPRI))) {
        rb_ary_push(out[k], obj);
        any = true;
      }
      s->pfds[at].revents = 0;
    }
  }
  return any ? rb_ary_new_from_values(3, out) : Qnil;
}

typedef struct sel_wait {
  sel *s;
  int64_t timeout_ns;
} sel_wait;

static VALUE sel_run(VALUE p) {
  sel_wait *w = (sel_wait *)p;
  sel *s = w->s;
  sel_collect(s);
  VALUE now = sel_result(s);
  if (!NIL_P(now) || w->timeout_ns == 0) return now;
  int64_t deadline = w->timeout_ns < 0 ? -1 : (int64_t)rs_now_ns() + w->timeout_ns;
  for (;;) {
    int64_t left = deadline < 0 ? -1 : deadline - (int64_t)rs_now_ns();
    if (deadline >= 0 && left <= 0) return Qnil;
    int ret = rs_io_wait_any(s->pfds, s->n, left);
    if (ret < 0) rs_raise_errno(-ret, "io_select");
    VALUE ready = sel_result(s);
    if (!NIL_P(ready)) return ready;
  }
}

static VALUE sel_free(VALUE p) {
  sel *s = ((sel_wait *)p)->s;
  xfree(s->pfds);
  s->pfds = NULL;
  return Qnil;
}

/* IO.select(readables, writables = nil, exceptables = nil, timeout = nil)
 * inside a fiber: one poll operation per fd, so the loop keeps running. */
static VALUE sched_io_select(int argc, VALUE *argv, VALUE self) {
  rs_sched_get(self);
  rb_check_arity(argc, 1, 4);
  sel s = {{Qnil, Qnil, Qnil}, NULL, 0};
  for (int k = 0; k < 3 && k < argc; k++) s.lists[k] = argv[k];
  sel_wait w = {&s, argc > 3 && !NIL_P(argv[3]) ? rs_duration_ns(argv[3]) : -1};
  VALUE result = rb_ensure(sel_run, (VALUE)&w, sel_free, (VALUE)&w);
  RB_GC_GUARD(s.lists[0]);
  RB_GC_GUARD(s.lists[1]);
  RB_GC_GUARD(s.lists[2]);
  return result;
}
#endif

void rs_init_sched_io(VALUE cScheduler) {
  rb_define_method(cScheduler, "io_wait", sched_io_wait, 3);
  rb_define_method(cScheduler, "io_read", sched_io_read, IO_RW_ARITY);
  rb_define_method(cScheduler, "io_write", sched_io_write, IO_RW_ARITY);
#ifdef HAVE_RB_FIBER_SCHEDULER_IO_PREAD_MEMORY
  rb_define_method(cScheduler, "io_pread", sched_io_pread, 5);
  rb_define_method(cScheduler, "io_pwrite", sched_io_pwrite, 5);
#endif
#ifdef HAVE_RB_FIBER_SCHEDULER_IO_SELECT
  rb_define_method(cScheduler, "io_select", sched_io_select, -1);
#endif
}
