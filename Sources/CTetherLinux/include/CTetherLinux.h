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

// --- futex: sleep while a word holds a value; waking never blocks the waker ---
int tether_futex_wait(uint32_t *word, uint32_t expected);  // 0, or -1 with errno (EAGAIN: changed)
int tether_futex_wake_all(uint32_t *word);

// --- syscalls glibc 2.36 has no wrapper for, or only variadic ones ---
int tether_pidfd_open(pid_t pid, unsigned int flags);
int tether_pidfd_send_signal(int pidfd, int sig);
int tether_memfd_create(const char *name, unsigned int flags);

// SCHED_IDLE / SCHED_OTHER for one thread (SCHED_IDLE is hidden behind _GNU_SOURCE). Returns 0 or -1.
int tether_set_thread_idle(pid_t tid, bool idle);
// SCHED_FIFO at `priority` for one thread (needs CAP_SYS_NICE or RLIMIT_RTPRIO). Returns 0 or -1.
int tether_set_thread_fifo(pid_t tid, int priority);
// gettid(2): glibc 2.36 declares it only under _GNU_SOURCE.
pid_t tether_gettid(void);
// pthread_setname_np(3) for the calling thread (also _GNU_SOURCE only); at most 15 bytes are kept.
void tether_set_thread_name(const char *name);

// --- SCM_RIGHTS / SCM_CREDENTIALS over SOCK_SEQPACKET ---
// Sends one message with up to `fd_count` fds attached. Returns bytes sent or -1 (errno set).
ssize_t tether_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int fd_count);

// Receives one message. Fills up to `max_fds` received fds (closing any beyond that), and the
// sender's pid/uid from SCM_CREDENTIALS when the socket has SO_PASSCRED (else -1). `truncated` is
// set when the message or its control data did not fit. Returns bytes received, 0 on EOF, -1 on error.
ssize_t tether_recv_with_fds(int sock, void *buf, size_t len, int *fds, int max_fds, int *fd_count,
                             pid_t *sender_pid, uid_t *sender_uid, bool *truncated);

// Enables SO_PASSCRED so every received message carries the sender's credentials.
int tether_enable_passcred(int sock);

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
// Ends a forked child without running atexit handlers (a process that loaded lavapipe hangs in exit()).
_Noreturn void tether_exit_now(int status);

#endif
