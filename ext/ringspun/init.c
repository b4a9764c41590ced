/* Entry point: initializes each file's part in one visible order, from the
 * bottom layer up. */
#include "ringspun.h"

RS_EXPORT void Init_ringspun(void) {
  VALUE mRingspun = rb_define_module("Ringspun");
  rs_init_errors(mRingspun);
  rs_init_sched();
  rs_init_loop();
  rs_init_io_ends();
  rs_init_io_ready();
  rs_init_scheduler(mRingspun);
  rs_init_splice(mRingspun);
  rs_init_zstream(mRingspun);
  rs_init_loops(mRingspun);
  rs_init_msgpack(mRingspun);
  rs_init_http1(mRingspun);
}
