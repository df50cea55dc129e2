// The exit notifier's kernel half: tells the Tether daemon, through a ring buffer, when a process
// whose address space it serves is about to lose that address space. Built by tools/build-bpf with
// clang's BPF target into Sources/CTetherBPF/exit_notifier_object.c; loaded at run time with
// libbpf (CO-RE: the struct layouts below are relocated against the running kernel's BTF).
//
// Three hooks, each the earliest point the kernel exposes for its kind of death:
//   tp_btf/signal_generate      a SIGKILL queued for an owner (the process cannot survive it);
//   tp_btf/sched_process_exit   the owner's last thread in do_exit (group_dead); on Linux >= 6.16
//                               this fires before exit_mm, i.e. before its memory is torn down;
//   tp_btf/sched_process_exec   an owner replaced its image (lifetime rule 4).
//
// Only thread groups the daemon registered in `owners` are reported. Each entry carries the
// owner's start time (clock ticks since boot, /proc/PID/stat field 22) and the daemon's cookie for
// the address space: an event is sent only when the dying process's start time matches (a process
// that reuses a dead owner's pid never matches), and it names the cookie, never just a pid. The
// first event for an entry removes it, so each registration is reported at most once.

typedef unsigned char __u8;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef int pid_t;
typedef _Bool bool;

#define SEC(name) __attribute__((section(name), used))
#define __always_inline inline __attribute__((always_inline))

// Map definitions in the BTF form libbpf reads: each field's type encodes one property.
#define MAP_FIELD(name, value) int (*name)[value]

enum { MAP_TYPE_HASH = 1, MAP_TYPE_RINGBUF = 27 };
enum { SIGKILL = 9 };
// kernel/signal.c: enum trace_signal_result.
enum { SIGNAL_DELIVERED = 0, SIGNAL_IGNORED = 1, SIGNAL_ALREADY_PENDING = 2, SIGNAL_OVERFLOW_FAIL = 3, SIGNAL_LOSE_INFO = 4 };
// USER_HZ: /proc reports start times in 1/100 s.
#define NANOS_PER_TICK 10000000ULL

// The few task_struct fields used, by name: libbpf finds their offsets in the kernel's BTF.
struct task_struct {
    pid_t tgid;
    struct task_struct *group_leader;
    __u64 start_boottime;
} __attribute__((preserve_access_index));

// Helper ids from the kernel's uapi/linux/bpf.h (stable ABI).
static void *(*map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*map_delete_elem)(void *map, const void *key) = (void *)3;
static __u64 (*ktime_get_ns)(void) = (void *)5;
static __u64 (*get_current_pid_tgid)(void) = (void *)14;
static void *(*ringbuf_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)131;
static void (*ringbuf_submit)(void *data, __u64 flags) = (void *)132;
static struct task_struct *(*get_current_task_btf)(void) = (void *)158;

/// The daemon's registration of one owner (keyed by its thread-group id).
struct owner {
    __u64 start_ticks;
    __u64 cookie;
};

/// One notice; layout shared with Sources/CTetherBPF/include/CTetherBPF.h (tether_bpf_event).
struct event {
    __u64 cookie;
    __u64 ktime_ns;  // bpf_ktime_get_ns: CLOCK_MONOTONIC
    __u32 tgid;
    __u32 kind;      // 1 exit, 2 sigkill, 3 exec
};

struct {
    MAP_FIELD(type, MAP_TYPE_HASH);
    MAP_FIELD(max_entries, 65536);
    __u32 *key;
    struct owner *value;
} owners SEC(".maps");

struct {
    MAP_FIELD(type, MAP_TYPE_RINGBUF);
    MAP_FIELD(max_entries, 256 * 1024);
} events SEC(".maps");

static __always_inline void notify(struct task_struct *task, __u32 kind) {
    __u32 tgid = task->tgid;
    struct owner *o = map_lookup_elem(&owners, &tgid);
    if (!o) return;
    // de_thread copies the leader's start time to a thread that execs, so this is the thread
    // group's start time whichever thread is asked.
    if (task->group_leader->start_boottime / NANOS_PER_TICK != o->start_ticks) return;
    struct event *e = ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e) return;  // ring full: the entry stays, a later hook or the pidfd reports the death
    e->cookie = o->cookie;
    e->ktime_ns = ktime_get_ns();
    e->tgid = tgid;
    e->kind = kind;
    ringbuf_submit(e, 0);
    map_delete_elem(&owners, &tgid);
}

SEC("tp_btf/sched_process_exit")
int on_exit(__u64 *ctx) {
    // TP_PROTO(struct task_struct *p, bool group_dead): only the thread group's last thread.
    if (!(bool)ctx[1]) return 0;
    notify((struct task_struct *)ctx[0], 1);
    return 0;
}

SEC("tp_btf/signal_generate")
int on_signal(__u64 *ctx) {
    // TP_PROTO(int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result)
    if ((int)ctx[0] != SIGKILL) return 0;
    int result = (int)ctx[4];
    if (result == SIGNAL_IGNORED || result == SIGNAL_OVERFLOW_FAIL) return 0;
    // A SIGKILL to any thread kills the whole thread group.
    notify((struct task_struct *)ctx[2], 2);
    return 0;
}

SEC("tp_btf/sched_process_exec")
int on_exec(__u64 *ctx) {
    notify(get_current_task_btf(), 3);
    return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
