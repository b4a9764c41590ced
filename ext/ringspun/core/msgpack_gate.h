#ifndef RINGSPUN_MSGPACK_GATE_H
#define RINGSPUN_MSGPACK_GATE_H 1
/* The bytes a MessagePack stream has sent that msgpack-c has not seen yet.
 * msgpack-c allocates a container's whole element table (24 bytes an
 * element) when it reads the header, so 5 bytes could ask for gigabytes: a
 * header passes the gate only once at least as many bytes as it declares
 * elements have arrived after it, so memory stays proportional to the
 * input. No Ruby objects: the fuzz harness links it. */
#include <stddef.h>
#include <stdint.h>

#define RS_MP_MAX_DEPTH 32 /* msgpack-c's MSGPACK_EMBED_STACK_SIZE */

typedef struct rs_mp_gate {
  char *buf;
  size_t len, cap;
  size_t pos;      /* bytes checked: msgpack-c may have them */
  uint64_t skip;   /* payload bytes of a str/bin/ext still to pass */
  uint64_t handed; /* bytes given to msgpack-c so far */
  /* The containers open at pos, as msgpack-c will have them: elements
   * still due at each level. */
  uint64_t left[RS_MP_MAX_DEPTH];
  int depth;
  /* rs_mp_gate_verdict's walk so far, so each byte is walked once. */
  size_t scan_i;
  uint64_t scan_skip;
  uint64_t scan_left[RS_MP_MAX_DEPTH];
  int scan_depth;
  int scan_valid;
} rs_mp_gate;

/* Appends input and checks as far as it allows; -1 when out of memory. */
int rs_mp_gate_push(rs_mp_gate *g, const char *data, size_t n);
/* Drops the checked prefix (pos bytes), which the caller gave msgpack-c. */
void rs_mp_gate_take(rs_mp_gate *g);
/* Walks the held bytes as a decoder would. Returns 0, or 1 with *offset at
 * a byte that starts no value (0xc1), or 2 with *offset at the container
 * that nests deeper than RS_MP_MAX_DEPTH levels. */
int rs_mp_gate_verdict(rs_mp_gate *g, uint64_t *offset);
void rs_mp_gate_free(rs_mp_gate *g);
#endif
