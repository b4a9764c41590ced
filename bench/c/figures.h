/* The figures line the double_splice, gzip and gunzip reference programs
 * print last, for bench/lib/bench/transfer.rb (the read_loop, read_sha256
 * and msgpack_unpack programs print their own line, with figures_cpu_s
 * and figures_vmhwm_kib):
 *
 *   start_ns=... bytes_in=... bytes=... cpu_s=... maxrss_kib=... runq_ns=...
 *
 * start_ns is CLOCK_MONOTONIC when main() began, so the case can start its
 * timed window there and not pay for fork and exec; the clock is the same
 * in every process. cpu_s is this process's user + system time.
 * maxrss_kib is VmHWM from /proc/self/status: getrusage's ru_maxrss is kept
 * across execve(2) and would report the Ruby process that spawned us.
 * runq_ns is how long this process waited, runnable, for a CPU (the second
 * field of /proc/self/schedstat): on a busy machine, where its wall time
 * went beyond its CPU time. */
#ifndef BENCH_FIGURES_H
#define BENCH_FIGURES_H

#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static inline long long figures_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline long figures_vmhwm_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long kib = -1;
  while (fgets(line, sizeof(line), f)) {
    if (strncmp(line, "VmHWM:", 6) == 0) {
      sscanf(line + 6, "%ld", &kib);
      break;
    }
  }
  fclose(f);
  return kib;
}

/* The second field of /proc/self/schedstat, or -1. */
static inline long long figures_runq_ns(void) {
  FILE *f = fopen("/proc/self/schedstat", "r");
  if (!f) return -1;
  long long run = 0, wait = -1;
  if (fscanf(f, "%lld %lld", &run, &wait) != 2) wait = -1;
  fclose(f);
  return wait;
}

/* This process's user + system time in seconds, all threads. */
static inline double figures_cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static inline void figures_print(FILE *to, long long start_ns, long long bytes_in, long long bytes_out) {
  fprintf(to, "start_ns=%lld bytes_in=%lld bytes=%lld cpu_s=%.6f maxrss_kib=%ld runq_ns=%lld\n", start_ns,
          bytes_in, bytes_out, figures_cpu_s(), figures_vmhwm_kib(), figures_runq_ns());
}

#endif
