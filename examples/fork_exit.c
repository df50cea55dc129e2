/*
 * The seed's scenario, in C: a process A opens the device, mirrors 64 MiB, runs a spin kernel,
 * and forks a child B that keeps the device fd; A's parent (this program's driver) SIGKILLs A and
 * reads back, from the daemon, when A's device work was noticed dead, quiesced and released —
 * while B is still alive and still holds the fd.
 *
 *   cc examples/fork_exit.c $(pkg-config --cflags --libs tether) -o fork_exit
 *   tether daemon &            # in another terminal, or with TETHER_SOCKET pointing at one
 *   ./fork_exit [exit|release] # the policy A asks for (default: the daemon's)
 *
 * Under `exit` A's work is gone a few milliseconds after the kill; under `release` it lives on
 * until B, the last holder of the fd, is killed too. Exit status 0 when the daemon behaved as the
 * policy says.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <tether.h>

#define MIRROR_BYTES ((size_t)64 << 20)

static void die(const char *what, tether_status s) {
    fprintf(stderr, "fork_exit: %s: %s: %s\n", what, tether_status_name(s), tether_last_error());
    _exit(1);
}

static uint64_t now_nanos(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Process A: never returns. Reports B's pid on `ready` once its spin thread runs. */
static void victim(int ready, tether_policy policy) {
    tether_device_options options;
    tether_device *device;
    tether_memory *memory;
    void *base;
    tether_thread thread;
    tether_thread_report report;
    uint64_t iterations = 65535;
    pid_t b;
    int i;
    tether_status s;

    alarm(60); /* never outlive a driver that died */
    tether_device_options_init(&options);
    options.policy = policy;
    options.close_on_fork = 0; /* B keeps the fd: the point of the scenario */
    if ((s = tether_open(&options, &device)) != TETHER_OK) die("open", s);
    if ((s = tether_mirror(device, MIRROR_BYTES, &memory, &base)) != TETHER_OK) die("mirror", s);
    memset(base, 1, MIRROR_BYTES); /* touch every page, like a real workload */
    if ((s = tether_spawn(device, TETHER_KERNEL_SPIN, &iterations, 1, 8, TETHER_PRIORITY_NORMAL, 60.0, &thread)) != TETHER_OK)
        die("spawn", s);
    for (i = 0; i < 500; i++) { /* up to 5 s for the scheduler to start it */
        if ((s = tether_thread_status(device, thread, &report)) != TETHER_OK) die("status", s);
        if (report.state == TETHER_THREAD_RUNNING) break;
        usleep(10000);
    }
    b = fork();
    if (b < 0) _exit(1);
    if (b == 0) { /* B: holds the inherited fd and does nothing until killed */
        close(ready);
        for (;;) pause();
    }
    if (write(ready, &b, sizeof b) != (ssize_t)sizeof b) _exit(1);
    for (;;) pause();
}

static void print_timeline(const tether_timeline *t, uint64_t t_exit) {
    printf("  reason %s: noticed +%.3f ms, quiesced +%.3f ms, released +%.3f ms after the kill\n", t->reason,
           (double)(t->notice_nanos - t_exit) / 1e6, (double)(t->quiesced_nanos - t_exit) / 1e6,
           (double)(t->released_nanos - t_exit) / 1e6);
    printf("  %u device thread(s) killed, %u region(s) freed, %llu bytes\n", t->threads_killed, t->regions_freed,
           (unsigned long long)t->bytes_freed);
}

int main(int argc, char **argv) {
    tether_policy policy = TETHER_POLICY_DEFAULT;
    tether_control *control;
    tether_timeline timelines[4];
    size_t count = 0;
    int ready[2];
    pid_t a, b = 0;
    uint64_t t_exit;
    int ok = 1, b_alive;
    tether_status s;

    if (argc > 1 && strcmp(argv[1], "exit") == 0) policy = TETHER_POLICY_EXIT;
    else if (argc > 1 && strcmp(argv[1], "release") == 0) policy = TETHER_POLICY_RELEASE;
    else if (argc > 1) { fprintf(stderr, "usage: fork_exit [exit|release]\n"); return 2; }

    /* B is A's child; when A dies, B is re-parented to us, so we can reap it. */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    if (pipe(ready) != 0) { perror("pipe"); return 1; }
    a = fork();
    if (a < 0) { perror("fork"); return 1; }
    if (a == 0) {
        close(ready[0]);
        victim(ready[1], policy);
    }
    close(ready[1]);
    if (read(ready[0], &b, sizeof b) != (ssize_t)sizeof b) {
        fprintf(stderr, "fork_exit: A died before it was ready\n");
        return 1;
    }
    printf("A (pid %d) mirrors 64 MiB and runs a spin thread; its child B (pid %d) holds the device fd\n", (int)a, (int)b);

    if ((s = tether_control_open(NULL, 10, &control)) != TETHER_OK) die("control", s);
    t_exit = now_nanos();
    kill(a, SIGKILL);
    waitpid(a, NULL, 0);
    /* Under release nothing is expected to happen: wait 1 s to show it; else up to 5 s. */
    s = tether_await_teardown(control, a, policy == TETHER_POLICY_RELEASE ? 1.0 : 5.0, timelines, 4, &count);
    b_alive = kill(b, 0) == 0;
    printf("SIGKILL A; B %s\n", b_alive ? "is alive and still holds the fd" : "is gone");
    if (s == TETHER_OK) {
        printf("A's device work was torn down while B lived:\n");
        print_timeline(&timelines[0], t_exit);
        ok = timelines[0].threads_killed >= 1 && timelines[0].regions_freed >= 1 && b_alive;
    } else if (s == TETHER_TIMED_OUT) {
        printf("A's device work is still alive 1 s after A died: B's copy of the fd keeps it (policy release)\n");
        ok = policy == TETHER_POLICY_RELEASE;
    } else {
        die("await teardown", s);
    }

    kill(b, SIGKILL);
    waitpid(b, NULL, 0);
    if (s == TETHER_TIMED_OUT) {
        if ((s = tether_await_teardown(control, a, 5.0, timelines, 4, &count)) != TETHER_OK) die("await teardown", s);
        printf("after B was killed too:\n");
        print_timeline(&timelines[0], t_exit);
    }
    tether_control_close(control);
    printf("%s\n", ok ? "ok" : "unexpected: see above");
    return ok ? 0 : 1;
}
