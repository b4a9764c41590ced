/* The one place where a -errno from the C core becomes a Ruby exception:
 * Errno::* with a message naming the call and side ("splice: src"). */
#include "ringspun.h"

void rs_raise_errno(int err, const char *where) { rb_syserr_fail(err, where); }

void rs_init_errors(VALUE mRingspun) { (void)mRingspun; }
