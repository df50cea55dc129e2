import CTetherLinux
import Glibc

/// An epoll instance whose registrations carry a 64-bit token instead of a bare fd, so a stale
/// event for a closed-and-reused fd number is recognisable (the caller bumps the token).
public final class Epoll: @unchecked Sendable {
    public let fd: Int32

    public init() throws(SystemError) {
        fd = try retryingInterrupts("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
    }

    deinit { close(fd) }

    public func add(_ target: Int32, token: UInt64, events: UInt32 = UInt32(EPOLLIN.rawValue)) throws(SystemError) {
        var event = epoll_event(events: events, data: epoll_data_t(u64: token))
        try retryingInterrupts("epoll_ctl(ADD)") { epoll_ctl(fd, EPOLL_CTL_ADD, target, &event) }
    }

    /// Changes what a registered fd is watched for (safe from any thread, like every `epoll_ctl`).
    /// Fails with `ENOENT` once the fd was removed.
    public func modify(_ target: Int32, token: UInt64, events: UInt32) throws(SystemError) {
        var event = epoll_event(events: events, data: epoll_data_t(u64: token))
        try retryingInterrupts("epoll_ctl(MOD)") { epoll_ctl(fd, EPOLL_CTL_MOD, target, &event) }
    }

    public func remove(_ target: Int32) {
        _ = epoll_ctl(fd, EPOLL_CTL_DEL, target, nil)
    }

    /// Waits for events; returns (token, events) pairs. An interrupted wait returns no events.
    public func wait(timeoutMillis: Int32, max: Int = 64) -> [(token: UInt64, events: UInt32)] {
        var buffer = [epoll_event](repeating: epoll_event(), count: max)
        let n = epoll_wait(fd, &buffer, Int32(max), timeoutMillis)
        guard n > 0 else { return [] }
        return buffer[0..<Int(n)].map { ($0.data.u64, $0.events) }
    }
}

/// An eventfd used to wake a thread blocked in epoll.
public final class EventFD: @unchecked Sendable {
    public let fd: Int32
    public init() throws(SystemError) {
        fd = try retryingInterrupts("eventfd") { eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK)) }
    }
    deinit { close(fd) }
    public func signal() { Eventfd.signal(fd) }
    public func drain() { Eventfd.drain(fd) }
}
