/// The two requesters (address spaces; a connection without one, such as a tool's, is its own)
/// whose requests the event loop read last, and when: enough to answer, for a request of any
/// requester, when another one last asked for something (the most recent requester other than any
/// given one is always one of the two). O(1) per request.
///
/// Event loop only.
struct RecentRequesters {
    private var a: (requester: UInt64, at: UInt64)?
    private var b: (requester: UInt64, at: UInt64)?

    /// Notes a request of `requester` at `now`; returns when a different one last made one (nil:
    /// none yet).
    mutating func note(_ requester: UInt64, at now: UInt64) -> UInt64? {
        if a?.requester == requester {
            a!.at = now
            return b?.at
        }
        if b?.requester == requester {
            b!.at = now
            return a?.at
        }
        // A third requester replaces the one that asked longer ago; the other is then the latest.
        if a == nil || (b != nil && a!.at <= b!.at) {
            a = (requester, now)
            return b?.at
        }
        b = (requester, now)
        return a?.at
    }
}
