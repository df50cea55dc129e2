/*
 * A C program that passes the interface everything wrong it can (NULL, zero sizes, out-of-range
 * values, closed and foreign handles) and checks that each call answers with the right status and
 * a sentence, never a crash. Run by CInterfaceTests against a real daemon ($TETHER_SOCKET).
 * Exit status: the number of failed checks (0: all passed).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tether.h>

static int failures, checks;

/* Checks one call's status, and that a failure came with a sentence (and a success with none). */
static void expect(const char *what, tether_status got, tether_status want, const char *needle) {
    const char *message = tether_last_error();
    int ok = got == want && message != NULL;
    checks++;
    if (ok && want != TETHER_OK && message[0] == '\0') ok = 0;
    if (ok && want == TETHER_OK && message[0] != '\0') ok = 0;
    if (ok && needle != NULL && strstr(message, needle) == NULL) ok = 0;
    if (!ok) failures++;
    printf("%s %s: %s (want %s) \"%s\"\n", ok ? "ok  " : "FAIL", what, tether_status_name(got), tether_status_name(want),
           message ? message : "(null)");
}

#define EXPECT(call, want, needle) expect(#call, (call), (want), (needle))

int main(void) {
    tether_device_options options;
    tether_device *device = NULL, *stale;
    tether_memory *memory = NULL;
    tether_control *control = NULL;
    tether_process_table *table = NULL;
    tether_thread thread = 0, spin = 0;
    tether_thread_report report;
    tether_timeline timelines[2];
    tether_kernel kernel;
    size_t count = 0, spaces = 0;
    void *base = NULL;
    float *x, *y;
    uint64_t args[4], iterations = 65535;
    int alive = -1, status = 0;
    pid_t child;

    /* The status names and the ABI version are plain functions. */
    checks++;
    if (strcmp(tether_status_name(TETHER_NOT_OWNER), "TETHER_NOT_OWNER") != 0 || tether_abi_version() != TETHER_ABI_VERSION ||
        strcmp(tether_status_name((tether_status)12345), "TETHER_UNKNOWN_STATUS") != 0) {
        failures++;
        printf("FAIL status names / ABI version\n");
    }

    /* Opening. */
    EXPECT(tether_open(NULL, NULL), TETHER_INVALID_ARGUMENT, "NULL");
    tether_device_options_init(NULL); /* harmless */
    memset(&options, 0, sizeof options);
    EXPECT(tether_open(&options, &device), TETHER_INVALID_ARGUMENT, "tether_device_options_init");
    tether_device_options_init(&options);
    options.policy = 7;
    EXPECT(tether_open(&options, &device), TETHER_INVALID_ARGUMENT, "policy 7");
    tether_device_options_init(&options);
    options.backend = -3;
    EXPECT(tether_open(&options, &device), TETHER_INVALID_ARGUMENT, "backend");
    tether_device_options_init(&options);
    options.request_timeout_seconds = -1;
    EXPECT(tether_open(&options, &device), TETHER_INVALID_ARGUMENT, "requestTimeoutSeconds");
    tether_device_options_init(&options);
    options.socket_path = "/nonexistent/tether.sock";
    EXPECT(tether_open(&options, &device), TETHER_DEVICE_LOST, "no Tether daemon at /nonexistent/tether.sock");
    EXPECT(tether_open(NULL, &device), TETHER_OK, NULL);

    /* Memory. */
    EXPECT(tether_mirror(device, 0, &memory, &base), TETHER_INVALID_ARGUMENT, "positive number of bytes");
    EXPECT(tether_mirror(device, SIZE_MAX, &memory, &base), TETHER_INVALID_ARGUMENT, NULL);
    EXPECT(tether_mirror(device, 4096, NULL, &base), TETHER_INVALID_ARGUMENT, "memory is NULL");
    EXPECT(tether_mirror(NULL, 4096, &memory, &base), TETHER_BAD_HANDLE, "NULL");
    EXPECT(tether_mirror((tether_device *)(uintptr_t)0xdeadbeef, 4096, &memory, &base), TETHER_BAD_HANDLE, "never was one");
    EXPECT(tether_mirror(device, 2 * 1024 * sizeof(float), &memory, &base), TETHER_OK, NULL);
    EXPECT(tether_mirror((tether_device *)memory, 4096, &memory, &base), TETHER_BAD_HANDLE,
           "a memory handle was passed where a device handle belongs");
    EXPECT(tether_memory_size(memory, NULL), TETHER_INVALID_ARGUMENT, NULL);

    /* Threads: bad arguments first. */
    x = base;
    y = x + 1024;
    {
        float a = 2;
        uint32_t bits;
        int i;
        memcpy(&bits, &a, sizeof bits);
        for (i = 0; i < 1024; i++) { x[i] = (float)i; y[i] = 1; }
        args[0] = 1024;
        args[1] = bits;
        args[2] = (uint64_t)(uintptr_t)x;
        args[3] = (uint64_t)(uintptr_t)y;
    }
    EXPECT(tether_spawn(device, (tether_kernel)99, args, 4, 4, TETHER_PRIORITY_NORMAL, 0, &thread), TETHER_UNKNOWN_KERNEL, "99");
    EXPECT(tether_spawn(device, TETHER_KERNEL_SAXPY, NULL, 4, 4, TETHER_PRIORITY_NORMAL, 0, &thread), TETHER_INVALID_ARGUMENT, "args is NULL");
    EXPECT(tether_spawn(device, TETHER_KERNEL_SAXPY, args, 12, 4, TETHER_PRIORITY_NORMAL, 0, &thread), TETHER_INVALID_ARGUMENT, "at most 11");
    EXPECT(tether_spawn(device, TETHER_KERNEL_SAXPY, args, 4, 4, (tether_priority)9, 0, &thread), TETHER_INVALID_ARGUMENT, "priority 9");
    EXPECT(tether_spawn(device, TETHER_KERNEL_SAXPY, args, 4, 4, TETHER_PRIORITY_NORMAL, NAN, &thread), TETHER_INVALID_ARGUMENT, NULL);
    EXPECT(tether_spawn(device, TETHER_KERNEL_SAXPY, args, 4, 4, TETHER_PRIORITY_NORMAL, 0, NULL), TETHER_INVALID_ARGUMENT, "thread is NULL");
    args[3] = 16; /* y outside every mirrored region: the daemon refuses it at spawn */
    EXPECT(tether_spawn(device, TETHER_KERNEL_SAXPY, args, 4, 4, TETHER_PRIORITY_NORMAL, 0, &thread), TETHER_ADDRESS_FAULT, NULL);
    args[3] = (uint64_t)(uintptr_t)y;
    EXPECT(tether_kernel_from_name(NULL, &kernel), TETHER_INVALID_ARGUMENT, NULL);
    EXPECT(tether_kernel_from_name("nope", &kernel), TETHER_UNKNOWN_KERNEL, "nope");
    EXPECT(tether_kernel_from_name("saxpy", &kernel), TETHER_OK, NULL);

    /* ... then a real one, joined, and the result checked. */
    EXPECT(tether_spawn(device, kernel, args, 4, 4, TETHER_PRIORITY_NORMAL, 0, &thread), TETHER_OK, NULL);
    EXPECT(tether_join(device, thread, NAN, &report), TETHER_INVALID_ARGUMENT, "NaN");
    EXPECT(tether_join(device, thread, 30, NULL), TETHER_INVALID_ARGUMENT, "report is NULL");
    EXPECT(tether_join(device, thread, 30, &report), TETHER_OK, NULL);
    checks++;
    if (report.state != TETHER_THREAD_FINISHED || y[3] != 7.0f || strcmp(report.kernel, "saxpy") != 0) {
        failures++;
        printf("FAIL saxpy: state %d, y[3] = %f, kernel %s\n", report.state, (double)y[3], report.kernel);
    }
    EXPECT(tether_join(device, 999999999, 1, &report), TETHER_NO_SUCH_THREAD, NULL);
    EXPECT(tether_kill(device, 999999999, &alive), TETHER_NO_SUCH_THREAD, NULL);
    EXPECT(tether_thread_status(device, 999999999, &report), TETHER_NO_SUCH_THREAD, NULL);
    EXPECT(tether_run(device, TETHER_KERNEL_SAXPY, args, 4, 0, -1, &report), TETHER_GRID_TOO_LARGE, "0 workgroups");

    /* A join with a timeout gives up with TETHER_TIMED_OUT; the thread and the connection go on.
     * (The daemon still answers the abandoned join when the thread ends, and that reaps it.) */
    EXPECT(tether_spawn(device, TETHER_KERNEL_SPIN, &iterations, 1, 2, TETHER_PRIORITY_LOW, 30, &spin), TETHER_OK, NULL);
    EXPECT(tether_join(device, spin, 0.2, &report), TETHER_TIMED_OUT, "within 0.2");
    EXPECT(tether_thread_status(device, spin, &report), TETHER_OK, NULL);
    EXPECT(tether_kill(device, spin, &alive), TETHER_OK, NULL);
    checks++;
    if (alive != 1) {
        failures++;
        printf("FAIL kill: was alive %d\n", alive);
    }
    /* A spin thread killed before it ends, joined at once. */
    EXPECT(tether_spawn(device, TETHER_KERNEL_SPIN, &iterations, 1, 2, TETHER_PRIORITY_LOW, 30, &spin), TETHER_OK, NULL);
    EXPECT(tether_kill(device, spin, &alive), TETHER_OK, NULL);
    EXPECT(tether_join(device, spin, 30, &report), TETHER_OK, NULL);
    checks++;
    if (report.state != TETHER_THREAD_KILLED) {
        failures++;
        printf("FAIL join after kill: state %d\n", report.state);
    }

    /* A forked child uses the inherited handles: it gets a connection (an address space) of its
       own, without the parent's mirrored memory (docs/ownership.md, rule 1), so the parent's
       addresses are refused there. */
    child = fork();
    if (child == 0) {
        tether_status s = tether_run(device, TETHER_KERNEL_SAXPY, args, 4, 4, 30, &report);
        if (s != TETHER_ADDRESS_FAULT) printf("child: %s: %s\n", tether_status_name(s), tether_last_error());
        fflush(stdout);
        _exit(s == TETHER_ADDRESS_FAULT ? 0 : 1);
    }
    checks++;
    if (child < 0 || waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        failures++;
        printf("FAIL a forked child's run on the inherited handles (status %d)\n", status);
    } else {
        printf("ok   a forked child has its own address space, without the parent's memory\n");
    }

    /* Unmirror twice, close twice, use after close. */
    EXPECT(tether_unmirror(memory), TETHER_OK, NULL);
    EXPECT(tether_unmirror(memory), TETHER_BAD_HANDLE, "closed already");
    EXPECT(tether_mirror(device, 4096, &memory, &base), TETHER_OK, NULL);
    stale = device;
    EXPECT(tether_close(device), TETHER_OK, NULL);
    EXPECT(tether_close(stale), TETHER_BAD_HANDLE, "closed already");
    EXPECT(tether_spawn(stale, TETHER_KERNEL_SAXPY, args, 4, 4, TETHER_PRIORITY_NORMAL, 0, &thread), TETHER_BAD_HANDLE, NULL);
    EXPECT(tether_memory_base(memory, &base), TETHER_BAD_HANDLE, "memory handle was closed");
    EXPECT(tether_unmirror(memory), TETHER_BAD_HANDLE, NULL);

    /* Tools. */
    EXPECT(tether_control_open("/nonexistent/tether.sock", 1, &control), TETHER_DEVICE_LOST, "no Tether daemon");
    EXPECT(tether_control_open(NULL, NAN, &control), TETHER_INVALID_ARGUMENT, NULL);
    EXPECT(tether_control_open(NULL, 0, NULL), TETHER_INVALID_ARGUMENT, NULL);
    EXPECT(tether_control_open(NULL, 0, &control), TETHER_OK, NULL);
    EXPECT(tether_ping(control), TETHER_OK, NULL);
    EXPECT(tether_ping((tether_control *)stale), TETHER_BAD_HANDLE, NULL);
    EXPECT(tether_timelines(control, 0, NULL, 0, NULL), TETHER_INVALID_ARGUMENT, "count is NULL");
    EXPECT(tether_timelines(control, 0, NULL, 5, &count), TETHER_INVALID_ARGUMENT, "array is NULL");
    /* Our closed device was torn down (policy exit: its last connection went): one timeline. */
    EXPECT(tether_timelines(control, (int32_t)getpid(), timelines, 2, &count), TETHER_OK, NULL);
    EXPECT(tether_timelines(control, (int32_t)getpid(), timelines, 0, &count), count > 0 ? TETHER_BUFFER_TOO_SMALL : TETHER_OK, NULL);
    EXPECT(tether_await_teardown(control, 1, -1, timelines, 2, &count), TETHER_INVALID_ARGUMENT, NULL);
    EXPECT(tether_await_teardown(control, 1, 0.1, timelines, 2, &count), TETHER_TIMED_OUT, "pid 1");
    EXPECT(tether_kill_process(NULL, 1, NULL), TETHER_BAD_HANDLE, NULL);
    EXPECT(tether_ps(control, NULL), TETHER_INVALID_ARGUMENT, NULL);
    EXPECT(tether_ps(control, &table), TETHER_OK, NULL);
    EXPECT(tether_process_table_count(table, &spaces), TETHER_OK, NULL);
    EXPECT(tether_process_table_space(table, spaces + 5, NULL), TETHER_INVALID_ARGUMENT, NULL);
    EXPECT(tether_process_table_thread(table, 0, 12345, &report), TETHER_INVALID_ARGUMENT, NULL);
    EXPECT(tether_process_table_free(table), TETHER_OK, NULL);
    EXPECT(tether_process_table_free(table), TETHER_BAD_HANDLE, NULL);
    EXPECT(tether_process_table_count(table, &spaces), TETHER_BAD_HANDLE, NULL);
    EXPECT(tether_control_close(control), TETHER_OK, NULL);
    EXPECT(tether_control_close(control), TETHER_BAD_HANDLE, NULL);

    printf("%d of %d checks passed\n", checks - failures, checks);
    return failures;
}
