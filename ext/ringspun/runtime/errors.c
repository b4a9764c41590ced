/* The one place where a -errno from the C core becomes a Ruby exception:
 * Errno::* with a message naming the call and side ("splice: src"). */
#include "runtime/errors.h"
#include <stdio.h>

VALUE rs_eRunAborted;

void rs_raise_errno(int err, const char *where) { rb_syserr_fail(err, where); }

void rs_raise_side(const char *call, int err, const char *side) {
  char where[64];
  snprintf(where, sizeof(where), "%s: %s", call, side);
  rs_raise_errno(err, where);
}

void rs_init_errors(VALUE mRingspun) {
  rs_eRunAborted = rb_define_class_under(mRingspun, "RunAborted", rb_eException);
}
