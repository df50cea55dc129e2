/*
 * tether.h — the C interface of Tether, a user-space GPU device-thread runtime for Linux.
 *
 * Link with libtether.so (`cc prog.c $(pkg-config --cflags --libs tether)`). The library carries
 * the Swift runtime inside it (linked statically): it needs only glibc and libstdc++ at run time,
 * and it never loads Vulkan, so a program that uses it may fork freely.
 *
 * Conventions
 * - C99. Every function returns a `tether_status`: TETHER_OK (0) or an error code. Results come
 *   back through out-parameters, which are written only on success.
 * - On an error, tether_last_error() returns one sentence saying what went wrong (with the fix,
 *   when there is one), usually the daemon's own words. It is per thread and stays valid until the
 *   next tether_* call on the same thread.
 * - Handles are opaque. A closed handle, NULL, or a pointer that never was a handle is refused
 *   with TETHER_BAD_HANDLE, never a crash: handles name entries of a table inside the library and
 *   are never reused, so a stale one cannot name a newer object.
 * - Every call is thread-safe. Every blocking call is bounded: by the device's request timeout, or
 *   by the timeout it takes; all of them fail with TETHER_DEVICE_LOST once the daemon is gone.
 * - Fork: a forked child that uses a device handle it inherited gets a connection and an address
 *   space of its own, transparently. The parent's mirrored memory is not inherited (it is unmapped
 *   in the child); a module is loaded again at its first use there (see docs/ownership.md).
 */
#ifndef TETHER_H
#define TETHER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when a declaration below changes incompatibly; additions keep it. */
#define TETHER_ABI_VERSION 1

/* ---- status codes --------------------------------------------------------------------------- */

/* 1–18 are the codes the daemon and the Swift library use (TetherError.Code); 100+ are this
 * interface's own. */
typedef enum tether_status {
    TETHER_OK = 0,
    /* The request came from a process that does not own the connection. */
    TETHER_NOT_OWNER = 1,
    /* The connection's address space was torn down; the connection is orphaned. */
    TETHER_OWNER_EXITED = 2,
    /* The daemon is gone, was never there, or the handle's connection was closed. */
    TETHER_DEVICE_LOST = 3,
    TETHER_INVALID_ARGUMENT = 4,
    /* Device code used an address outside every mirrored region. */
    TETHER_ADDRESS_FAULT = 5,
    TETHER_UNKNOWN_KERNEL = 6,
    TETHER_GRID_TOO_LARGE = 7,
    TETHER_BACKEND_UNAVAILABLE = 8,
    TETHER_MALFORMED_MESSAGE = 9,
    TETHER_UNSUPPORTED = 10,
    TETHER_KILLED = 11,
    TETHER_NO_SUCH_THREAD = 12,
    TETHER_NO_SUCH_REGION = 13,
    TETHER_RESOURCE_EXHAUSTED = 14,
    TETHER_PERMISSION_DENIED = 15,
    TETHER_DEVICE_ERROR = 16,
    TETHER_PROTOCOL_VERSION = 17,
    /* A call's timeout passed before its answer (the connection stays usable). */
    TETHER_TIMED_OUT = 18,
    /* NULL, closed, or never a handle of this kind. */
    TETHER_BAD_HANDLE = 100,
    /* A result did not fit the caller's array; the count says how many there are. */
    TETHER_BUFFER_TOO_SMALL = 101
} tether_status;

/* The sentence that goes with the last error on this thread ("" after a success). Never NULL. */
const char *tether_last_error(void);

/* A short name for a status code ("TETHER_NOT_OWNER"); "TETHER_UNKNOWN_STATUS" for others. */
const char *tether_status_name(tether_status status);

/* TETHER_ABI_VERSION of the library actually loaded. */
int tether_abi_version(void);

/* ---- enumerations ---------------------------------------------------------------------------- */

typedef enum tether_policy {
    TETHER_POLICY_DEFAULT = -1, /* the daemon's --policy */
    TETHER_POLICY_EXIT = 0,     /* torn down at the earlier of owner exit and last fd close */
    TETHER_POLICY_RELEASE = 1   /* torn down only when the last copy of the fd is closed */
} tether_policy;

typedef enum tether_backend {
    TETHER_BACKEND_AUTO = 0,    /* accept whatever the daemon runs */
    TETHER_BACKEND_VULKAN = 1,
    TETHER_BACKEND_SOFTWARE = 2
} tether_backend;

/* The built-in kernels; their arguments are listed in docs/kernel-abi.md. */
typedef enum tether_kernel {
    TETHER_KERNEL_SAXPY = 0,      /* n, a (f32 bits), x*, y*        y = a*x + y; 256 per group */
    TETHER_KERNEL_REDUCE = 1,     /* n, x*, partials*               2048 elements per group */
    TETHER_KERNEL_MATMUL = 2,     /* n, A*, B*, C*                  one 16x16 tile per group */
    TETHER_KERNEL_MANDELBROT = 3, /* width, height, max_iter, out*  256 pixels per group */
    TETHER_KERNEL_LISTWALK = 4,   /* lists, heads*, out*            64 lists per group */
    TETHER_KERNEL_SPIN = 5        /* iterations (<= 65535)          polls its control word */
} tether_kernel;

typedef enum tether_priority {
    TETHER_PRIORITY_LOW = 0,
    TETHER_PRIORITY_NORMAL = 1,
    TETHER_PRIORITY_HIGH = 2
} tether_priority;

typedef enum tether_thread_state {
    TETHER_THREAD_QUEUED = 0,
    TETHER_THREAD_RUNNING = 1,
    TETHER_THREAD_FINISHED = 2,
    TETHER_THREAD_KILLED = 3,
    TETHER_THREAD_FAULTED = 4,
    TETHER_THREAD_FAILED = 5
} tether_thread_state;

/* Looks a kernel up by its name ("saxpy", "spin", ...). */
tether_status tether_kernel_from_name(const char *name, tether_kernel *kernel);

/* ---- records ----------------------------------------------------------------------------- */

/* A device thread, unique for the life of the daemon. */
typedef uint64_t tether_thread;

/* How a device thread stands or ended. A killed or faulted thread is a report, not an error. */
typedef struct tether_thread_report {
    tether_thread thread;
    int32_t state;            /* tether_thread_state */
    int32_t priority;         /* tether_priority */
    uint64_t device_nanos;    /* device time it used */
    int32_t error_status;     /* why it failed or faulted (TETHER_OK otherwise) */
    char kernel[32];          /* "saxpy", ... (NUL-terminated, truncated) */
    char error_message[256];  /* the daemon's sentence for error_status (NUL-terminated) */
} tether_thread_report;

/* What the daemon said when the device was opened. */
typedef struct tether_device_info {
    uint64_t space;           /* this address space's id in the daemon */
    int32_t pid;              /* the owner pid the daemon sees */
    int32_t policy;           /* tether_policy in force */
    int32_t backend;          /* tether_backend that runs the threads (VULKAN or SOFTWARE) */
    int32_t connection_fd;    /* the connection's fd (-1 once closed) */
    char device_name[128];    /* NUL-terminated, truncated */
} tether_device_info;

/* One address space in `ps`. */
typedef struct tether_space_info {
    uint64_t space;
    int32_t pid;
    uint32_t uid;
    int32_t policy;           /* tether_policy */
    int32_t owner_alive;      /* 1 while the owner process runs */
    uint32_t connections;
    uint32_t regions;
    uint64_t mirrored_bytes;
    uint64_t device_nanos;
    uint32_t thread_count;    /* read them with tether_process_table_thread */
} tether_space_info;

/* A teardown the daemon recorded. Times are CLOCK_MONOTONIC nanoseconds, comparable with
 * clock_gettime(CLOCK_MONOTONIC) in any process on the machine. */
typedef struct tether_timeline {
    uint64_t space;
    int32_t pid;
    uint32_t threads_killed;
    uint64_t notice_nanos;    /* the daemon noticed the death (or the kill) */
    uint64_t quiesced_nanos;  /* no device work of it runs any more */
    uint64_t released_nanos;  /* every mapping, import, fd and registry entry is gone */
    uint64_t bytes_freed;
    uint32_t regions_freed;
    char reason[16];          /* "pidfd", "bpf-sigkill", "bpf-exit", "bpf-exec", "release", "kill", "shutdown" */
} tether_timeline;

/* ---- devices ----------------------------------------------------------------------------- */

typedef struct tether_device tether_device;

typedef struct tether_device_options {
    /* sizeof(tether_device_options), set by tether_device_options_init: lets later versions add
     * fields at the end without breaking programs built against this header. */
    uint32_t struct_size;
    /* NULL: $TETHER_SOCKET, else $XDG_RUNTIME_DIR/tether/tether.sock, else /tmp/tether-$UID/tether.sock */
    const char *socket_path;
    int32_t policy;                 /* tether_policy; default TETHER_POLICY_DEFAULT */
    int32_t backend;                /* tether_backend; default TETHER_BACKEND_AUTO */
    /* 1 (default): a forked child's copies of the connection fd are closed at fork. 0: a child
     * keeps them open, which under the release policy keeps this address space alive. */
    int32_t close_on_fork;
    double request_timeout_seconds; /* every call but join and run; default 30 */
} tether_device_options;

/* Fills in the defaults. */
void tether_device_options_init(tether_device_options *options);

/* Connects to the daemon; the first request binds the connection to this process. `options` may
 * be NULL (defaults). */
tether_status tether_open(const tether_device_options *options, tether_device **device);

/* Closes the connection and unmaps every mirrored region of the device; the handle and its
 * memory handles become invalid. */
tether_status tether_close(tether_device *device);

tether_status tether_device_get_info(tether_device *device, tether_device_info *info);

/* ---- mirrored memory --------------------------------------------------------------------------- */

typedef struct tether_memory tether_memory;

/* Allocates `bytes` (rounded up to whole pages) of memory shared with the device, mapped here at
 * *base. Kernel arguments use these addresses as they are. `base` may be NULL. */
tether_status tether_mirror(tether_device *device, size_t bytes, tether_memory **memory, void **base);

/* Stops mirroring and unmaps; the handle becomes invalid. */
tether_status tether_unmirror(tether_memory *memory);

tether_status tether_memory_base(tether_memory *memory, void **base);
tether_status tether_memory_size(tether_memory *memory, size_t *bytes);

/* ---- device threads ------------------------------------------------------------------------- */

/* Starts a built-in kernel over `groups` workgroups. `args`: owner addresses and scalars (floats
 * as their bit patterns), at most 11. `persistent_seconds` > 0 repeats the grid for that long. */
tether_status tether_spawn(tether_device *device, tether_kernel kernel, const uint64_t *args, size_t arg_count,
                           uint32_t groups, tether_priority priority, double persistent_seconds,
                           tether_thread *thread);

/* Spawn and join in one round trip. `timeout_seconds` < 0: no limit. */
tether_status tether_run(tether_device *device, tether_kernel kernel, const uint64_t *args, size_t arg_count,
                         uint32_t groups, double timeout_seconds, tether_thread_report *report);

/* Waits for the thread to end. `timeout_seconds` < 0: as long as it runs; TETHER_TIMED_OUT when
 * the time passes first. The thread goes on, but the daemon still answers the abandoned join when
 * it ends, and a join reaps the thread (like waitpid): a later join or status then answers
 * TETHER_NO_SUCH_THREAD. To wait in steps, poll tether_thread_status instead. */
tether_status tether_join(tether_device *device, tether_thread thread, double timeout_seconds,
                          tether_thread_report *report);

/* Asks the thread to stop; *was_alive (may be NULL) says whether it still ran. */
tether_status tether_kill(tether_device *device, tether_thread thread, int *was_alive);

/* The thread's state now, without waiting. */
tether_status tether_thread_status(tether_device *device, tether_thread thread, tether_thread_report *report);

/* ---- tools: ps, kill a process, timelines ----------------------------------------------------- */

/* A connection that binds nothing (it never owns an address space, so it keeps nothing alive). */
typedef struct tether_control tether_control;

/* `socket_path` NULL: as for devices. `timeout_seconds` <= 0: 10. */
tether_status tether_control_open(const char *socket_path, double timeout_seconds, tether_control **control);
tether_status tether_control_close(tether_control *control);

/* One round trip. */
tether_status tether_ping(tether_control *control);

/* A snapshot of every address space the daemon serves, with its threads. */
typedef struct tether_process_table tether_process_table;

tether_status tether_ps(tether_control *control, tether_process_table **table);
tether_status tether_process_table_count(tether_process_table *table, size_t *spaces);
tether_status tether_process_table_space(tether_process_table *table, size_t index, tether_space_info *space);
tether_status tether_process_table_thread(tether_process_table *table, size_t space_index, size_t thread_index,
                                          tether_thread_report *thread);
tether_status tether_process_table_free(tether_process_table *table);

/* Tears down the address space of `pid` (reason "kill"); *threads_killed may be NULL. */
tether_status tether_kill_process(tether_control *control, int32_t pid, uint32_t *threads_killed);

/* Kills one device thread of any address space (your own unless root). */
tether_status tether_kill_thread(tether_control *control, tether_thread thread, int *was_alive);

/* The timelines the daemon recorded for `pid` (0: all). *count is how many there are; when that
 * exceeds `capacity`, the first `capacity` are written and TETHER_BUFFER_TOO_SMALL returned.
 * `timelines` may be NULL when `capacity` is 0. */
tether_status tether_timelines(tether_control *control, int32_t pid, tether_timeline *timelines, size_t capacity,
                               size_t *count);

/* Waits until the address space of `pid` has been released (at once if it already was) and
 * returns its newest 64 timelines, oldest first, as tether_timelines does; TETHER_TIMED_OUT when
 * `timeout_seconds` passes first. */
tether_status tether_await_teardown(tether_control *control, int32_t pid, double timeout_seconds,
                                    tether_timeline *timelines, size_t capacity, size_t *count);

/* ---- user kernels: your own SPIR-V compute modules ------------------------------------------ */
/* A module reaches memory only through its descriptor bindings, each a byte range of this
 * process's mirrored memory; push constants and specialization constants carry values. The daemon
 * validates (SPIRV-Tools) and reflects (SPIRV-Cross) it before any driver sees it, refuses raw
 * pointers (PhysicalStorageBufferAddresses), images and samplers with a sentence saying why, and
 * binds buffers with robust buffer access (an index past a binding reads zero and drops the write).
 * Needs a daemon on a Vulkan backend (TETHER_UNSUPPORTED otherwise). See docs/user-kernels.md. */

typedef struct tether_module tether_module;

/* What the daemon reflected. */
typedef struct tether_module_info {
    uint32_t local_size[3];         /* the module's default local size */
    uint32_t push_constant_bytes;   /* a spawn passes exactly this many bytes (0: none) */
    uint32_t binding_count;         /* read them with tether_module_binding */
    uint32_t spec_constant_count;   /* read them with tether_module_spec_constant */
    int32_t uses_num_workgroups;    /* 1: it reads gl_NumWorkGroups and runs as one slice */
    char entry_point[64];           /* NUL-terminated */
} tether_module_info;

typedef enum tether_buffer_kind {
    TETHER_BUFFER_STORAGE = 0,
    TETHER_BUFFER_UNIFORM = 1
} tether_buffer_kind;

/* One buffer the module uses: layout(set = S, binding = B). */
typedef struct tether_module_binding_info {
    uint32_t set;
    uint32_t binding;
    int32_t kind;                   /* tether_buffer_kind */
    uint32_t reserved;
    uint64_t min_bytes;             /* a bound range holds at least this much */
    char name[64];                  /* the block's name, if the module kept one */
} tether_module_binding_info;

typedef enum tether_scalar_type {
    TETHER_SCALAR_BOOL = 0, TETHER_SCALAR_INT32 = 1, TETHER_SCALAR_UINT32 = 2, TETHER_SCALAR_FLOAT32 = 3,
    TETHER_SCALAR_INT64 = 4, TETHER_SCALAR_UINT64 = 5, TETHER_SCALAR_FLOAT64 = 6
} tether_scalar_type;

/* One specialization constant: layout(constant_id = N) const T name = default. */
typedef struct tether_module_spec_info {
    uint32_t constant_id;
    int32_t type;                   /* tether_scalar_type */
    uint64_t default_bits;          /* the default's bit pattern (low 32 bits for 32-bit types) */
    char name[64];
} tether_module_spec_info;

/* A binding of a spawn: `bytes` bytes at `offset` into `memory` back layout(set, binding).
 * Offsets must be multiples of the device's minimum buffer offset alignment (16 on lavapipe, at
 * most 256 anywhere). */
typedef struct tether_binding {
    uint32_t set;
    uint32_t binding;
    tether_memory *memory;
    size_t offset;
    size_t bytes;
} tether_binding;

/* A specialization constant's value: its bit pattern (a float's bits in the low 32 bits; a bool
 * is 0 or 1). */
typedef struct tether_specialization {
    uint32_t constant_id;
    uint32_t reserved;
    uint64_t bits;
} tether_specialization;

/* Loads `word_count` SPIR-V words. `entry_point` NULL or "": the module's one compute entry point.
 * TETHER_INVALID_ARGUMENT carries the validator's or the reflection's sentence. */
tether_status tether_module_load(tether_device *device, const uint32_t *words, size_t word_count,
                                 const char *entry_point, tether_module **module);
/* Frees the daemon's copy (threads running it finish first); the handle becomes invalid. */
tether_status tether_module_unload(tether_module *module);
tether_status tether_module_get_info(tether_module *module, tether_module_info *info);
tether_status tether_module_binding(tether_module *module, size_t index, tether_module_binding_info *info);
tether_status tether_module_spec_constant(tether_module *module, size_t index, tether_module_spec_info *info);

/* Starts a device thread running `module` over a grid[0] x grid[1] x grid[2] grid of workgroups.
 * Every binding of the module must be bound once; `push_bytes` must equal the module's
 * push-constant size. `bindings`, `push_constants` and `specialization` may be NULL when their
 * counts are 0. */
tether_status tether_spawn_module(tether_device *device, tether_module *module, const tether_binding *bindings,
                                  size_t binding_count, const void *push_constants, size_t push_bytes,
                                  const tether_specialization *specialization, size_t specialization_count,
                                  const uint32_t grid[3], tether_priority priority, tether_thread *thread);

/* tether_spawn_module and tether_join in one round trip; `timeout_seconds` < 0 waits for ever. */
tether_status tether_run_module(tether_device *device, tether_module *module, const tether_binding *bindings,
                                size_t binding_count, const void *push_constants, size_t push_bytes,
                                const tether_specialization *specialization, size_t specialization_count,
                                const uint32_t grid[3], double timeout_seconds, tether_thread_report *report);

#ifdef __cplusplus
}
#endif

#endif /* TETHER_H */
