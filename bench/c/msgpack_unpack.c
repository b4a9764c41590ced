/* The msgpack_each case's physical limit: msgpack-c's streaming unpacker
 * fed from stdin (the loopback TCP socket the case hands over) 64 KiB at a
 * time, each message unpacked into msgpack-c's object tree, looked at and
 * dropped. The zone is reset after each message rather than handed out
 * (msgpack_unpacker_next would allocate a new zone per message), the
 * fastest way msgpack-c offers to walk a stream of small messages.
 *
 * Each message must be a map; the "id" of the last one is printed so the
 * case can check it. Prints one line of figures: units (messages), last_id,
 * bytes, cpu_s and maxrss_kib of this process. */
#include <errno.h>
#include <msgpack.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "figures.h"

#define CHUNK 65536

/* Peak RSS from /proc/self/status: getrusage's ru_maxrss survives
 * execve(2) and would report the forked Ruby process that exec'ed us. */

/* The value of the map's "id" key, or -1. */
static long long id_of(const msgpack_object *o) {
  for (uint32_t i = 0; i < o->via.map.size; i++) {
    const msgpack_object_kv *kv = &o->via.map.ptr[i];
    if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 2 && memcmp(kv->key.via.str.ptr, "id", 2) == 0 &&
        kv->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER)
      return (long long)kv->val.via.u64;
  }
  return -1;
}

int main(void) {
  msgpack_unpacker u;
  if (!msgpack_unpacker_init(&u, CHUNK)) {
    fputs("msgpack_unpack: cannot allocate the unpacker\n", stderr);
    return 1;
  }
  long long messages = 0, bytes = 0, last_id = -1;
  for (;;) {
    if (!msgpack_unpacker_reserve_buffer(&u, CHUNK)) {
      fputs("msgpack_unpack: cannot grow the buffer\n", stderr);
      return 1;
    }
    ssize_t n = read(0, msgpack_unpacker_buffer(&u), CHUNK);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      perror("msgpack_unpack: read");
      return 1;
    }
    if (n == 0) break;
    bytes += n;
    msgpack_unpacker_buffer_consumed(&u, (size_t)n);
    int ret;
    while ((ret = msgpack_unpacker_execute(&u)) > 0) {
      msgpack_object obj = msgpack_unpacker_data(&u);
      if (obj.type != MSGPACK_OBJECT_MAP) {
        fprintf(stderr, "msgpack_unpack: message %lld is not a map\n", messages);
        return 1;
      }
      last_id = id_of(&obj);
      messages++;
      /* msgpack-c 4 makes the zone only when a message needs one. */
      if (u.z) msgpack_unpacker_reset_zone(&u);
      msgpack_unpacker_reset(&u);
    }
    if (ret < 0) {
      fprintf(stderr, "msgpack_unpack: malformed data after message %lld\n", messages);
      return 1;
    }
  }
  if (msgpack_unpacker_message_size(&u) > 0) {
    fputs("msgpack_unpack: end of input inside a message\n", stderr);
    return 1;
  }
  msgpack_unpacker_destroy(&u);
  printf("units=%lld last_id=%lld bytes=%lld cpu_s=%.6f maxrss_kib=%ld\n", messages, last_id, bytes,
         figures_cpu_s(), figures_vmhwm_kib());
  return 0;
}
