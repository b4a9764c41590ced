/* A chunk reader with read-ahead (reader.c), shared by the primitives that
 * consume a stream (zstream.c, msgpack.c, and loops.c for multishot receive). */
#ifndef RINGSPUN_READER_H
#define RINGSPUN_READER_H 1
#include "io/io.h"

typedef struct rs_reader {
  int fd;
  size_t chunk;       /* bytes per read, at most RS_BLOCK_SIZE */
  rs_buf_pool *pool;
  void *block[2];
  int cur;
  rs_pending pend;
  bool eof;
  VALUE io;            /* the Ruby IO read from, for bytes it buffered; or Qnil */
  /* multishot receive (sockets under io_uring, when the kernel has it) */
  rs_sched *ms;
  rs_op *ms_op;
  const char *ms_cur;  /* unconsumed part of the current provided buffer */
  size_t ms_len;
  int ms_bid;          /* its buffer id, -1 when none */
} rs_reader;

void rs_reader_init(rs_reader *r, int fd, size_t chunk);
/* Bytes the Ruby IO `io` already buffered come first. */
void rs_reader_set_io(rs_reader *r, VALUE io);
/* Lets the reader use multishot receive when fd is a socket and the
 * scheduler's backend supports it. */
void rs_reader_allow_multishot(rs_reader *r);
/* The next chunk: bytes (0 at end of input) or -errno; *data points into
 * a block that stays valid until the call after next. */
ssize_t rs_reader_next(rs_reader *r, const char **data);
/* Stops reading. With `io`, bytes a read-ahead already took are pushed
 * back into io's read buffer (IO#ungetbyte) so nothing is lost. */
void rs_reader_cleanup(rs_reader *r, VALUE io);
/* rs_reader_cleanup that gathers the bytes to give back in front of *back
 * (see rs_bytes_prepend) instead of giving them back itself. */
void rs_reader_cleanup_into(rs_reader *r, VALUE *back);
#endif
