/* IO.http1_splice_chunked and IO.http1_splice_unchunked: chunked transfer
 * encoding between descriptors, the payload spliced, never read into Ruby.
 *
 * Sending: each chunk is one splice from src into a private pipe, then the
 * header (with the previous chunk's CRLF merged in front) and the payload
 * out to dest. The header goes out with MSG_MORE so it shares a segment
 * with the payload; a pipe source is not corked, as its bytes may trickle
 * in and must not wait for a segment to fill.
 *
 * From a regular file to a non-blocking socket the chunk sizes are known
 * before the bytes move, so the framing is staged: headers are written
 * into the private pipe and the file's pages spliced in behind them, chunk
 * after chunk, until the pipe (up to 1 MiB) is full; then one splice hands
 * the whole batch to dest. Two pipe operations a chunk and one socket
 * operation a MiB, where a header send and a sendfile(2) a chunk each went
 * through the TCP stack (a C prototype of both: 0.94x against 0.77x of a
 * 1 MiB sendfile loop, 1 GiB to loopback). A body of one chunk skips the
 * pipe: its header and one sendfile, the TCP socket corked.
 *
 * Why not an io_uring linked chain of write + splice + write:
 * IORING_OP_SPLICE always runs in an io-wq worker. That chain, built alone
 * in C (bench/c/http1_uring_chain.c, one submission a chunk), ran at 0.34x
 * the rate of this code, at 2.7x its CPU per GiB. */
#include "ringspun.h"
#include "core/http1.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/stat.h>
#include <unistd.h>
#include <ruby/io.h>

static VALUE eParseError;

typedef struct chunk_out {
  VALUE src_obj;
  rs_end in, out;
  int pipe[2];
  size_t maxlen;
  int64_t total;
  size_t staged; /* bytes in the private pipe not yet spliced to dest */
  bool cork_tried;
  bool corked;   /* we set TCP_CORK on dest and must clear it */
} chunk_out;

static VALUE close_pipe_fds(VALUE p) {
  int *fds = (int *)p;
  for (int i = 0; i < 2; i++) {
    if (fds[i] >= 0) close(fds[i]);
    fds[i] = -1;
  }
  return Qnil;
}

/* Bytes Ruby already buffered for src go out as the first chunk. */
static void buffered_chunk(chunk_out *c, bool *first) {
  VALUE io = rs_io_end_io(c->src_obj, RS_SIDE_READ);
  VALUE got;
  /* One chunk per take: Ruby's buffer is rarely more than one. */
  while (io != Qundef && !NIL_P(got = rs_io_take_buffered(io, RS_TAKE_MAX))) {
    long n = RSTRING_LEN(got);
    char hdr[32];
    size_t hl = rs_chunk_header(hdr, (uint64_t)n, *first);
    rs_write_all_direct(c->out.fd, hdr, hl, true, "http1_splice_chunked");
    rs_write_all_direct(c->out.fd, RSTRING_PTR(got), (size_t)n, true, "http1_splice_chunked");
    RB_GC_GUARD(got);
    c->total += n;
    *first = false;
  }
}

/* The file shrank under us: the header promised len more bytes. */
NORETURN(static void announced_eof(size_t len));
static void announced_eof(size_t len) {
  rb_raise(rb_eEOFError, "http1_splice_chunked: src ended %zu bytes into a chunk it had announced", len);
}

/* Sends exactly len bytes from the file position of c->in to dest. */
static void sendfile_exactly(chunk_out *c, size_t len) {
  while (len > 0) {
    long n = rs_sendfile_some(c->out.fd, c->in.fd, len, "http1_splice_chunked", false);
    if (n == 0) announced_eof(len);
    len -= (size_t)n;
  }
}

/* Hands everything staged in the private pipe to dest. */
static void flush_staged(chunk_out *c) {
  if (c->staged == 0) return;
  rs_splice_exactly(c->pipe[0], c->out.fd, c->staged, "http1_splice_chunked");
  c->staged = 0;
}

/* Framing bytes into the private pipe. At most 32 bytes: a pipe write of
 * under PIPE_BUF is all or nothing, so a full pipe is flushed and the
 * write retried. */
static void stage_bytes(chunk_out *c, const char *buf, size_t len) {
  for (;;) {
    ssize_t n = write(c->pipe[1], buf, len);
    if (n == (ssize_t)len) break;
    if (n < 0 && errno == EINTR) continue;
    if (n >= 0 || errno != EAGAIN) rs_raise_side("http1_splice_chunked", n < 0 ? errno : EIO, "pipe");
    flush_staged(c);
  }
  c->staged += len;
}

/* Exactly len bytes of the file into the private pipe, flushing it to dest
 * whenever it is full. */
static void stage_file(chunk_out *c, size_t len) {
  while (len > 0) {
    ssize_t n = splice(c->in.fd, NULL, c->pipe[1], NULL, len, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n > 0) {
      c->staged += (size_t)n;
      len -= (size_t)n;
    } else if (n == 0) {
      announced_eof(len);
    } else if (errno == EAGAIN && c->staged > 0) {
      flush_staged(c);
    } else if (errno != EINTR) { /* EAGAIN into an empty pipe: the file's, not ours to spin on */
      rs_raise_side("http1_splice_chunked", errno, "src");
    }
  }
}

/* Corks a TCP dest unless its owner already did; a UNIX socket refuses. */
static void cork(chunk_out *c) {
  if (c->cork_tried) return;
  c->cork_tried = true;
  int on = 0;
  socklen_t len = sizeof(on);
  if (getsockopt(c->out.fd, IPPROTO_TCP, TCP_CORK, &on, &len) < 0 || on) return;
  on = 1;
  c->corked = setsockopt(c->out.fd, IPPROTO_TCP, TCP_CORK, &on, sizeof(on)) == 0;
}

/* One chunk of a file: staged when the pipe is open, else header and
 * sendfile straight to dest, corked so that they share segments. Staged
 * batches are not corked: they fill whole segments anyway, and corking
 * them measured 15% slower (4,234 against 4,985 MiB/s). */
static void file_chunk(chunk_out *c, size_t n, bool first) {
  char hdr[32];
  size_t hl = rs_chunk_header(hdr, (uint64_t)n, first);
  if (c->pipe[1] >= 0) {
    stage_bytes(c, hdr, hl);
    stage_file(c, n);
    return;
  }
  cork(c);
  rs_write_all_direct(c->out.fd, hdr, hl, true, "http1_splice_chunked");
  sendfile_exactly(c, n);
}

/* The pipe for staging, when the body is more than one chunk. Without one
 * (no fds left) the chunks go out one by one. */
static void open_staging(chunk_out *c, int64_t left) {
  if (left <= (int64_t)c->maxlen || c->pipe[1] >= 0) return;
  if (rs_pipe_open(c->pipe, 1U << 20, NULL) < 0) c->pipe[0] = c->pipe[1] = -1;
}

/* A regular file as src: chunks of what is left of it, at most maxlen
 * each. At the end one more fstat(2) looks whether the file grew. */
static void file_chunks(chunk_out *c, bool *first) {
  off_t pos = lseek(c->in.fd, 0, SEEK_CUR);
  if (pos < 0) rs_raise_side("http1_splice_chunked", errno, "src");
  int64_t left = c->in.size - (int64_t)pos;
  for (;;) {
    if (left <= 0) {
      struct stat st;
      if (fstat(c->in.fd, &st) < 0) rs_raise_side("http1_splice_chunked", errno, "src");
      left = (int64_t)st.st_size - (int64_t)pos;
      if (left <= 0) return;
    }
    open_staging(c, left);
    size_t n = (uint64_t)left < c->maxlen ? (size_t)left : c->maxlen;
    file_chunk(c, n, *first);
    *first = false;
    c->total += (int64_t)n;
    pos += (off_t)n;
    left -= (int64_t)n;
  }
}

/* Any other src: splice a chunk into the private pipe, then send its
 * header and the pipe's contents. */
static void pipe_chunks(chunk_out *c, bool *first) {
  char hdr[32];
  for (;;) {
    long n = rs_splice_some(c->in.fd, c->pipe[1], c->maxlen, "http1_splice_chunked");
    if (n == 0) return;
    size_t hl = rs_chunk_header(hdr, (uint64_t)n, *first);
    rs_write_all_direct(c->out.fd, hdr, hl, true, "http1_splice_chunked");
    rs_splice_exactly(c->pipe[0], c->out.fd, (size_t)n, "http1_splice_chunked");
    c->total += n;
    *first = false;
  }
}

static bool sends_from_file(const chunk_out *c) {
  return c->in.is_file && c->out.is_socket && c->out.nonblock;
}

/* Uncorking sends what the cork held back, on every way out. */
static VALUE chunked_done(VALUE p) {
  chunk_out *c = (chunk_out *)p;
  if (c->corked) {
    int off = 0;
    setsockopt(c->out.fd, IPPROTO_TCP, TCP_CORK, &off, sizeof(off));
    c->corked = false;
  }
  return close_pipe_fds((VALUE)c->pipe);
}

static VALUE chunked_body(VALUE p) {
  chunk_out *c = (chunk_out *)p;
  bool first = true;
  buffered_chunk(c, &first);
  if (sends_from_file(c)) {
    file_chunks(c, &first);
  } else {
    pipe_chunks(c, &first);
  }
  static const char last[] = "\r\n0\r\n\r\n";
  size_t skip = first ? 2 : 0; /* no chunk before: no CRLF to close */
  const char *tail = last + skip;
  size_t tail_len = sizeof(last) - 1 - skip;
  if (c->staged > 0) { /* the last chunk rides with the final batch */
    stage_bytes(c, tail, tail_len);
    flush_staged(c);
  } else {
    rs_write_all_direct(c->out.fd, tail, tail_len, false, "http1_splice_chunked");
  }
  return Qnil;
}

/* @see lib/ringspun/io.rb for the documented signature. */
static VALUE io_s_http1_splice_chunked(int argc, VALUE *argv, VALUE klass) {
  VALUE src, dest, vmax;
  rb_scan_args(argc, argv, "21", &src, &dest, &vmax);
  long maxlen = NIL_P(vmax) ? 65536 : NUM2LONG(vmax);
  if (maxlen <= 0) rb_raise(rb_eArgError, "maxlen must be positive");
  if (maxlen > (1L << 30)) maxlen = 1L << 30;
  chunk_out c = {.src_obj = src, .maxlen = (size_t)maxlen, .pipe = {-1, -1}};
  c.in = rs_end_of(src, RS_SIDE_READ, "http1_splice_chunked");
  c.out = rs_end_of(dest, RS_SIDE_WRITE, "http1_splice_chunked");
  int ret = sends_from_file(&c) ? 0 : rs_pipe_open(c.pipe, c.maxlen, NULL);
  if (ret < 0) rs_raise_errno(-ret, "http1_splice_chunked: pipe2");
  rb_ensure(chunked_body, (VALUE)&c, chunked_done, (VALUE)&c);
  return LL2NUM(c.total);
}

/* ---- unchunking ----------------------------------------------------------------------- */

typedef struct chunk_in {
  rs_chunk_parser p;
  VALUE src_io;      /* the Ruby IO, for bytes it already buffered */
  int src, dst;
  bool src_socket, src_splicable;
  VALUE dst_str;     /* a String destination, or Qnil */
  int pipe[2];
  void *block;
  rs_buf_pool *pool;
} chunk_in;

NORETURN(static void parse_error(chunk_in *c));
static void parse_error(chunk_in *c) {
  rb_raise(eParseError, "%s at byte offset %llu", c->p.error, (unsigned long long)c->p.offset);
}

NORETURN(static void early_eof(chunk_in *c));
static void early_eof(chunk_in *c) {
  rb_raise(rb_eEOFError, "end of input inside a chunked body (byte offset %llu)", (unsigned long long)c->p.offset);
}

/* Up to max bytes Ruby buffered for src, taken out of its buffer; nil when none. */
static VALUE buffered(chunk_in *c, long max) {
  return NIL_P(c->src_io) ? Qnil : rs_io_take_buffered(c->src_io, max);
}

static void put_payload(chunk_in *c, const char *data, size_t n) {
  if (!NIL_P(c->dst_str)) rb_str_cat(c->dst_str, data, (long)n);
  else rs_write_all_direct(c->dst, data, n, false, "http1_splice_unchunked");
}

/* Waits until src is readable; EOF and errors are the caller's to see. */
static void wait_src(chunk_in *c) {
  int w = rs_io_wait_fd(c->src, POLLIN, -1);
  if (w < 0) rs_raise_side("http1_splice_unchunked", -w, "src");
}

/* Reads at most len bytes, never more: what follows the body stays. */
static size_t read_some(chunk_in *c, void *buf, size_t len, int flags) {
  for (;;) {
    ssize_t n = c->src_socket ? recv(c->src, buf, len, flags | MSG_DONTWAIT) : read(c->src, buf, len);
    if (n > 0) return (size_t)n;
    if (n == 0) early_eof(c);
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) rs_raise_side("http1_splice_unchunked", errno, "src");
    wait_src(c);
  }
}

/* Framing bytes: from Ruby's buffer, by peeking a socket, else a byte at a
 * time (a pipe cannot be peeked, and reading ahead would eat the bytes
 * that follow the body). */
static void parse_framing(chunk_in *c) {
  VALUE got = buffered(c, RS_TAKE_MAX);
  if (!NIL_P(got)) {
    long n = RSTRING_LEN(got);
    size_t used = rs_chunk_parse(&c->p, (const uint8_t *)RSTRING_PTR(got), (size_t)n);
    /* What the parser did not take goes back where it was: it fits, since
     * the buffer held it a moment ago. */
    if ((long)used < n) rs_io_unread(c->src_io, RSTRING_PTR(got) + used, n - (long)used);
    RB_GC_GUARD(got);
    return;
  }
  uint8_t buf[256];
  if (c->src_socket) {
    size_t n = read_some(c, buf, sizeof(buf), MSG_PEEK);
    size_t used = rs_chunk_parse(&c->p, buf, n);
    if (used > 0) read_some(c, buf, used, 0); /* consume exactly what was parsed */
    return;
  }
  read_some(c, buf, 1, 0);
  rs_chunk_parse(&c->p, buf, 1);
}

static size_t move_payload(chunk_in *c, uint64_t remaining) {
  size_t want = remaining > RS_BLOCK_SIZE ? RS_BLOCK_SIZE : (size_t)remaining;
  VALUE got = buffered(c, (long)want);
  if (!NIL_P(got)) {
    size_t n = (size_t)RSTRING_LEN(got);
    put_payload(c, RSTRING_PTR(got), n);
    RB_GC_GUARD(got);
    return n;
  }
  if (c->src_splicable && NIL_P(c->dst_str)) {
    if (c->pipe[0] < 0) {
      int ret = rs_pipe_open(c->pipe, RS_BLOCK_SIZE, NULL);
      if (ret < 0) rs_raise_errno(-ret, "http1_splice_unchunked: pipe2");
    }
    long n = rs_splice_some(c->src, c->pipe[1], want, "http1_splice_unchunked");
    if (n == 0) early_eof(c);
    rs_splice_exactly(c->pipe[0], c->dst, (size_t)n, "http1_splice_unchunked");
    return (size_t)n;
  }
  if (!c->block) {
    c->pool = rs_current_pool();
    c->block = c->pool ? rs_buf_get(c->pool) : NULL;
    if (!c->block) rb_raise(rb_eNoMemError, "http1_splice_unchunked: cannot allocate a buffer");
  }
  size_t n = read_some(c, c->block, want, 0);
  put_payload(c, c->block, n);
  return n;
}

static VALUE unchunk_body(VALUE p) {
  chunk_in *c = (chunk_in *)p;
  while (c->p.state != RS_CH_DONE) {
    if (c->p.state == RS_CH_ERROR) parse_error(c);
    if (c->p.state == RS_CH_DATA) rs_chunk_consumed(&c->p, move_payload(c, c->p.remaining));
    else parse_framing(c);
  }
  return Qnil;
}

static VALUE unchunk_ensure(VALUE p) {
  chunk_in *c = (chunk_in *)p;
  close_pipe_fds((VALUE)c->pipe);
  if (c->block) rs_buf_put(c->pool, c->block);
  c->block = NULL;
  return Qnil;
}

static VALUE io_s_http1_splice_unchunked(VALUE klass, VALUE src, VALUE dest) {
  chunk_in c = {.pipe = {-1, -1}, .src_io = Qnil, .dst_str = Qnil};
  rs_chunk_init(&c.p);
  rs_end in = rs_end_of(src, RS_SIDE_READ, "http1_splice_unchunked");
  c.src = in.fd;
  if (RB_TYPE_P(src, T_FILE)) c.src_io = src;
  struct stat st;
  if (fstat(c.src, &st) == 0) {
    c.src_socket = S_ISSOCK(st.st_mode);
    c.src_splicable = c.src_socket || S_ISFIFO(st.st_mode);
  }
  if (RB_TYPE_P(dest, T_STRING)) {
    rb_check_frozen(dest);
    c.dst_str = dest;
  } else {
    c.dst = rs_end_of(dest, RS_SIDE_WRITE, "http1_splice_unchunked").fd;
  }
  rb_ensure(unchunk_body, (VALUE)&c, unchunk_ensure, (VALUE)&c);
  return ULL2NUM(c.p.payload);
}

void rs_init_http1(VALUE mRingspun) {
  VALUE mHTTP1 = rb_define_module_under(mRingspun, "HTTP1");
  eParseError = rb_define_class_under(mHTTP1, "ParseError", rb_eStandardError);
  rb_define_singleton_method(rb_cIO, "http1_splice_chunked", io_s_http1_splice_chunked, -1);
  rb_define_singleton_method(rb_cIO, "http1_splice_unchunked", io_s_http1_splice_unchunked, 2);
}
