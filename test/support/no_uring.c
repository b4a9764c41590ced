/* no_uring: run a command where io_uring_setup(2) fails with EPERM, the way
 * Docker's default seccomp profile (or kernel.io_uring_disabled=2) refuses it.
 *
 *   no_uring ruby -Ilib -rringspun -e 'p Ringspun.run { Fiber.scheduler.backend }'
 *
 * A plain classic-BPF seccomp filter, no libseccomp: the filter is inherited
 * across execve and by every child and thread. Only io_uring_setup is
 * refused; every other system call, and every call made under an ABI this
 * filter does not know, is allowed. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* io_uring_setup has one number on every architecture since Linux 5.1, when
 * new system calls started to share numbers across the tables. */
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
/* x32 calls arrive under the x86_64 arch with this bit set in the number. */
#define X32_BIT 0x40000000u
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#elif defined(__i386__)
#define NATIVE_ARCH AUDIT_ARCH_I386
#else
#error "no_uring: add this architecture's AUDIT_ARCH_* value"
#endif

#define DENY_EPERM BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA))
#define ALLOW BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
#define LOAD(field) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, field))

/* Jump offsets count instructions skipped: 0 is the next one. */
static struct sock_filter filter[] = {
#if defined(__x86_64__)
    /* 0 */ LOAD(arch),
    /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 3),
    /* 2 */ LOAD(nr),
    /* 3 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup | X32_BIT, 4, 0),
    /* 4 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 3, 4),
    /* 32-bit programs (int 0x80) use the i386 table, where io_uring_setup
     * is 425 as well. The accumulator still holds the arch here. */
    /* 5 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_I386, 0, 3),
    /* 6 */ LOAD(nr),
    /* 7 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
    /* 8 */ DENY_EPERM,
    /* 9 */ ALLOW,
#else
    /* 0 */ LOAD(arch),
    /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_ARCH, 0, 3), /* unknown ABI: allow */
    /* 2 */ LOAD(nr),
    /* 3 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
    /* 4 */ DENY_EPERM,
    /* 5 */ ALLOW,
#endif
};

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s command [args...]\n", argv[0]);
    return 2;
  }
  struct sock_fprog prog = {
      .len = (unsigned short)(sizeof(filter) / sizeof(filter[0])),
      .filter = filter,
  };
  /* Without CAP_SYS_ADMIN a filter may only be installed by a process that
   * can never gain privileges again. */
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
    perror("no_uring: prctl(PR_SET_NO_NEW_PRIVS)");
    return 126;
  }
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0) {
    perror("no_uring: prctl(PR_SET_SECCOMP)");
    return 126;
  }
  execvp(argv[1], argv + 1);
  fprintf(stderr, "no_uring: %s: %s\n", argv[1], strerror(errno));
  return 127;
}
