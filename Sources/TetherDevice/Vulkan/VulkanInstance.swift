import CVulkan
import Glibc
import TetherCore
import TetherSys

private let debugCallback: PFN_vkDebugUtilsMessengerCallbackEXT = { severity, _, data, _ in
    // Info and verbose messages are chatter (loader notes); warnings and errors are findings.
    if severity.rawValue >= VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT.rawValue {
        VulkanValidation.messages.add(1, ordering: .relaxed)
        let text = data.map { String(cString: $0.pointee.pMessage) } ?? "?"
        printError("tether: Vulkan validation: \(text)")
    }
    return VkBool32(VK_FALSE)
}

/// A Vulkan instance (with the validation layer when asked for) and its physical devices.
/// VK_MAKE_API_VERSION(0, 1, 2, 0): what Tether asks of the instance and needs of a device
/// (buffer device address and timeline semaphores are core there).
let vulkan12: UInt32 = (1 << 22) | (2 << 12)

final class VulkanInstance: @unchecked Sendable {
    let library: VulkanLibrary
    let handle: VkInstance
    private var messenger: VkDebugUtilsMessengerEXT?
    let destroyInstance: PFN_vkDestroyInstance
    let enumeratePhysicalDevices: PFN_vkEnumeratePhysicalDevices
    let getProperties2: PFN_vkGetPhysicalDeviceProperties2
    let getFeatures2: PFN_vkGetPhysicalDeviceFeatures2
    let enumerateDeviceExtensions: PFN_vkEnumerateDeviceExtensionProperties
    let getQueueFamilies: PFN_vkGetPhysicalDeviceQueueFamilyProperties
    let getMemoryProperties: PFN_vkGetPhysicalDeviceMemoryProperties
    let createDevice: PFN_vkCreateDevice
    let getDeviceProcAddr: PFN_vkGetDeviceProcAddr

    init() throws(TetherError) {
        let library = try VulkanLibrary.load()
        self.library = library
        guard let create = library.instanceProc(nil, "vkCreateInstance", as: PFN_vkCreateInstance.self),
              let enumerateLayers = library.instanceProc(nil, "vkEnumerateInstanceLayerProperties",
                                                         as: PFN_vkEnumerateInstanceLayerProperties.self) else {
            throw TetherError(.backendUnavailable, "the Vulkan loader lacks vkCreateInstance")
        }
        var layers: [String] = []
        var extensions: [String] = []
        if VulkanValidation.requested {
            var count: UInt32 = 0
            _ = enumerateLayers(&count, nil)
            var props = [VkLayerProperties](repeating: VkLayerProperties(), count: Int(count))
            _ = enumerateLayers(&count, &props)
            if props.contains(where: { fixedString($0.layerName) == "VK_LAYER_KHRONOS_validation" }) {
                layers.append("VK_LAYER_KHRONOS_validation")
                extensions.append("VK_EXT_debug_utils")
            } else {
                printError("tether: TETHER_VALIDATION is set but VK_LAYER_KHRONOS_validation is not installed (apt-get install vulkan-validationlayers)")
            }
        }
        let layerNames = CStrings(layers)
        let extensionNames = CStrings(extensions)
        let appName = CStrings(["tether"])
        var app = VkApplicationInfo()
        app.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO
        app.apiVersion = vulkan12
        var instance: VkInstance?
        let result = appName.pointers.withUnsafeBufferPointer { namePtr -> VkResult in
            app.pApplicationName = namePtr[0]
            app.pEngineName = namePtr[0]
            return withUnsafePointer(to: &app) { appPtr in
                layerNames.pointers.withUnsafeBufferPointer { l in
                    extensionNames.pointers.withUnsafeBufferPointer { e in
                        var info = VkInstanceCreateInfo()
                        info.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO
                        info.pApplicationInfo = appPtr
                        info.enabledLayerCount = UInt32(l.count)
                        info.ppEnabledLayerNames = l.baseAddress
                        info.enabledExtensionCount = UInt32(e.count)
                        info.ppEnabledExtensionNames = e.baseAddress
                        return create(&info, nil, &instance)
                    }
                }
            }
        }
        guard result == VK_SUCCESS, let instance else {
            throw TetherError(.backendUnavailable, "vkCreateInstance failed (VkResult \(result.rawValue)): no usable Vulkan driver")
        }
        handle = instance
        func proc<T>(_ name: String, _ t: T.Type) throws(TetherError) -> T {
            guard let p = library.instanceProc(instance, name, as: t) else {
                throw TetherError(.backendUnavailable, "Vulkan instance lacks \(name)")
            }
            return p
        }
        destroyInstance = try proc("vkDestroyInstance", PFN_vkDestroyInstance.self)
        enumeratePhysicalDevices = try proc("vkEnumeratePhysicalDevices", PFN_vkEnumeratePhysicalDevices.self)
        getProperties2 = try proc("vkGetPhysicalDeviceProperties2", PFN_vkGetPhysicalDeviceProperties2.self)
        getFeatures2 = try proc("vkGetPhysicalDeviceFeatures2", PFN_vkGetPhysicalDeviceFeatures2.self)
        enumerateDeviceExtensions = try proc("vkEnumerateDeviceExtensionProperties", PFN_vkEnumerateDeviceExtensionProperties.self)
        getQueueFamilies = try proc("vkGetPhysicalDeviceQueueFamilyProperties", PFN_vkGetPhysicalDeviceQueueFamilyProperties.self)
        getMemoryProperties = try proc("vkGetPhysicalDeviceMemoryProperties", PFN_vkGetPhysicalDeviceMemoryProperties.self)
        createDevice = try proc("vkCreateDevice", PFN_vkCreateDevice.self)
        getDeviceProcAddr = try proc("vkGetDeviceProcAddr", PFN_vkGetDeviceProcAddr.self)

        if !layers.isEmpty, let createMessenger = library.instanceProc(instance, "vkCreateDebugUtilsMessengerEXT",
                                                                      as: PFN_vkCreateDebugUtilsMessengerEXT.self) {
            var info = VkDebugUtilsMessengerCreateInfoEXT()
            info.sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT
            info.messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT.rawValue | VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT.rawValue
            info.messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT.rawValue | VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT.rawValue | VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT.rawValue
            info.pfnUserCallback = debugCallback
            var m: VkDebugUtilsMessengerEXT?
            if createMessenger(instance, &info, nil, &m) == VK_SUCCESS { messenger = m }
        }
    }

    deinit {
        if let messenger, let destroy = library.instanceProc(handle, "vkDestroyDebugUtilsMessengerEXT",
                                                             as: PFN_vkDestroyDebugUtilsMessengerEXT.self) {
            destroy(handle, messenger, nil)
        }
        destroyInstance(handle, nil)
    }

    var physicalDevices: [VkPhysicalDevice] {
        var count: UInt32 = 0
        _ = enumeratePhysicalDevices(handle, &count, nil)
        var devices = [VkPhysicalDevice?](repeating: nil, count: Int(count))
        _ = enumeratePhysicalDevices(handle, &count, &devices)
        return devices.prefix(Int(count)).compactMap { $0 }
    }

    func extensions(of device: VkPhysicalDevice) -> Set<String> {
        var count: UInt32 = 0
        _ = enumerateDeviceExtensions(device, nil, &count, nil)
        var props = [VkExtensionProperties](repeating: VkExtensionProperties(), count: Int(count))
        _ = enumerateDeviceExtensions(device, nil, &count, &props)
        return Set(props.prefix(Int(count)).map { fixedString($0.extensionName) })
    }

    /// Properties and the features Tether needs, in the form `tether devices` prints.
    func describe(_ device: VkPhysicalDevice) -> (DeviceDescription, VkPhysicalDeviceProperties, minImportAlignment: UInt64) {
        var hostProps = VkPhysicalDeviceExternalMemoryHostPropertiesEXT()
        hostProps.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_EXTERNAL_MEMORY_HOST_PROPERTIES_EXT
        var driverProps = VkPhysicalDeviceDriverProperties()
        driverProps.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES
        var props2 = VkPhysicalDeviceProperties2()
        props2.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2
        let exts = extensions(of: device)
        let hasHost = exts.contains("VK_EXT_external_memory_host")
        withUnsafeMutablePointer(to: &hostProps) { host in
            withUnsafeMutablePointer(to: &driverProps) { driver in
                driver.pointee.pNext = hasHost ? UnsafeMutableRawPointer(host) : nil
                props2.pNext = UnsafeMutableRawPointer(driver)
                getProperties2(device, &props2)
                props2.pNext = nil
                driver.pointee.pNext = nil
            }
        }
        var v12 = VkPhysicalDeviceVulkan12Features()
        v12.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES
        var features2 = VkPhysicalDeviceFeatures2()
        features2.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2
        let apiOK = props2.properties.apiVersion >= vulkan12
        if apiOK {
            withUnsafeMutablePointer(to: &v12) { p in
                features2.pNext = UnsafeMutableRawPointer(p)
                getFeatures2(device, &features2)
                features2.pNext = nil
            }
        }
        let p = props2.properties
        let type: String
        switch p.deviceType {
        case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: type = "discrete-gpu"
        case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: type = "integrated-gpu"
        case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: type = "virtual-gpu"
        case VK_PHYSICAL_DEVICE_TYPE_CPU: type = "cpu"
        default: type = "other"
        }
        let description = DeviceDescription(
            name: fixedString(p.deviceName), backend: .vulkan, type: type,
            driver: "\(fixedString(driverProps.driverName)) \(fixedString(driverProps.driverInfo))".trimmingSpaces,
            apiVersion: versionString(p.apiVersion), vendorID: p.vendorID, deviceID: p.deviceID,
            externalMemoryHost: hasHost,
            bufferDeviceAddress: apiOK && v12.bufferDeviceAddress != 0 && p.limits.maxPushConstantsSize >= 128 && features2.features.shaderInt64 != 0,
            timelineSemaphore: apiOK && v12.timelineSemaphore != 0, renderNode: nil)
        return (description, p, hostProps.minImportedHostPointerAlignment)
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
