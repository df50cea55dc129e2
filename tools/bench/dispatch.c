/* The C driver of tools/bench-languages: the same loop as `tether bench dispatch --samples` (a
 * tiny spin thread, run = spawn + join in one round trip, 20 warm-up runs), through libtether.so.
 * Prints one round trip in ns per line. Usage: dispatch RUNS (the daemon at $TETHER_SOCKET). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <tether.h>

static uint64_t now_nanos(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

int main(int argc, char **argv) {
    int runs = argc > 1 ? atoi(argv[1]) : 300, i;
    uint64_t one = 1, start, took;
    tether_device *device;
    tether_thread_report report;
    tether_status s;

    if ((s = tether_open(NULL, &device)) != TETHER_OK) {
        fprintf(stderr, "dispatch: %s\n", tether_last_error());
        return 1;
    }
    for (i = 0; i < runs + 20; i++) {
        start = now_nanos();
        s = tether_run(device, TETHER_KERNEL_SPIN, &one, 1, 1, 10.0, &report);
        took = now_nanos() - start;
        if (s != TETHER_OK || report.state != TETHER_THREAD_FINISHED) {
            fprintf(stderr, "dispatch: %s (state %d)\n", tether_last_error(), report.state);
            return 1;
        }
        if (i >= 20) printf("%llu\n", (unsigned long long)took);
    }
    tether_close(device);
    return 0;
}
