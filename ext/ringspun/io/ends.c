/* A primitive's arguments: the fd behind a Ruby IO end (an IO, a
 * Ringspun::Pipe, a Delegator, an Integer fd; never under TLS), checked
 * for the access a side needs; Ruby's read buffer, reached through
 * supported API only; keyword arguments and durations. */
#include "io/io.h"
#include "runtime/errors.h"
#include <errno.h>
#include <fcntl.h>
#include <ruby/io.h>
#include <string.h>
#include <sys/stat.h>

static ID id_to_io, id_read_io, id_write_io, id_readpartial, id_closed_p, id_read;

static VALUE unget_bytes(VALUE p) {
  VALUE *args = (VALUE *)p;
  return rb_io_ungetbyte(args[0], args[1]);
}

VALUE rs_kwarg(VALUE opts, const char *name) {
  if (NIL_P(opts)) return Qundef;
  ID key = rb_intern(name);
  VALUE val;
  rb_get_kwargs(opts, &key, 0, 1, &val);
  return val;
}

int rs_io_fd(VALUE io) {
  if (RB_INTEGER_TYPE_P(io)) {
    int fd = NUM2INT(io);
    if (fd < 0) rb_raise(rb_eArgError, "negative file descriptor %d", fd);
    return fd;
  }
  if (!RB_TYPE_P(io, T_FILE)) {
    if (!rb_respond_to(io, id_to_io))
      rb_raise(rb_eTypeError, "expected an IO or an Integer file descriptor, got %" PRIsVALUE, rb_obj_class(io));
    io = rb_convert_type(io, T_FILE, "IO", "to_io");
  }
  rb_io_t *fptr;
  GetOpenFile(io, fptr); /* raises IOError on a closed stream */
  return rb_io_descriptor(io);
}

static VALUE pipe_class(void) {
  static VALUE cPipe = Qundef;
  if (cPipe == Qundef) {
    VALUE m = rb_const_get(rb_cObject, rb_intern("Ringspun"));
    if (!rb_const_defined(m, rb_intern("Pipe"))) return Qnil;
    cPipe = rb_const_get(m, rb_intern("Pipe"));
    rb_gc_register_mark_object(cPipe);
  }
  return cPipe;
}

/* A Delegator (Tempfile is one) forwards every call unchanged to the IO it
 * holds, so its fd carries the same bytes; other wrappers (an SSLSocket)
 * transform what passes through them and are never unwrapped. */
static VALUE delegated_io(VALUE obj) {
  static VALUE cDelegator = Qundef;
  if (cDelegator == Qundef) {
    cDelegator = rb_const_defined(rb_cObject, rb_intern("Delegator")) ? rb_const_get(rb_cObject, rb_intern("Delegator")) : Qnil;
    if (!NIL_P(cDelegator)) rb_gc_register_mark_object(cDelegator);
  }
  if (NIL_P(cDelegator) || !rb_obj_is_kind_of(obj, cDelegator)) return Qnil;
  VALUE target = rb_funcall(obj, rb_intern("__getobj__"), 0);
  return RB_TYPE_P(target, T_FILE) ? target : Qnil;
}

VALUE rs_io_end_io(VALUE obj, int side) {
  if (RB_INTEGER_TYPE_P(obj)) return Qnil;
  if (RB_TYPE_P(obj, T_FILE)) return obj;
  VALUE inner = delegated_io(obj);
  if (!NIL_P(inner)) return inner;
  VALUE cPipe = pipe_class();
  if (!NIL_P(cPipe) && rb_obj_is_kind_of(obj, cPipe))
    return rb_funcall(obj, side == RS_SIDE_READ ? id_read_io : id_write_io, 0);
  return Qundef;
}

/* Ruby's read buffer is reached through supported API only (its rb_io_t
 * fields are deprecated since Ruby 3.3): IO#readpartial hands out buffered
 * bytes without touching the fd whenever there are some, and
 * rb_io_ungetbyte puts bytes back in front. */
static rb_io_t *open_fptr(VALUE io) {
  if (NIL_P(io) || !RB_TYPE_P(io, T_FILE)) return NULL;
  return RFILE(io)->fptr;
}

bool rs_io_has_buffered(VALUE io) {
  rb_io_t *fptr = open_fptr(io);
  return fptr && rb_io_read_pending(fptr);
}

VALUE rs_io_take_buffered(VALUE io, long max) {
  if (max <= 0 || !rs_io_has_buffered(io)) return Qnil;
  /* readpartial allocates max bytes before it knows how many it has. */
  if (max > RS_TAKE_MAX) max = RS_TAKE_MAX;
  return rb_funcall(io, id_readpartial, 1, LONG2NUM(max));
}

/* Everything Ruby buffered, however many readpartial calls that takes. */
static VALUE take_all_buffered(VALUE io) {
  VALUE all = Qnil, part;
  while (!NIL_P(part = rs_io_take_buffered(io, RS_TAKE_MAX))) {
    if (NIL_P(all)) all = part;
    else rb_str_buf_append(all, part);
  }
  return all;
}

static bool try_unget(VALUE io, VALUE bytes) {
  int state = 0;
  VALUE args[2] = {io, bytes};
  rb_protect(unget_bytes, (VALUE)args, &state);
  if (state) rb_set_errinfo(Qnil);
  return state == 0;
}

/* Room asked for when Ruby's read buffer is first made by a give-back. */
#define RS_UNREAD_ROOM (256L * 1024)

VALUE rs_bytes_prepend(VALUE acc, const char *data, long n) {
  if (n <= 0) return acc;
  VALUE s = rb_str_buf_new(n + (NIL_P(acc) ? 0 : RSTRING_LEN(acc)));
  rb_str_buf_cat(s, data, n);
  if (!NIL_P(acc)) rb_str_buf_append(s, acc);
  return s;
}

void rs_io_unread(VALUE io, const char *data, long n) {
  if (n <= 0 || !open_fptr(io) || RTEST(rb_funcall(io, id_closed_p, 0))) return;
  /* Ours come first, then what Ruby still holds; one ungetbyte puts both
   * back, in that order. */
  VALUE back = rb_str_new(data, n);
  VALUE rest = take_all_buffered(io);
  if (!NIL_P(rest)) rb_str_buf_append(back, rest);
  long len = RSTRING_LEN(back);
  /* IO#ungetbyte takes bytes back only up to the capacity of Ruby's read
   * buffer, which Ruby fixes when it first makes the buffer: to 8 KiB on a
   * buffered read, or to the size of the first ungetbyte. So a give-back
   * asks for room to spare (padding in front, read out again at once), and
   * later ones fit in that room; where a buffer made smaller is already
   * there, the bytes alone may still fit. */
  long room = len > RS_UNREAD_ROOM / 2 ? 2 * len : RS_UNREAD_ROOM;
  VALUE padded = rb_str_buf_new(room);
  rb_str_resize(padded, room - len);
  memset(RSTRING_PTR(padded), 0, (size_t)(room - len));
  rb_str_buf_append(padded, back);
  if (try_unget(io, padded)) {
    rb_funcall(io, id_read, 1, LONG2NUM(room - len));
  } else if (!try_unget(io, back)) {
    rb_raise(rb_eIOError,
             "ringspun: %ld bytes read ahead do not fit back into %" PRIsVALUE "'s read buffer "
             "(IO#ungetbyte refused them: Ruby fixed its capacity when it first buffered a read)",
             len, rb_obj_class(io));
  }
  RB_GC_GUARD(back);
  RB_GC_GUARD(padded);
}

int rs_io_end_fd(VALUE obj, int side) {
  VALUE io = rs_io_end_io(obj, side);
  if (io != Qundef) {
    int fd = rs_io_fd(NIL_P(io) ? obj : io);
    /* What Ruby still buffers for this IO goes out before our bytes do
     * (IO#flush: nothing to do when its write buffer is empty). */
    if (side == RS_SIDE_WRITE && !NIL_P(io)) rb_io_flush(io);
    return fd;
  }
  if (rb_respond_to(obj, id_to_io))
    rb_raise(rb_eArgError,
             "%" PRIsVALUE " wraps another IO: splicing would bypass it (and TLS); pass the object to a "
             "primitive that writes through it, or pass a plain IO",
             rb_obj_class(obj));
  rb_raise(rb_eTypeError, "expected an IO, a Ringspun::Pipe or an Integer file descriptor, got %" PRIsVALUE,
           rb_obj_class(obj));
}

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

int64_t rs_duration_ns(VALUE d) {
  double secs = NUM2DBL(d);
  if (secs < 0) rb_raise(rb_eArgError, "time interval must not be negative");
  if (secs > 1e9) secs = 1e9;
  return (int64_t)(secs * 1e9);
}

void rs_init_io_ends(void) {
  id_to_io = rb_intern("to_io");
  id_read_io = rb_intern("read_io");
  id_write_io = rb_intern("write_io");
  id_readpartial = rb_intern("readpartial");
  id_closed_p = rb_intern("closed?");
  id_read = rb_intern("read");
}
