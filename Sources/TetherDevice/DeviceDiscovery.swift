import CVulkan
import Glibc
import TetherCore
import TetherSys

/// A DRM device with a render node, as libdrm describes it.
public struct DRMNode: Sendable, Codable, Equatable {
    public var renderNode: String
    public var primaryNode: String?
    public var bus: String
    public var vendorID: UInt32
    public var deviceID: UInt32
}

/// What the machine offers: DRM render nodes, Vulkan devices, and the software device, with the
/// one `auto` picks.
public struct DeviceInventory: Sendable, Codable {
    public var drmNodes: [DRMNode]
    /// Why no DRM nodes were listed (libdrm missing), or nil.
    public var drmNote: String?
    public var vulkanDevices: [DeviceDescription]
    /// Why no Vulkan devices were listed (no loader, no driver), or nil.
    public var vulkanNote: String?
    public var software: DeviceDescription
    /// The device `auto` would open: GPU > CPU Vulkan > software.
    public var autoPick: DeviceDescription

    public static func scan() -> DeviceInventory {
        let (nodes, drmNote) = enumerateDRM()
        var vulkan: [DeviceDescription] = []
        var vulkanNote: String?
        do {
            let instance = try VulkanInstance()
            vulkan = instance.physicalDevices.map { physical in
                var d = instance.describe(physical).0
                d.renderNode = nodes.first { $0.vendorID == d.vendorID && $0.deviceID == d.deviceID }?.renderNode
                return d
            }
            if vulkan.isEmpty { vulkanNote = "the Vulkan loader found no devices" }
        } catch {
            vulkanNote = error.message
        }
        let software = SoftwareBackend.description()
        return DeviceInventory(drmNodes: nodes, drmNote: drmNote, vulkanDevices: vulkan, vulkanNote: vulkanNote,
                               software: software, autoPick: pick(vulkan) ?? software)
    }

    static func pick(_ devices: [DeviceDescription]) -> DeviceDescription? {
        let usable = devices.filter(\.usable)
        return usable.first(where: \.isGPU) ?? usable.first
    }

    static func enumerateDRM() -> ([DRMNode], String?) {
        var raw = [tether_drm_device](repeating: tether_drm_device(), count: 16)
        var error = [CChar](repeating: 0, count: 256)
        let n = tether_drm_enumerate(&raw, 16, &error, 256)
        if n < 0 { return ([], "libdrm is not available (\(String(cBuffer: error)))") }
        let nodes = raw.prefix(Int(n)).map { d in
            DRMNode(renderNode: fixedString(d.render_node),
                    primaryNode: fixedString(d.primary_node).isEmpty ? nil : fixedString(d.primary_node),
                    bus: d.bus_type == 0 ? "pci" : d.bus_type == 1 ? "usb" : d.bus_type == 2 ? "platform" : "other",
                    vendorID: d.vendor_id, deviceID: d.device_id)
        }
        return (nodes, nodes.isEmpty ? "no DRM render nodes (/dev/dri/renderD*) on this machine" : nil)
    }
}

/// Opens a backend as `--backend` / `TETHER_BACKEND` ask.
public enum BackendFactory {
    /// The choice from the command line, else `TETHER_BACKEND`, else `auto`.
    public static func resolve(_ explicit: BackendChoice?) throws(TetherError) -> BackendChoice {
        if let explicit { return explicit }
        if let env = environment("TETHER_BACKEND"), !env.isEmpty {
            guard let choice = BackendChoice(rawValue: env) else {
                throw TetherError(.invalidArgument, "TETHER_BACKEND=\(env) is not one of auto, vulkan, software")
            }
            return choice
        }
        return .auto
    }

    /// Opens the device for `choice`. `auto` falls back to software when no usable Vulkan device
    /// exists, and says so in one line through `note`.
    ///
    /// The device is opened on a thread with the device-work nice value, so the driver threads it
    /// creates (lavapipe's) run below the control plane; see `deviceWorkNice`.
    public static func open(_ choice: BackendChoice, note: (String) -> Void = { printError("tether: \($0)") }) throws(TetherError) -> any ComputeBackend {
        let (result, fallbackNote) = withDeviceWorkPriority { () -> (Result<any ComputeBackend, TetherError>, String?) in
            switch choice {
            case .software:
                return (.success(SoftwareBackend()), nil)
            case .vulkan:
                return (vulkanResult(), nil)
            case .auto:
                switch vulkanResult() {
                case .success(let b): return (.success(b), nil)
                case .failure(let error):
                    return (.success(SoftwareBackend()), "no usable Vulkan device (\(error.message)); using the software backend")
                }
            }
        }
        if let fallbackNote { note(fallbackNote) }
        return try result.get()
    }

    static func vulkanResult() -> Result<any ComputeBackend, TetherError> {
        do { return .success(try openVulkan()) } catch { return .failure(error) }
    }

    static func openVulkan() throws(TetherError) -> VulkanBackend {
        let instance = try VulkanInstance()
        let described = instance.physicalDevices.map { ($0, instance.describe($0)) }
        guard !described.isEmpty else {
            throw TetherError(.backendUnavailable, "the Vulkan loader found no devices (install mesa-vulkan-drivers for lavapipe)")
        }
        guard let chosen = DeviceInventory.pick(described.map(\.1.0)),
              let entry = described.first(where: { $0.1.0 == chosen }) else {
            let reasons = described.map { "\($0.1.0.name) lacks \($0.1.0.missing.joined(separator: ", "))" }
            throw TetherError(.backendUnavailable, "no Vulkan device has what Tether needs: \(reasons.joined(separator: "; "))")
        }
        return try VulkanBackend(instance: instance, physical: entry.0, description: chosen,
                                 minImportAlignment: entry.1.minImportAlignment)
    }
}
