/* Errors: where a -errno from the C core becomes a Ruby exception, and the
 * exception classes the runtime raises itself. */
#ifndef RINGSPUN_ERRORS_H
#define RINGSPUN_ERRORS_H 1
#include <ruby.h>

/* Errno::* for err, the message naming the call ("splice"). */
NORETURN(void rs_raise_errno(int err, const char *where));
/* Errno::* naming the call and the side: "splice: src". */
NORETURN(void rs_raise_side(const char *call, int err, const char *side));

/* Ringspun::RunAborted: raised into every fiber still parked when a run is
 * abandoned, so their ensure clauses run. Not a StandardError: a `rescue
 * => e` in user code must not swallow it. */
extern VALUE rs_eRunAborted;

void rs_init_errors(VALUE mRingspun);
#endif
