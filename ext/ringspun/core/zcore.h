#ifndef RINGSPUN_ZCORE_H
#define RINGSPUN_ZCORE_H 1
/* gzip (RFC 1952, every member, zero padding) and zlib (RFC 1950) stream
 * decoding with no Ruby objects: IO.gunzip and IO.inflate run it, and the
 * fuzz harness links it alone. */
#include <stdbool.h>
#include <zlib.h>

enum rs_unzip_status {
  RS_UNZIP_NEED_INPUT, /* avail_in is 0: feed more, or call rs_unzip_eof */
  RS_UNZIP_OUTPUT_FULL,/* avail_out is 0: take the output, call again */
  RS_UNZIP_MEMBER,     /* a gzip member ended; hdr describes it */
  RS_UNZIP_END,        /* the zlib stream ended; what follows is ignored */
  RS_UNZIP_ERROR,      /* see error and msg */
};

enum rs_unzip_error {
  RS_UNZIP_OK,
  RS_UNZIP_EDATA,      /* corrupt compressed data */
  RS_UNZIP_ETRUNC,     /* the input ended inside a member */
  RS_UNZIP_ECRC,       /* gzip trailer: CRC-32 mismatch */
  RS_UNZIP_ELENGTH,    /* gzip trailer: ISIZE mismatch */
  RS_UNZIP_EHEADER,    /* a bad gzip header */
  RS_UNZIP_ENOTGZIP,   /* no input at all */
  RS_UNZIP_EGARBAGE,   /* bytes after a member that are neither a member nor zeros */
  RS_UNZIP_EMEM,
};

typedef struct rs_unzip {
  z_stream z;
  gz_header hdr;
  bool gzip;
  bool ready;
  bool in_member;      /* input of the current member has been fed */
  bool at_boundary;    /* between gzip members */
  int members;         /* members completed */
  int error;
  const char *msg;
  /* Runs inflate(); the Ruby binding hands it to a worker thread. */
  int (*inflate_fn)(void *ctx, z_stream *z);
  void *ctx;
} rs_unzip;

/* name/comment: buffers for the gzip header's fields (may be NULL), of
 * name_max + 1 and comm_max + 1 bytes: the last holds a NUL. */
int rs_unzip_init(rs_unzip *u, bool gzip, Bytef *name, uInt name_max, Bytef *comment, uInt comm_max);
/* Decodes u->z.next_in/avail_in into u->z.next_out/avail_out. */
int rs_unzip_run(rs_unzip *u);
/* The input has ended: RS_UNZIP_END when that is a proper end, else
 * RS_UNZIP_ERROR. */
int rs_unzip_eof(rs_unzip *u);
void rs_unzip_end(rs_unzip *u);
#endif
