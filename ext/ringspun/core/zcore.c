/* Stream decoding over zlib: the member loop, padding and error
 * classification that zlib leaves to its caller. No Ruby objects. */
#include "zcore.h"
#include <string.h>

static int direct_inflate(void *ctx, z_stream *z) {
  (void)ctx;
  return inflate(z, Z_NO_FLUSH);
}

static void reset_header(rs_unzip *u) {
  if (!u->gzip) return;
  /* zlib stores up to name_max bytes and leaves the NUL out of a field
   * that long: the byte after them is ours, and always 0. */
  if (u->hdr.name) u->hdr.name[0] = u->hdr.name[u->hdr.name_max] = 0;
  if (u->hdr.comment) u->hdr.comment[0] = u->hdr.comment[u->hdr.comm_max] = 0;
  inflateGetHeader(&u->z, &u->hdr);
}

int rs_unzip_init(rs_unzip *u, bool gzip, Bytef *name, uInt name_max, Bytef *comment, uInt comm_max) {
  memset(u, 0, sizeof(*u));
  u->gzip = gzip;
  u->inflate_fn = direct_inflate;
  /* 15 + 16: gzip only, so a zlib stream is not taken for a gzip one. */
  int ret = inflateInit2(&u->z, gzip ? 15 + 16 : 15);
  if (ret != Z_OK) return ret;
  u->ready = true;
  u->hdr.name = name;
  u->hdr.name_max = name ? name_max : 0;
  u->hdr.comment = comment;
  u->hdr.comm_max = comment ? comm_max : 0;
  reset_header(u);
  return Z_OK;
}

static int fail(rs_unzip *u, int error, const char *msg) {
  u->error = error;
  u->msg = msg;
  return RS_UNZIP_ERROR;
}

/* zlib's own message tells a gzip trailer's CRC from its length. */
static int classify(rs_unzip *u, int ret) {
  const char *msg = u->z.msg ? u->z.msg : zError(ret);
  if (ret == Z_MEM_ERROR) return fail(u, RS_UNZIP_EMEM, msg);
  if (u->gzip && strcmp(msg, "incorrect data check") == 0) return fail(u, RS_UNZIP_ECRC, "invalid compressed data -- crc error");
  if (u->gzip && strcmp(msg, "incorrect length check") == 0)
    return fail(u, RS_UNZIP_ELENGTH, "invalid compressed data -- length error");
  if (u->gzip && (strstr(msg, "header") || strstr(msg, "compression method"))) return fail(u, RS_UNZIP_EHEADER, msg);
  return fail(u, RS_UNZIP_EDATA, msg);
}

/* Between members: zeros are padding (as Python's gzip and gzip -d take
 * them), 0x1f starts a member, anything else is garbage. */
static int cross_boundary(rs_unzip *u) {
  while (u->z.avail_in > 0 && u->z.next_in[0] == 0) {
    u->z.next_in++;
    u->z.avail_in--;
  }
  if (u->z.avail_in == 0) return RS_UNZIP_NEED_INPUT;
  if (u->z.next_in[0] != 0x1f) return fail(u, RS_UNZIP_EGARBAGE, "trailing garbage after gzip member");
  inflateReset(&u->z);
  reset_header(u);
  u->at_boundary = false;
  return -1; /* go on decoding */
}

int rs_unzip_run(rs_unzip *u) {
  if (u->at_boundary) {
    int st = cross_boundary(u);
    if (st >= 0) return st;
  }
  if (u->z.avail_in == 0) return RS_UNZIP_NEED_INPUT;
  if (u->z.avail_out == 0) return RS_UNZIP_OUTPUT_FULL;
  u->in_member = true;
  int ret = u->inflate_fn(u->ctx, &u->z);
  if (ret == Z_STREAM_END) {
    u->members++;
    u->in_member = false;
    if (!u->gzip) return RS_UNZIP_END;
    u->at_boundary = true;
    return RS_UNZIP_MEMBER;
  }
  if (ret == Z_NEED_DICT) return fail(u, RS_UNZIP_EDATA, "a preset dictionary is needed");
  if (ret != Z_OK && ret != Z_BUF_ERROR) return classify(u, ret);
  if (u->z.avail_out == 0) return RS_UNZIP_OUTPUT_FULL;
  if (u->z.avail_in == 0) return RS_UNZIP_NEED_INPUT;
  return fail(u, RS_UNZIP_EDATA, "no progress possible"); /* input and room left, yet stuck */
}

int rs_unzip_eof(rs_unzip *u) {
  if (u->in_member) return fail(u, RS_UNZIP_ETRUNC, "unexpected end of compressed input");
  if (u->members > 0) return RS_UNZIP_END;
  if (u->gzip) return fail(u, RS_UNZIP_ENOTGZIP, "not in gzip format");
  return fail(u, RS_UNZIP_ETRUNC, "unexpected end of compressed input");
}

void rs_unzip_end(rs_unzip *u) {
  if (u->ready) inflateEnd(&u->z);
  u->ready = false;
}
