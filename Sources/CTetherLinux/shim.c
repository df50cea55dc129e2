#define _GNU_SOURCE
#include "CTetherLinux.h"

#include <sys/eventfd.h>
#include <errno.h>
#include <linux/futex.h>
#include <stdint.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <linux/capability.h>
#include <unistd.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

uint32_t tether_atomic_load_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
void tether_atomic_store_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
bool tether_atomic_cas_u32(uint32_t *p, uint32_t expected, uint32_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
void tether_atomic_store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
uint64_t tether_atomic_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
uint32_t tether_atomic_add_u32(uint32_t *p, uint32_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }

uint32_t tether_atomic_exchange_u32(uint32_t *p, uint32_t v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
void tether_atomic_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void tether_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

int tether_futex_wait(uint32_t *word, uint32_t expected) {
    return (int)syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}
int tether_futex_wake_all(uint32_t *word) {
    return (int)syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

int tether_pidfd_open(pid_t pid, unsigned int flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }
int tether_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}
int tether_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }

int tether_set_thread_idle(pid_t tid, bool idle) {
    struct sched_param param = {.sched_priority = 0};
    return sched_setscheduler(tid, idle ? SCHED_IDLE : SCHED_OTHER, &param);
}

int tether_set_thread_fifo(pid_t tid, int priority) {
    struct sched_param param = {.sched_priority = priority};
    return sched_setscheduler(tid, SCHED_FIFO, &param);
}

bool tether_may_enter_fifo(int priority) {
    struct rlimit limit;
    if (getrlimit(RLIMIT_RTPRIO, &limit) == 0 && limit.rlim_cur >= (rlim_t)priority) return true;
    // capget(2) directly: libcap is not a dependency. Version 3 takes two data words; CAP_SYS_NICE
    // (23) is in the first.
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &header, data) != 0) return false;
    return (data[0].effective & (1u << CAP_SYS_NICE)) != 0;
}

pid_t tether_gettid(void) { return (pid_t)syscall(SYS_gettid); }
int tether_current_cpu(void) { return sched_getcpu(); }
int tether_allowed_cpu_count(void) {
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) == 0 && CPU_COUNT(&allowed) > 0) return CPU_COUNT(&allowed);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (int)online : 1;
}
int tether_move_off_current_cpu(void) {
    cpu_set_t allowed, others;
    int cpu = sched_getcpu();
    if (cpu < 0 || sched_getaffinity(0, sizeof allowed, &allowed) != 0) return -1;
    others = allowed;
    CPU_CLR(cpu, &others);
    if (CPU_COUNT(&others) == 0 || sched_setaffinity(0, sizeof others, &others) != 0) return -1;
    return sched_setaffinity(0, sizeof allowed, &allowed);
}

int tether_pin_current_thread(int n) {
    cpu_set_t allowed, one;
    if (n < 0 || sched_getaffinity(0, sizeof allowed, &allowed) != 0) return -1;
    int count = CPU_COUNT(&allowed), seen = 0;
    if (count == 0) return -1;
    n %= count;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &allowed)) continue;
        if (seen++ == n) {
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            return sched_setaffinity(0, sizeof one, &one);
        }
    }
    return -1;
}

void tether_set_thread_name(const char *name) {
    char short_name[16];
    strncpy(short_name, name, sizeof short_name - 1);
    short_name[sizeof short_name - 1] = 0;
    pthread_setname_np(pthread_self(), short_name);
}

#define TETHER_MAX_FDS 8
// Linux 6.5 (include/uapi/asm-generic/socket.h); glibc 2.36 predates them.
#ifndef SO_PASSPIDFD
#define SO_PASSPIDFD 76
#endif
#ifndef SCM_PIDFD
#define SCM_PIDFD 0x04
#endif

ssize_t tether_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int fd_count) {
    if (fd_count < 0 || fd_count > TETHER_MAX_FDS) { errno = EINVAL; return -1; }
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    union { char buf[CMSG_SPACE(sizeof(int) * TETHER_MAX_FDS)]; struct cmsghdr align; } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd_count > 0) {
        memset(&control, 0, sizeof(control));
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * fd_count);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fd_count);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * fd_count);
    }
    ssize_t n;
    do { n = sendmsg(sock, &msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    return n;
}

ssize_t tether_recv_with_fds(int sock, void *buf, size_t len, int *fds, int max_fds, int *fd_count,
                             pid_t *sender_pid, uid_t *sender_uid, int *sender_pidfd, bool *truncated, bool dont_wait) {
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * TETHER_MAX_FDS) + CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof(control.buf)};
    *fd_count = 0;
    *sender_pid = -1;
    *sender_uid = (uid_t)-1;
    *sender_pidfd = -1;
    *truncated = false;
    ssize_t n;
    do { n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | (dont_wait ? MSG_DONTWAIT : 0)); } while (n < 0 && errno == EINTR);
    if (n < 0) return n;
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) *truncated = true;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET) continue;
        if (c->cmsg_type == SCM_RIGHTS) {
            int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int received[TETHER_MAX_FDS * 2];
            if (count > TETHER_MAX_FDS * 2) count = TETHER_MAX_FDS * 2;
            memcpy(received, CMSG_DATA(c), sizeof(int) * count);
            for (int i = 0; i < count; i++) {
                if (*fd_count < max_fds) fds[(*fd_count)++] = received[i];
                else close(received[i]);  // never leak an fd a client forced on us
            }
        } else if (c->cmsg_type == SCM_CREDENTIALS) {
            struct ucred cred;
            memcpy(&cred, CMSG_DATA(c), sizeof(cred));
            *sender_pid = cred.pid;
            *sender_uid = cred.uid;
        } else if (c->cmsg_type == SCM_PIDFD) {
            int pidfd;
            memcpy(&pidfd, CMSG_DATA(c), sizeof(pidfd));
            // Negative: the kernel could not make one (the sender is gone): reported as none.
            if (*sender_pidfd >= 0) close(*sender_pidfd);
            *sender_pidfd = pidfd >= 0 ? pidfd : -1;
        }
    }
    return n;
}

int tether_enable_passcred(int sock) {
    int one = 1;
    return setsockopt(sock, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one));
}

int tether_enable_passpidfd(int sock) {
    int one = 1;
    return setsockopt(sock, SOL_SOCKET, SO_PASSPIDFD, &one, sizeof(one));
}

int tether_peer_credentials(int sock, uid_t *uid, pid_t *pid) {
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    *uid = cred.uid;
    *pid = cred.pid;
    return 0;
}

int tether_sock_diag_open(void) {
    return socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
}

long long tether_unix_peer_inode(int diag, unsigned int ino) {
    struct { struct nlmsghdr nlh; struct unix_diag_req req; } request;
    memset(&request, 0, sizeof(request));
    request.nlh.nlmsg_len = sizeof(request);
    request.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    request.nlh.nlmsg_flags = NLM_F_REQUEST;
    request.req.sdiag_family = AF_UNIX;
    request.req.udiag_states = ~0U;
    request.req.udiag_ino = ino;
    request.req.udiag_show = UDIAG_SHOW_PEER;
    request.req.udiag_cookie[0] = ~0U;  // INET_DIAG_NOCOOKIE: find by inode alone
    request.req.udiag_cookie[1] = ~0U;
    ssize_t n;
    do { n = send(diag, &request, sizeof(request), 0); } while (n < 0 && errno == EINTR);
    if (n < 0) return -1;
    union { char bytes[4096]; struct nlmsghdr align; } reply;
    do { n = recv(diag, reply.bytes, sizeof(reply.bytes), 0); } while (n < 0 && errno == EINTR);
    if (n < 0) return -1;
    struct nlmsghdr *h = &reply.align;
    if (!NLMSG_OK(h, (unsigned int)n)) { errno = EPROTO; return -1; }
    if (h->nlmsg_type == NLMSG_ERROR) {
        struct nlmsgerr *e = NLMSG_DATA(h);
        errno = e->error < 0 ? -e->error : EPROTO;
        return -1;
    }
    if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct unix_diag_msg))) {
        errno = EPROTO;
        return -1;
    }
    struct unix_diag_msg *msg = NLMSG_DATA(h);
    struct rtattr *a = (struct rtattr *)(msg + 1);
    int left = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof(*msg)));
    for (; RTA_OK(a, left); a = RTA_NEXT(a, left)) {
        if (a->rta_type == UNIX_DIAG_PEER && RTA_PAYLOAD(a) >= sizeof(uint32_t)) {
            uint32_t peer;
            memcpy(&peer, RTA_DATA(a), sizeof(peer));
            return peer;
        }
    }
    return 0;  // no peer attribute: not connected any more
}

int tether_accept_nonblocking(int listener) {
    return accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
}

#define TETHER_MAX_TRACKED 4096
static pthread_mutex_t tracked_lock = PTHREAD_MUTEX_INITIALIZER;
static int tracked_fds[TETHER_MAX_TRACKED];
static bool tracked_close[TETHER_MAX_TRACKED];
static int tracked_count = 0;
static int closed_on_fork = 0;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void tracked_prepare(void) { pthread_mutex_lock(&tracked_lock); }
static void tracked_parent(void) { pthread_mutex_unlock(&tracked_lock); }
static void tracked_child(void) {
    int kept = 0;
    for (int i = 0; i < tracked_count; i++) {
        if (tracked_close[i]) {
            close(tracked_fds[i]);
            closed_on_fork++;
        } else {
            tracked_fds[kept] = tracked_fds[i];
            tracked_close[kept] = false;
            kept++;
        }
    }
    tracked_count = kept;
    pthread_mutex_unlock(&tracked_lock);
}
static void register_atfork(void) { pthread_atfork(tracked_prepare, tracked_parent, tracked_child); }

void tether_track_device_fd(int fd, bool close_on_fork) {
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&tracked_lock);
    if (tracked_count < TETHER_MAX_TRACKED) {
        tracked_fds[tracked_count] = fd;
        tracked_close[tracked_count] = close_on_fork;
        tracked_count++;
    }
    pthread_mutex_unlock(&tracked_lock);
}

void tether_untrack_device_fd(int fd) {
    pthread_mutex_lock(&tracked_lock);
    for (int i = 0; i < tracked_count; i++) {
        if (tracked_fds[i] == fd) {
            tracked_fds[i] = tracked_fds[tracked_count - 1];
            tracked_close[i] = tracked_close[tracked_count - 1];
            tracked_count--;
            break;
        }
    }
    pthread_mutex_unlock(&tracked_lock);
}

int tether_fds_closed_on_fork(void) { return closed_on_fork; }

int tether_fallocate(int fd, long long size) {
    return fallocate(fd, 0, 0, (off_t)size);
}

int tether_mirror_create(size_t size, int *fd_out, void **base_out) {
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&tracked_lock);
    int saved = 0;
    void *p = MAP_FAILED;
    int fd = memfd_create("tether-mirror", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) goto fail;
    if (tracked_count >= TETHER_MAX_TRACKED) { errno = EMFILE; goto fail; }
    if (ftruncate(fd, (off_t)size) != 0) goto fail;
    // Allocate every page now, in this process: they are charged to it (its memory cgroup, and
    // with MAP_POPULATE its RSS, which the OOM killer reads), never first faulted in by the
    // daemon; the daemon refuses a memfd with holes (docs/lifetime.md, memory accounting).
    // fallocate fails with ENOSPC/ENOMEM at once instead of a SIGBUS on first touch.
    if (fallocate(fd, 0, 0, (off_t)size) != 0) goto fail;
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) goto fail;
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) goto fail;
    if (madvise(p, size, MADV_DONTFORK) != 0) goto fail;
    tracked_fds[tracked_count] = fd;
    tracked_close[tracked_count] = true;
    tracked_count++;
    pthread_mutex_unlock(&tracked_lock);
    *fd_out = fd;
    *base_out = p;
    return 0;
fail:
    saved = errno;
    if (p != MAP_FAILED) munmap(p, size);
    if (fd >= 0) close(fd);
    pthread_mutex_unlock(&tracked_lock);
    errno = saved;
    return -1;
}

int tether_private_eventfd(void) {
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&tracked_lock);
    int fd = -1;
    if (tracked_count >= TETHER_MAX_TRACKED) {
        errno = EMFILE;
    } else {
        fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fd >= 0) {
            tracked_fds[tracked_count] = fd;
            tracked_close[tracked_count] = true;
            tracked_count++;
        }
    }
    int saved = errno;
    pthread_mutex_unlock(&tracked_lock);
    errno = saved;
    return fd;
}

void tether_close_tracked_fd(int fd) {
    pthread_mutex_lock(&tracked_lock);
    for (int i = 0; i < tracked_count; i++) {
        if (tracked_fds[i] == fd) {
            tracked_fds[i] = tracked_fds[tracked_count - 1];
            tracked_close[i] = tracked_close[tracked_count - 1];
            tracked_count--;
            break;
        }
    }
    close(fd);
    pthread_mutex_unlock(&tracked_lock);
}

#ifndef SYS_clone3
#define SYS_clone3 435
#endif

// struct clone_args of include/uapi/linux/sched.h (CLONE_ARGS_SIZE_VER1 = 80 bytes, Linux 5.5), kept
// here because that header redefines glibc's CLONE_* macros.
struct tether_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size;
};

pid_t tether_fork_with_pid(pid_t pid) {
    struct tether_clone_args args;
    memset(&args, 0, sizeof(args));
    args.exit_signal = SIGCHLD;
    args.set_tid = (uint64_t)(uintptr_t)&pid;
    args.set_tid_size = 1;
    return (pid_t)syscall(SYS_clone3, &args, sizeof(args));
}

int tether_set_child_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); }

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

int tether_keep_only_fds(int *fds, int count) {
    if (count < 0 || count > 16) { errno = EINVAL; return -1; }
    int moved[16];
    for (int i = 0; i < count; i++) {
        moved[i] = fcntl(fds[i], F_DUPFD, 1024);
        if (moved[i] < 0) return -1;
    }
    for (int i = 0; i < count; i++) {
        if (dup2(moved[i], 3 + i) < 0) return -1;
        close(moved[i]);
        fds[i] = 3 + i;
    }
    return (int)syscall(SYS_close_range, 3 + count, ~0U, 0);
}

_Noreturn void tether_exit_now(int status) { _exit(status); }
