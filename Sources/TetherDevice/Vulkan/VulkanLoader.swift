import CVulkan
import Glibc
import Synchronization
import TetherCore
import TetherSys

/// libvulkan, loaded once per process at run time (never linked: the binary must start where no
/// Vulkan exists, and clients must never load it at all — see DESIGN.md on fork).
final class VulkanLibrary: Sendable {
    nonisolated(unsafe) let getInstanceProcAddr: PFN_vkGetInstanceProcAddr

    private init(_ gipa: PFN_vkGetInstanceProcAddr) { getInstanceProcAddr = gipa }

    private static let shared: Mutex<Result<VulkanLibrary, TetherError>?> = Mutex(nil)

    static func load() throws(TetherError) -> VulkanLibrary {
        let result = shared.withLock { cached -> Result<VulkanLibrary, TetherError> in
            if let cached { return cached }
            var error = [CChar](repeating: 0, count: 512)
            let loaded: Result<VulkanLibrary, TetherError>
            if let gipa = tether_vulkan_load(&error, 512) {
                loaded = .success(VulkanLibrary(gipa))
            } else {
                loaded = .failure(TetherError(.backendUnavailable,
                    "no Vulkan loader (\(String(cBuffer: error))); install libvulkan1 and a driver such as mesa-vulkan-drivers"))
            }
            cached = loaded
            return loaded
        }
        return try result.get()
    }

    func instanceProc<T>(_ instance: VkInstance?, _ name: String, as: T.Type) -> T? {
        unsafeBitCast(getInstanceProcAddr(instance, name), to: T?.self)
    }
}

/// Counts messages from the Khronos validation layer (enabled with `TETHER_VALIDATION=1`); tests
/// assert that it stays zero. Each message is also printed to stderr.
public enum VulkanValidation {
    static let messages = Atomic<Int>(0)
    public static var messageCount: Int { messages.load(ordering: .acquiring) }

    public static var requested: Bool {
        if let v = environment("TETHER_VALIDATION") { return v == "1" || v == "true" }
        return false
    }
}

func check(_ result: VkResult, _ call: String) throws(TetherError) {
    guard result == VK_SUCCESS else {
        throw TetherError(result == VK_ERROR_DEVICE_LOST ? .deviceLost : .deviceError, "\(call) failed with VkResult \(result.rawValue)")
    }
}

func versionString(_ v: UInt32) -> String { "\(v >> 22).\((v >> 12) & 0x3ff).\(v & 0xfff)" }

/// Builds NUL-terminated C string arrays that live as long as the value.
final class CStrings {
    let pointers: [UnsafePointer<CChar>?]
    private let owned: [UnsafeMutablePointer<CChar>]
    init(_ strings: [String]) {
        owned = strings.map { strdup($0)! }
        pointers = owned.map { UnsafePointer($0) }
    }
    deinit { owned.forEach { free($0) } }
}

/// Reads a fixed-size C char array (`deviceName[256]`, `extensionName[256]`).
func fixedString<T>(_ tuple: T) -> String {
    withUnsafeBytes(of: tuple) { raw in
        String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
    }
}
