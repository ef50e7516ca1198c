/* Preloaded before libfaketime in a process whose wall clock is skewed (tests/skewed_clock.py).
 *
 * libfaketime 0.9.10 (Debian 12's) rewrites the deadline of clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) even when
 * FAKETIME_DONT_FAKE_MONOTONIC=1 leaves the monotonic clock real, and the kernel refuses the result (EINVAL): that is
 * how Python 3.11's time.sleep sleeps (wolfcw/libfaketime#426, fixed upstream after 0.9.10). The monotonic clock is not
 * faked here, so its sleeps go to the kernel untouched; every other clock's go on to libfaketime.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int clock_nanosleep(clockid_t clock_id, int flags, const struct timespec *request, struct timespec *remain) {
    if (clock_id == CLOCK_MONOTONIC) {
        /* clock_nanosleep returns the error number; the raw syscall returns -1 and sets errno. */
        return syscall(SYS_clock_nanosleep, clock_id, flags, request, remain) == -1 ? errno : 0;
    }
    static int (*next)(clockid_t, int, const struct timespec *, struct timespec *);
    if (next == NULL) {
        next = (int (*)(clockid_t, int, const struct timespec *, struct timespec *))dlsym(RTLD_NEXT, "clock_nanosleep");
    }
    return next(clock_id, flags, request, remain);
}
