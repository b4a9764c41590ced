/* HTTP/1.1 chunked framing: an incremental parser fed any split of the
 * input, and the chunk header writer. No Ruby objects. */
#include "http1.h"
#include <stdio.h>

#define RS_CH_MAX_LINE 8192 /* extension or trailer line */

void rs_chunk_init(rs_chunk_parser *p) {
  p->state = RS_CH_SIZE;
  p->digits = 0;
  p->size = p->remaining = p->offset = p->payload = 0;
  p->line_len = 0;
  p->error = NULL;
}

static int hexval(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static void fail(rs_chunk_parser *p, const char *why) {
  p->state = RS_CH_ERROR;
  p->error = why;
}

/* The size line has ended: payload next, or the trailer section. */
static void size_done(rs_chunk_parser *p) {
  if (p->size == 0) {
    p->state = RS_CH_TRAILER;
  } else {
    p->remaining = p->size;
    p->state = RS_CH_DATA;
  }
}

static void on_size(rs_chunk_parser *p, uint8_t c) {
  int v = hexval(c);
  if (v >= 0) {
    /* 15 hex digits already make 60 bits; a 16th could overflow 63. */
    if (p->size > (UINT64_C(0x7fffffffffffffff) >> 4)) return fail(p, "chunk size overflows 63 bits");
    p->size = (p->size << 4) | (uint64_t)v;
    p->digits++;
    return;
  }
  if (p->digits == 0) return fail(p, "bad hex digit in chunk size");
  if (c == ';' || c == ' ' || c == '\t') {
    p->state = RS_CH_EXT;
    p->line_len = 0;
  } else if (c == '\r') {
    p->state = RS_CH_SIZE_LF;
  } else if (c == '\n') {
    fail(p, "bare LF in chunk size line");
  } else {
    fail(p, "bad hex digit in chunk size");
  }
}

static void on_line(rs_chunk_parser *p, uint8_t c, int next_state) {
  if (c == '\r') {
    p->state = next_state;
  } else if (c == '\n' || ++p->line_len > RS_CH_MAX_LINE) {
    fail(p, c == '\n' ? "bare LF in chunk framing" : "chunk extension or trailer line too long");
  }
}

static void step(rs_chunk_parser *p, uint8_t c) {
  switch (p->state) {
  case RS_CH_SIZE: on_size(p, c); break;
  case RS_CH_EXT: on_line(p, c, RS_CH_SIZE_LF); break;
  case RS_CH_SIZE_LF:
    if (c != '\n') return fail(p, "missing LF after chunk size");
    size_done(p);
    break;
  case RS_CH_DATA_CR:
    if (c != '\r') return fail(p, "missing CRLF after chunk data");
    p->state = RS_CH_DATA_LF;
    break;
  case RS_CH_DATA_LF:
    if (c != '\n') return fail(p, "missing CRLF after chunk data");
    p->state = RS_CH_SIZE;
    p->size = 0;
    p->digits = 0;
    break;
  case RS_CH_TRAILER:
    if (c == '\r') {
      p->state = RS_CH_END_LF;
    } else {
      p->line_len = 0;
      p->state = RS_CH_TRAILER_LINE;
      on_line(p, c, RS_CH_TRAILER_LF);
    }
    break;
  case RS_CH_TRAILER_LINE: on_line(p, c, RS_CH_TRAILER_LF); break;
  case RS_CH_TRAILER_LF:
    if (c != '\n') return fail(p, "missing LF after trailer line");
    p->state = RS_CH_TRAILER;
    break;
  case RS_CH_END_LF:
    if (c != '\n') return fail(p, "missing LF after the last chunk");
    p->state = RS_CH_DONE;
    break;
  default: break;
  }
}

size_t rs_chunk_parse(rs_chunk_parser *p, const uint8_t *buf, size_t len) {
  size_t i = 0;
  while (i < len && p->state != RS_CH_DATA && p->state != RS_CH_DONE && p->state != RS_CH_ERROR) {
    step(p, buf[i]);
    if (p->state == RS_CH_ERROR) break;
    i++;
    p->offset++;
  }
  return i;
}

void rs_chunk_consumed(rs_chunk_parser *p, uint64_t n) {
  p->remaining -= n;
  p->offset += n;
  p->payload += n;
  if (p->remaining == 0) p->state = RS_CH_DATA_CR;
}

size_t rs_chunk_header(char *out, uint64_t size, int first) {
  int n = snprintf(out, 24, "%s%llx\r\n", first ? "" : "\r\n", (unsigned long long)size);
  return n > 0 ? (size_t)n : 0;
}
