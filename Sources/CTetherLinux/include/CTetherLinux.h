#ifndef CTETHER_LINUX_H
#define CTETHER_LINUX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

// Constants glibc hides behind _GNU_SOURCE, which a Swift module map does not define.
static const unsigned int TETHER_MFD_CLOEXEC = 0x0001U;
static const unsigned int TETHER_MFD_ALLOW_SEALING = 0x0002U;
static const int TETHER_F_ADD_SEALS = 1033;
static const int TETHER_F_GET_SEALS = 1034;
static const int TETHER_F_SEAL_SEAL = 0x0001;
static const int TETHER_F_SEAL_SHRINK = 0x0002;
static const int TETHER_F_SEAL_GROW = 0x0004;

// Swift cannot call variadic syscall(2), expand the CMSG_* macros, or see C11 atomics on memory it
// did not allocate (shared control words). Each function here exists for one of those reasons.

// --- atomics on shared memory (control words live in memfd / Vulkan host-visible pages) ---
uint32_t tether_atomic_load_u32(const uint32_t *p);
void tether_atomic_store_u32(uint32_t *p, uint32_t v);
bool tether_atomic_cas_u32(uint32_t *p, uint32_t expected, uint32_t desired);
void tether_atomic_store_u64(uint64_t *p, uint64_t v);
uint64_t tether_atomic_load_u64(const uint64_t *p);
uint32_t tether_atomic_add_u32(uint32_t *p, uint32_t v);  // returns the new value
// Sequentially consistent: the need-wakeup handshake of the rings (Dekker) needs a full fence
// between a store of one word and a load of another, which acquire/release does not give.
uint32_t tether_atomic_exchange_u32(uint32_t *p, uint32_t v);  // returns the old value
void tether_atomic_fence(void);
// A pause hint for bounded polling loops (x86 PAUSE, arm64 YIELD): lets the sibling hyperthread run.
void tether_cpu_relax(void);

// --- futex: sleep while a word holds a value; waking never blocks the waker ---
int tether_futex_wait(uint32_t *word, uint32_t expected);  // 0, or -1 with errno (EAGAIN: changed)
int tether_futex_wake_all(uint32_t *word);

// --- syscalls glibc 2.36 has no wrapper for, or only variadic ones ---
int tether_pidfd_open(pid_t pid, unsigned int flags);
int tether_pidfd_send_signal(int pidfd, int sig);
int tether_memfd_create(const char *name, unsigned int flags);

// --- mirrored memory that a forked child never gets ---
// Creates a memfd of `size` bytes (sealed against shrinking and growing), maps it shared and
// read-write, and marks the mapping MADV_DONTFORK — all while holding the fork table's lock, so
// that no fork() in another thread copies the fd or the mapping before they are protected. The
// fd is left in the fork table (closed in a forked child) until tether_close_tracked_fd.
// Returns 0, or -1 with errno (nothing is left behind).
/// fallocate(2) over [0, size): Glibc's module does not export it (it needs _GNU_SOURCE).
int tether_fallocate(int fd, long long size);

int tether_mirror_create(size_t size, int *fd_out, void **base_out);
// A non-blocking, close-on-exec eventfd put in the fork table (closed in a forked child) under
// the table's lock, so no child ever holds it: a ring's completion doorbell that only this
// process can read. Close it with tether_close_tracked_fd. Returns the fd, or -1 with errno.
int tether_private_eventfd(void);
// Untracks and closes `fd` under the fork table's lock (no fork sees it half-closed).
void tether_close_tracked_fd(int fd);

// SCHED_IDLE / SCHED_OTHER for one thread (SCHED_IDLE is hidden behind _GNU_SOURCE). Returns 0 or -1.
int tether_set_thread_idle(pid_t tid, bool idle);
// SCHED_FIFO at `priority` for one thread (needs CAP_SYS_NICE or RLIMIT_RTPRIO). Returns 0 or -1.
int tether_set_thread_fifo(pid_t tid, int priority);
// Whether the calling thread may (re)enter SCHED_FIFO at `priority` from another class: it has
// CAP_SYS_NICE, or RLIMIT_RTPRIO allows that priority (sched_setscheduler(2), "Privileges").
bool tether_may_enter_fifo(int priority);
// gettid(2): glibc 2.36 declares it only under _GNU_SOURCE.
pid_t tether_gettid(void);
// sched_getcpu(3) (vDSO, tens of ns; _GNU_SOURCE only): the CPU the caller runs on, or -1.
int tether_current_cpu(void);
// The number of CPUs the calling thread may run on (sched_getaffinity(2): a cpuset or taskset
// narrows it), or the online CPUs when that fails.
int tether_allowed_cpu_count(void);
// Moves the calling thread off the CPU it runs on, to another it may run on, then allows it every
// CPU it was allowed before (it stays where it moved to until the kernel moves it). Returns 0, or
// -1 when it may run on no other CPU or the kernel refused.
int tether_move_off_current_cpu(void);
// Pins the calling thread to the n-th CPU (mod their count) it may run on (tests put a busy thread
// beside a device thread with it). Returns 0 or -1.
int tether_pin_current_thread(int n);
// pthread_setname_np(3) for the calling thread (also _GNU_SOURCE only); at most 15 bytes are kept.
void tether_set_thread_name(const char *name);

// --- SCM_RIGHTS / SCM_CREDENTIALS over SOCK_SEQPACKET ---
// Sends one message with up to `fd_count` fds attached. Returns bytes sent or -1 (errno set).
ssize_t tether_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int fd_count);

// Receives one message. Fills up to `max_fds` received fds (closing any beyond that), and the
// sender's pid/uid from SCM_CREDENTIALS when the socket has SO_PASSCRED (else -1). `sender_pidfd`
// receives the SCM_PIDFD the kernel attached (SO_PASSPIDFD, Linux >= 6.5): a pidfd owned by the
// caller, or -1 when none came. `truncated` is set when the message or its control data did not
// fit. With `dont_wait` it never blocks (MSG_DONTWAIT: -1 with EAGAIN when nothing is there).
// Returns bytes received, 0 on EOF, -1 on error.
ssize_t tether_recv_with_fds(int sock, void *buf, size_t len, int *fds, int max_fds, int *fd_count,
                             pid_t *sender_pid, uid_t *sender_uid, int *sender_pidfd, bool *truncated, bool dont_wait);

// Enables SO_PASSCRED so every received message carries the sender's credentials.
int tether_enable_passcred(int sock);
// Enables SO_PASSPIDFD (Linux >= 6.5; glibc 2.36 has no constant for it): every received message
// also carries a pidfd of its sender, taken when it was sent. Returns 0 or -1 (ENOPROTOOPT before 6.5).
int tether_enable_passpidfd(int sock);
// SO_PEERCRED of a connected Unix socket: the uid and pid of the process that created the peer
// end (its effective uid at connect/listen time). Returns 0 or -1.
int tether_peer_credentials(int sock, uid_t *uid, pid_t *pid);
// The inode of the socket at the other end of `sock` (inode `ino`), asked of the kernel through
// NETLINK_SOCK_DIAG (unix_diag, UDIAG_SHOW_PEER) on the netlink socket `diag`. 0 once every copy of
// the peer's file is closed (the socket was released), the peer's inode while some process still
// holds it (a shutdown() is not a release). Returns -1 with errno on failure.
long long tether_unix_peer_inode(int diag, unsigned int ino);
// A NETLINK_SOCK_DIAG socket for tether_unix_peer_inode. Returns the fd or -1.
int tether_sock_diag_open(void);

// accept4 is a GNU extension the Glibc module does not export.
int tether_accept_nonblocking(int listener);

// --- fork helpers ---
// The client library's device fds. In a forked child, pthread_atfork's child handler closes those
// tracked with close_on_fork (the user-space workaround from the debate). Kept in C: the handler
// runs in the child right after fork, where only simple, lock-free-ish code is safe; the table's
// lock is taken in the prepare handler so no other thread holds it across fork.
void tether_track_device_fd(int fd, bool close_on_fork);
void tether_untrack_device_fd(int fd);
// How many tracked fds the child handler closed in this process (0 in a parent).
int tether_fds_closed_on_fork(void);

// Makes this process the reaper of orphaned descendants (PR_SET_CHILD_SUBREAPER), so a harness can
// wait for a grandchild whose parent it killed. prctl is variadic.
int tether_set_child_subreaper(void);
// In a freshly forked child: moves `fds` to 3, 4, … (updating the array) and closes every other fd
// above 2 (close_range), so the child holds no copy of its siblings' pipes or sockets.
int tether_keep_only_fds(int *fds, int count);
// clone3 with set_tid = { pid } (needs CAP_SYS_ADMIN; for tests of pid reuse): a new process
// that has exactly `pid`, which must be free. Like fork(): 0 in the child, the pid in the
// parent, -1 with errno. No atfork handlers run: call it only from a single-threaded process.
pid_t tether_fork_with_pid(pid_t pid);
// Ends a forked child without running atexit handlers (a process that loaded lavapipe hangs in exit()).
_Noreturn void tether_exit_now(int status);

#endif
