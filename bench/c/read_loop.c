/* The read_loop case's physical limit: read(2) from stdin (the loopback
 * TCP socket the case hands over) into one reused 64 KiB buffer until end
 * of input, as a Ruby read loop does minus Ruby.
 *
 * Prints one line of figures: units (MiB read), bytes, cpu_s and maxrss_kib
 * of this process. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#define CHUNK 65536

/* Peak RSS from /proc/self/status: getrusage's ru_maxrss survives
 * execve(2) and would report the forked Ruby process that exec'ed us. */
static long vmhwm_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long kib = -1;
  while (fgets(line, sizeof(line), f))
    if (sscanf(line, "VmHWM: %ld", &kib) == 1) break;
  fclose(f);
  return kib;
}

int main(void) {
  static char buf[CHUNK];
  long long total = 0;
  for (;;) {
    ssize_t n = read(0, buf, sizeof(buf));
    if (n > 0) {
      total += n;
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      perror("read_loop: read");
      return 1;
    }
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
               (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  printf("units=%lld bytes=%lld cpu_s=%.6f maxrss_kib=%ld\n", total >> 20, total, cpu, vmhwm_kib());
  return 0;
}
