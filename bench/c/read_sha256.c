/* The read_loop_sha256 case's floors: read stdin (the loopback TCP socket
 * the case hands over) to its end in 64 KiB chunks and take the SHA-256 of
 * each chunk (OpenSSL's, as the Ruby contenders' OpenSSL::Digest).
 *
 *   read_sha256 serial   one thread: read, hash, read, ...
 *   read_sha256 fresh    serial, each chunk read into a new malloc'd buffer,
 *                        freed 256 at a time (as Ruby's GC frees Strings):
 *                        a new String per chunk, minus Ruby
 *   read_sha256 thread   a reader thread fills a ring of 8 chunks while the
 *                        main thread hashes: the most a second core can
 *                        hide of the reads here.
 *
 * Prints one line of figures: units (MiB read), bytes, cpu_s (all threads)
 * and maxrss_kib. */
#include <errno.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "figures.h"

#define CHUNK 65536
#define SLOTS 8

static char slots[SLOTS][CHUNK];
static ssize_t lens[SLOTS];
static long filled, taken; /* chunks the reader filled, the hasher took */
static int at_end;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;


static ssize_t read_chunk(char *buf) {
  for (;;) {
    ssize_t n = read(0, buf, CHUNK);
    if (n >= 0 || errno != EINTR) return n;
  }
}

#define FRESH_BATCH 256

static long long serial(int fresh) {
  static char reused[CHUNK];
  static char *held[FRESH_BATCH];
  int nheld = 0;
  unsigned char md[SHA256_DIGEST_LENGTH];
  long long total = 0;
  ssize_t n;
  for (;;) {
    char *buf = reused;
    if (fresh) {
      if (nheld == FRESH_BATCH) {
        for (int i = 0; i < nheld; i++) free(held[i]);
        nheld = 0;
      }
      buf = held[nheld++] = malloc(CHUNK);
      if (!buf) return -1;
    }
    if ((n = read_chunk(buf)) <= 0) break;
    SHA256((unsigned char *)buf, (size_t)n, md);
    total += n;
  }
  for (int i = 0; i < nheld; i++) free(held[i]);
  return n < 0 ? -1 : total;
}

/* The reader thread: fills the next free slot until end of input. */
static void *reader(void *arg) {
  (void)arg;
  for (;;) {
    pthread_mutex_lock(&lock);
    while (filled - taken == SLOTS) pthread_cond_wait(&changed, &lock);
    int i = (int)(filled % SLOTS);
    pthread_mutex_unlock(&lock);
    ssize_t n = read_chunk(slots[i]);
    pthread_mutex_lock(&lock);
    if (n <= 0) at_end = n < 0 ? -1 : 1;
    else {
      lens[i] = n;
      filled++;
    }
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
    if (n <= 0) return NULL;
  }
}

static long long threaded(void) {
  pthread_t t;
  if (pthread_create(&t, NULL, reader, NULL) != 0) return -1;
  unsigned char md[SHA256_DIGEST_LENGTH];
  long long total = 0;
  for (;;) {
    pthread_mutex_lock(&lock);
    while (filled == taken && !at_end) pthread_cond_wait(&changed, &lock);
    int empty = filled == taken;
    pthread_mutex_unlock(&lock);
    if (empty) break;
    int i = (int)(taken % SLOTS);
    SHA256((unsigned char *)slots[i], (size_t)lens[i], md);
    total += lens[i];
    pthread_mutex_lock(&lock);
    taken++;
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
  }
  pthread_join(t, NULL);
  return at_end < 0 ? -1 : total;
}

int main(int argc, char **argv) {
  const char *mode = argc == 2 ? argv[1] : "serial";
  long long total = strcmp(mode, "thread") == 0 ? threaded() : serial(strcmp(mode, "fresh") == 0);
  if (total < 0) {
    perror("read_sha256: read");
    return 1;
  }
  printf("units=%lld bytes=%lld cpu_s=%.6f maxrss_kib=%ld\n", total >> 20, total, figures_cpu_s(),
         figures_vmhwm_kib());
  return 0;
}
