import Glibc

/// A value behind a pthread mutex. `package`: the C interface (`TetherC`) keeps its handle table
/// behind one too, for the same reason.
///
/// Why not `Synchronization.Mutex`: on Linux it is a priority-inheritance futex holding the
/// owner's thread id, which the standard library caches in a thread-local that fork does not
/// reset. In a forked child the thread that called `fork` therefore locks with its parent's tid,
/// and the first contended lock (our reader thread against the caller) makes the kernel answer
/// ESRCH and the runtime trap ("Unknown error occurred while attempting to acquire a Mutex").
/// glibc's mutex keeps no such cache, and this library's whole point is to keep working in
/// forked children.
package final class Locked<Value: ~Copyable>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    /// Only under `mutex`.
    private var value: Value

    package init(_ value: consuming Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the value, holding the lock. Keep `body` short and free of blocking I/O
    /// unless the lock exists to serialise that I/O.
    package func withLock<T: ~Copyable, E: Error>(_ body: (inout Value) throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
