import Foundation
import Glibc
import Tether
import TetherCore
import TetherTestSupport
import Testing

/// One process, one address space, one policy: a second Device that asks for the other policy
/// is refused with a sentence, never silently given the space's.
@Suite(.serialized) struct PolicyMismatchTests {
    @Test("a second Device asking for the other policy than its process's space runs is refused; asking for none or the same joins it")
    func secondDeviceAskingAnotherPolicy() throws {
        let daemon = try TestDaemon()  // allows a per-connection policy override
        let first = try Device(daemon.options(policy: .release))
        defer { first.close() }
        #expect(first.hello.policy == .release)
        var refusal: TetherError?
        do { _ = try Device(daemon.options(policy: .exit)) } catch { refusal = error }
        #expect(refusal?.code == .invalidArgument)
        #expect(refusal?.message.contains("already runs policy release") == true)
        let same = try Device(daemon.options(policy: .release))
        #expect(same.hello.space == first.hello.space)
        same.close()
        let none = try Device(daemon.options())
        #expect(none.hello.policy == .release && none.hello.space == first.hello.space)
        none.close()
    }
}
