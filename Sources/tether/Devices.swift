import ArgumentParser
import Foundation
import TetherDaemon
import TetherDevice

struct Devices: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List DRM render nodes, Vulkan devices with the features Tether needs, and the software device.")

    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let inventory = DeviceInventory.scan()
        let notifier = ExitNotifierChoice.probe()
        if json {
            // The inventory's own fields, plus the exit notifier a daemon started here would use.
            var object = try JSONSerialization.jsonObject(with: jsonData(inventory)) as? [String: Any] ?? [:]
            object["exitNotifier"] = notifier
            let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
            return print(String(decoding: data, as: UTF8.self))
        }
        print("DRM render nodes:")
        if inventory.drmNodes.isEmpty { print("  none — \(inventory.drmNote ?? "")") }
        for n in inventory.drmNodes {
            print("  \(n.renderNode)  \(n.bus) \(hex(n.vendorID)):\(hex(n.deviceID))\(n.primaryNode.map { "  (\($0))" } ?? "")")
        }
        print("\nVulkan devices:")
        if inventory.vulkanDevices.isEmpty { print("  none — \(inventory.vulkanNote ?? "")") }
        let yes = { (b: Bool) in b ? "yes" : "no" }
        var rows: [[String]] = []
        for d in inventory.vulkanDevices {
            rows.append([d == inventory.autoPick ? "*" : " ", d.name, d.type, d.apiVersion, yes(d.externalMemoryHost),
                         yes(d.bufferDeviceAddress), yes(d.timelineSemaphore), d.renderNode ?? "-",
                         d.usable ? "usable" : "missing \(d.missing.joined(separator: ", "))"])
        }
        if !rows.isEmpty {
            print(table([" ", "NAME", "TYPE", "API", "EXT_MEM_HOST", "BDA", "TIMELINE", "RENDER", "STATUS"], rows)
                .split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
        }
        print("\nSoftware device:")
        print("  \(inventory.software == inventory.autoPick ? "*" : " ") \(inventory.software.name)")
        print("\n* = what --backend auto opens: \(inventory.autoPick.name) (\(inventory.autoPick.backend.rawValue))")
        print("\nExit notifier (tether daemon --notifier auto): \(notifier)")
    }
}
