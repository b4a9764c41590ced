# frozen_string_literal: true

# Configures the ringspun C extension.
#
# Works in three places:
#   - in tree:      cd ext/ringspun && ruby extconf.rb && make
#   - out of tree:  cd tmp/build/default && ruby ../../../ext/ringspun/extconf.rb && make
#                   (mkmf takes the source directory from this script's path and
#                   writes a Makefile with VPATH pointing at it; `rake compile` does this)
#   - gem install:  RubyGems runs this script in ext/ringspun.
#
# Environment:
#   RINGSPUN_DEBUG=1                      -DRINGSPUN_DEBUG -O0 (assertions on, easy to step through)
#   RINGSPUN_SANITIZE=address,undefined   build with -fsanitize=<list>; see `rake test` for
#                                         how the tests load the sanitizer runtime

require "mkmf"

def ringspun_missing(what, package)
  abort <<~MSG

    ringspun: #{what} not found.
    On Debian/Ubuntu install it with:

        apt-get install #{package}

    (mkmf.log in #{Dir.pwd} has the details of the failed check.)
  MSG
end

# pkg-config is the source of truth for include and link flags. If the tool itself is
# missing we still try the plain header/library checks below, so a system with the
# libraries in default paths builds anyway; the abort message then names both packages.
$ringspun_pkg_config = find_executable(RbConfig::CONFIG["PKG_CONFIG"] || "pkg-config") ||
                       find_executable("pkg-config")

def ringspun_library(pc_names, lib_names, func, header, package)
  return if pc_names.any? { |pc| checking_for("#{pc} via pkg-config") { pkg_config(pc) } }
  # No .pc file: fall back to linking against the library directly.
  return if lib_names.any? { |lib| have_library(lib, func, header) }

  package = "#{package} pkg-config" unless $ringspun_pkg_config
  ringspun_missing("library #{lib_names.first} (pkg-config: #{pc_names.join(' or ')})", package)
end

# --- libraries -----------------------------------------------------------------------

ringspun_library(%w[liburing], %w[uring], "io_uring_queue_init", "liburing.h", "liburing-dev")
ringspun_library(%w[zlib], %w[z], "deflateInit2_", "zlib.h", "zlib1g-dev")
# msgpack-c >= 6 ships msgpack-c.pc and libmsgpack-c; Debian's libmsgpack-dev 4.0 ships
# msgpack.pc and libmsgpackc.
ringspun_library(%w[msgpack-c msgpack], %w[msgpack-c msgpackc], "msgpack_unpacker_init",
                 "msgpack.h", "libmsgpack-dev")

# --- headers and functions -----------------------------------------------------------

ringspun_missing("header liburing.h", "liburing-dev") unless have_header("liburing.h")
# io_uring_submit_and_wait_timeout appeared in liburing 2.2 (Debian bookworm has 2.3).
unless have_func("io_uring_submit_and_wait_timeout", "liburing.h")
  ringspun_missing("io_uring_submit_and_wait_timeout() (liburing >= 2.2 is required)",
                   "liburing-dev")
end
ringspun_missing("header zlib.h", "zlib1g-dev") unless have_header("zlib.h")
ringspun_missing("header msgpack.h", "libmsgpack-dev") unless have_header("msgpack.h")
# These two come with the C library headers (libc6-dev, pulled in by build-essential).
ringspun_missing("header sys/eventfd.h", "build-essential") unless have_header("sys/eventfd.h")
ringspun_missing("header sys/epoll.h", "build-essential") unless have_header("sys/epoll.h")
# glibc 2.35+: epoll waits with a nanosecond timeout (kernel 5.11+, probed at run time).
have_func("epoll_pwait2", "sys/epoll.h")

# --- the Fiber::Scheduler interface of the Ruby being built for -------------------------
# Each hook is compiled in where this Ruby calls it, found by its C API, never by
# comparing version strings (sched_io.c, scheduler.c):
#   io_pread/io_pwrite (3.3+; Ruby 3.1 declares an io_pread it never calls, hence the
#   _memory variant IO#pread goes through), io_select (3.3+), blocking_operation_wait (3.4+),
#   its C handle for running the work on our own threads (4.0+), fiber_interrupt (4.0+).
%w[rb_fiber_scheduler_io_pread_memory rb_fiber_scheduler_io_select rb_fiber_scheduler_blocking_operation_wait
   rb_fiber_scheduler_blocking_operation_extract rb_fiber_scheduler_fiber_interrupt].each do |func|
  have_func(func, "ruby/fiber/scheduler.h")
end
# Exported by libruby since 1.9 but declared in no public header (the ffi gem declares it
# too): sched_io.c needs it to survive Ruby 3.4's IO#pwrite, which calls io_pwrite
# without the GVL.
have_func("ruby_thread_has_gvl_p")

# --- compiler flags ------------------------------------------------------------------
# Added after the checks above so that a sanitizer or -O0 never changes what they find.
# Later -O flags win, so the order below is: release, then sanitizer, then debug.
# Only Init_ringspun may be exported: -fvisibility=hidden, and the C marks that one
# function with visibility("default").

$CFLAGS << " -std=gnu11 -Wall -Wextra -Wno-unused-parameter -fvisibility=hidden -O2 -g"

sanitize = ENV.fetch("RINGSPUN_SANITIZE", "").split(",").map(&:strip).reject(&:empty?)
unless sanitize.empty?
  unless sanitize.all? { |s| s.match?(/\A[a-z][a-z0-9-]*\z/) }
    abort "ringspun: RINGSPUN_SANITIZE must be a comma list of sanitizer names " \
          "(e.g. address,undefined), got #{ENV['RINGSPUN_SANITIZE'].inspect}"
  end
  flag = "-fsanitize=#{sanitize.join(',')}"
  $CFLAGS << " #{flag} -fno-omit-frame-pointer -O1"
  # Heap checks only: ASan is not told when Ruby switches fibers, so redzones our
  # instrumented frames leave on a fiber stack are later hit by Ruby's own
  # (uninstrumented) code reusing that stack: false stack-buffer-overflow reports.
  $CFLAGS << (RbConfig::CONFIG["CC"].to_s.include?("clang") ? " -mllvm -asan-stack=0" : " --param asan-stack=0") if sanitize.include?("address")
  $LDFLAGS << " #{flag}"
  # Fail here with a clear message instead of at link time (libasan8/libubsan1 come with
  # gcc on Debian).
  unless checking_for("sanitizer runtime (#{flag})") { try_link("int main(void) { return 0; }") }
    abort "ringspun: cannot link with #{flag}; is the compiler's sanitizer runtime installed?"
  end
end

unless ["", "0", "false", "no"].include?(ENV.fetch("RINGSPUN_DEBUG", "").strip.downcase)
  $defs << "-DRINGSPUN_DEBUG"
  $CFLAGS << " -O0"
end

# --- sources, by layer ----------------------------------------------------------------
# The folders show the layers (ringspun.h says which is which): core/, runtime/, io/,
# and the Ruby-facing files at the top. mkmf names each object by its file's base name
# (so no two sources share one) and finds the file through VPATH; every file includes
# the others by their path from this folder.
RINGSPUN_LAYERS = %w[core runtime io].freeze
$srcs = ["", *RINGSPUN_LAYERS].flat_map { |dir| Dir[File.join(__dir__, dir, "*.c")].sort }
RINGSPUN_LAYERS.each { |dir| $VPATH << "$(srcdir)/#{dir}" }
$INCFLAGS << " -I$(srcdir)"

create_makefile("ringspun/ringspun")

# mkmf makes the objects depend on the top folder's headers only: add the layers' own.
headers = Dir.glob("**/*.h", base: __dir__).sort.map { |h| "$(srcdir)/#{h}" }
File.open("Makefile", "a") { |f| f.puts "
$(OBJS): #{headers.join(' ')}" }
