#define _GNU_SOURCE
#include "CTetherBPF.h"

#include <dlfcn.h>
#include <errno.h>
#include <linux/btf.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The libbpf 1.x entry points used, declared here with opaque types: libbpf-dev need not be
// installed to build Tether, and libbpf1 need not be installed to run it.
struct bpf_object;
struct bpf_program;
struct bpf_link;
struct ring_buffer;
struct btf;
typedef int (*sample_fn)(void *ctx, void *data, size_t size);
typedef int (*print_fn)(int level, const char *format, va_list args);

static struct {
    struct bpf_object *(*open_mem)(const void *, size_t, const void *);
    int (*load)(struct bpf_object *);
    void (*close)(struct bpf_object *);
    struct bpf_program *(*next_program)(const struct bpf_object *, struct bpf_program *);
    const char *(*program_name)(const struct bpf_program *);
    struct bpf_link *(*attach)(const struct bpf_program *);
    int (*link_destroy)(struct bpf_link *);
    int (*find_map_fd)(const struct bpf_object *, const char *);
    struct ring_buffer *(*ring_new)(int, sample_fn, void *, const void *);
    int (*ring_consume)(struct ring_buffer *);
    void (*ring_free)(struct ring_buffer *);
    int (*map_update)(int, const void *, const void *, uint64_t);
    int (*map_lookup)(int, const void *, void *);
    int (*map_delete)(int, const void *);
    print_fn (*set_print)(print_fn);
    struct btf *(*load_vmlinux_btf)(void);
    int32_t (*find_by_name_kind)(const struct btf *, const char *, uint32_t);
    const struct btf_type *(*type_by_id)(const struct btf *, uint32_t);
    void (*btf_free)(struct btf *);
} lib;

static const char *lib_error;

static void resolve(void) {
    void *h = dlopen("libbpf.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        lib_error = "libbpf.so.1 is not installed (apt-get install libbpf1)";
        return;
    }
#define SYM(field, name) if (!(*(void **)&lib.field = dlsym(h, name))) { lib_error = "libbpf.so.1 lacks " name " (libbpf 1.0 or newer is needed)"; return; }
    SYM(open_mem, "bpf_object__open_mem") SYM(load, "bpf_object__load") SYM(close, "bpf_object__close")
    SYM(next_program, "bpf_object__next_program") SYM(program_name, "bpf_program__name")
    SYM(attach, "bpf_program__attach") SYM(link_destroy, "bpf_link__destroy")
    SYM(find_map_fd, "bpf_object__find_map_fd_by_name") SYM(ring_new, "ring_buffer__new")
    SYM(ring_consume, "ring_buffer__consume") SYM(ring_free, "ring_buffer__free")
    SYM(map_update, "bpf_map_update_elem") SYM(map_lookup, "bpf_map_lookup_elem")
    SYM(map_delete, "bpf_map_delete_elem") SYM(set_print, "libbpf_set_print")
    SYM(load_vmlinux_btf, "btf__load_vmlinux_btf") SYM(find_by_name_kind, "btf__find_by_name_kind")
    SYM(type_by_id, "btf__type_by_id") SYM(btf_free, "btf__free")
#undef SYM
    // The library stays loaded for the life of the process, like libvulkan.
}

// libbpf's warnings (the verifier's reason, a missing BTF) are kept for the error sentence instead
// of going to stderr. Only tether_bpf_open prints through it, under `open_lock`.
static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static char last_warning[256];

static int keep_warning(int level, const char *format, va_list args) {
    if (level > 0) return 0;  // LIBBPF_WARN = 0; info and debug are noise here
    char line[256];
    vsnprintf(line, sizeof line, format, args);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == ' ')) line[--n] = 0;
    if (n > 0) snprintf(last_warning, sizeof last_warning, "%s", line);
    return 0;
}

enum { RING_BATCH = 256 };

struct tether_bpf_notifier {
    struct bpf_object *object;
    struct bpf_link *links[3];
    int link_count;
    int owners_fd;
    int events_fd;
    struct ring_buffer *ring;
    // Filled by on_sample during one tether_bpf_consume call (the caller's thread only).
    tether_bpf_event *out;
    int max;
    int count;
};

struct owner_entry {
    uint64_t start_ticks;
    uint64_t cookie;
};

static int on_sample(void *ctx, void *data, size_t size) {
    struct tether_bpf_notifier *n = ctx;
    if (size < sizeof(tether_bpf_event)) return 0;
    memcpy(&n->out[n->count++], data, sizeof(tether_bpf_event));
    // A negative return stops libbpf after this record (it is consumed): the caller asks again.
    return n->count == n->max ? -1 : 0;
}

// sched_process_exit gained `group_dead` in Linux 6.16, when it moved before exit_mm; earlier, it
// fires after the memory is gone and would be no earlier than the pidfd. 1: new, 0: old, -1: unknown.
static int exit_tracepoint_precedes_exit_mm(void) {
    struct btf *btf = lib.load_vmlinux_btf();
    if (!btf) return -1;
    int result = -1;
    int32_t id = lib.find_by_name_kind(btf, "btf_trace_sched_process_exit", BTF_KIND_TYPEDEF);
    const struct btf_type *t = id > 0 ? lib.type_by_id(btf, (uint32_t)id) : NULL;
    if (t) t = lib.type_by_id(btf, t->type);                                                // pointer
    if (t && BTF_INFO_KIND(t->info) == BTF_KIND_PTR) t = lib.type_by_id(btf, t->type);      // prototype
    if (t && BTF_INFO_KIND(t->info) == BTF_KIND_FUNC_PROTO) result = BTF_INFO_VLEN(t->info) >= 3;  // ctx, p, group_dead
    lib.btf_free(btf);
    return result;
}

tether_bpf_notifier *tether_bpf_open(char *error, int error_len) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, resolve);
    if (lib_error) {
        snprintf(error, error_len, "%s", lib_error);
        return NULL;
    }
    pthread_mutex_lock(&open_lock);
    last_warning[0] = 0;
    print_fn previous = lib.set_print(keep_warning);
    struct tether_bpf_notifier *n = calloc(1, sizeof *n);
    int precedes = exit_tracepoint_precedes_exit_mm();
    if (precedes <= 0) {
        snprintf(error, error_len, precedes == 0
                 ? "this kernel's sched_process_exit tracepoint has no group_dead argument (Linux < 6.16): it fires after exit_mm, no earlier than the pidfd"
                 : "the kernel has no BTF (/sys/kernel/btf/vmlinux), which the BPF program needs");
        goto fail;
    }
    n->object = lib.open_mem(tether_exit_notifier_object, tether_exit_notifier_object_size, NULL);
    if (!n->object) {
        snprintf(error, error_len, "libbpf cannot open the BPF object: %s", last_warning[0] ? last_warning : strerror(errno));
        goto fail;
    }
    if (lib.load(n->object) != 0) {
        int e = errno;
        if (e == EPERM || e == EACCES)
            snprintf(error, error_len, "loading BPF needs CAP_BPF and CAP_PERFMON (or root): %s", strerror(e));
        else
            snprintf(error, error_len, "the kernel refused the BPF program: %s", last_warning[0] ? last_warning : strerror(e));
        goto fail;
    }
    for (struct bpf_program *p = lib.next_program(n->object, NULL); p; p = lib.next_program(n->object, p)) {
        struct bpf_link *link = n->link_count < 3 ? lib.attach(p) : NULL;
        if (!link) {
            snprintf(error, error_len, "cannot attach %s: %s", lib.program_name(p), strerror(errno));
            goto fail;
        }
        n->links[n->link_count++] = link;
    }
    n->owners_fd = lib.find_map_fd(n->object, "owners");
    n->events_fd = lib.find_map_fd(n->object, "events");
    if (n->owners_fd < 0 || n->events_fd < 0) {
        snprintf(error, error_len, "the BPF object lacks its maps");
        goto fail;
    }
    n->ring = lib.ring_new(n->events_fd, on_sample, n, NULL);
    if (!n->ring) {
        snprintf(error, error_len, "cannot map the BPF ring buffer: %s", strerror(errno));
        goto fail;
    }
    lib.set_print(previous);
    pthread_mutex_unlock(&open_lock);
    return n;
fail:
    lib.set_print(previous);
    pthread_mutex_unlock(&open_lock);
    tether_bpf_close(n);
    return NULL;
}

const unsigned char *tether_exit_notifier_object_pointer(void) { return tether_exit_notifier_object; }
const char *tether_exit_notifier_source_digest_pointer(void) { return tether_exit_notifier_source_digest; }

int tether_bpf_ring_fd(tether_bpf_notifier *n) { return n->events_fd; }

int tether_bpf_watch(tether_bpf_notifier *n, uint32_t tgid, uint64_t start_ticks, uint64_t cookie) {
    struct owner_entry entry = {start_ticks, cookie};
    return lib.map_update(n->owners_fd, &tgid, &entry, 0) == 0 ? 0 : -errno;
}

int tether_bpf_forget(tether_bpf_notifier *n, uint32_t tgid, uint64_t cookie) {
    // Only the daemon adds entries and it serialises watch/forget, so an entry read here can only
    // vanish (the program removes what it reported), never be replaced, before the delete.
    struct owner_entry entry;
    if (lib.map_lookup(n->owners_fd, &tgid, &entry) != 0) return -ENOENT;
    if (entry.cookie != cookie) return -ENOENT;
    return lib.map_delete(n->owners_fd, &tgid) == 0 ? 0 : -errno;
}

int tether_bpf_consume(tether_bpf_notifier *n, tether_bpf_event *out, int max) {
    if (max <= 0) return 0;
    n->out = out;
    n->max = max;
    n->count = 0;
    int r = lib.ring_consume(n->ring);
    n->out = NULL;
    if (r < 0 && n->count == 0) return r;
    return n->count;
}

void tether_bpf_close(tether_bpf_notifier *n) {
    if (!n) return;
    if (n->ring) lib.ring_free(n->ring);
    for (int i = 0; i < n->link_count; i++) lib.link_destroy(n->links[i]);
    if (n->object) lib.close(n->object);
    free(n);
}
