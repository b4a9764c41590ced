#ifndef RINGSPUN_HTTP1_H
#define RINGSPUN_HTTP1_H 1
/* HTTP/1.1 chunked framing (RFC 9112 section 7.1), with no Ruby objects:
 * the fuzz harness links it alone. */
#include <stddef.h>
#include <stdint.h>

enum rs_chunk_state {
  RS_CH_SIZE,        /* hex digits of a chunk size */
  RS_CH_EXT,         /* a chunk extension, ignored up to CR */
  RS_CH_SIZE_LF,     /* LF after the size line's CR */
  RS_CH_DATA,        /* `remaining` payload bytes: the caller moves them */
  RS_CH_DATA_CR,     /* CR after the payload */
  RS_CH_DATA_LF,
  RS_CH_TRAILER,     /* start of a trailer line, or of the final CRLF */
  RS_CH_TRAILER_LINE,
  RS_CH_TRAILER_LF,
  RS_CH_END_LF,      /* LF of the final empty line */
  RS_CH_DONE,
  RS_CH_ERROR,
};

typedef struct rs_chunk_parser {
  int state;
  int digits;          /* hex digits read for the current size */
  uint64_t size;       /* the chunk size being read */
  uint64_t remaining;  /* payload bytes still to move (RS_CH_DATA) */
  uint64_t offset;     /* bytes of the body seen so far */
  uint64_t payload;    /* payload bytes in all */
  size_t line_len;     /* length of the current extension or trailer line */
  const char *error;   /* what was wrong, in RS_CH_ERROR */
} rs_chunk_parser;

void rs_chunk_init(rs_chunk_parser *p);
/* Consumes framing bytes from buf until the parser needs payload moved
 * (state RS_CH_DATA), is done, fails, or runs out of input. Returns the
 * bytes consumed. */
size_t rs_chunk_parse(rs_chunk_parser *p, const uint8_t *buf, size_t len);
/* The caller moved n payload bytes (n <= remaining). */
void rs_chunk_consumed(rs_chunk_parser *p, uint64_t n);

/* Writes "\r\n<hex>\r\n" (or without the leading CRLF for the first chunk)
 * into out (at least 24 bytes); returns its length. */
size_t rs_chunk_header(char *out, uint64_t size, int first);
#endif
