import CVulkan
import TetherCore

/// The device features Tether enables, and what they let user kernels use.
///
/// The built-ins need buffer device addresses, timeline semaphores and 64-bit integers. Beyond
/// those, every optional shader feature the device has is enabled so that user modules may
/// declare the matching SPIR-V capability — and no capability whose feature is off is accepted
/// (a driver handed a module that uses a disabled feature may misbehave). Robust buffer access
/// (and `robustBufferAccess2` where `VK_EXT_robustness2` offers it) bounds every descriptor access
/// to its bound range: an index past it reads zero and drops the write.
struct VulkanFeatures {
    var core = VkPhysicalDeviceFeatures()
    var v11 = VkPhysicalDeviceVulkan11Features()
    var v12 = VkPhysicalDeviceVulkan12Features()
    var robustness2 = VkPhysicalDeviceRobustness2FeaturesEXT()
    var hasRobustness2 = false
    var subgroupOperations: UInt32 = 0
    var limits = VkPhysicalDeviceLimits()
    var apiVersion: UInt32 = 0

    init(instance: VulkanInstance, physical: VkPhysicalDevice) {
        let extensions = instance.extensions(of: physical)
        hasRobustness2 = extensions.contains("VK_EXT_robustness2")
        var available = VkPhysicalDeviceFeatures2()
        available.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2
        var a11 = VkPhysicalDeviceVulkan11Features()
        a11.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES
        var a12 = VkPhysicalDeviceVulkan12Features()
        a12.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES
        var aRobust = VkPhysicalDeviceRobustness2FeaturesEXT()
        aRobust.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ROBUSTNESS_2_FEATURES_EXT
        withUnsafeMutablePointer(to: &a11) { p11 in
            withUnsafeMutablePointer(to: &a12) { p12 in
                withUnsafeMutablePointer(to: &aRobust) { pr in
                    p11.pointee.pNext = UnsafeMutableRawPointer(p12)
                    p12.pointee.pNext = hasRobustness2 ? UnsafeMutableRawPointer(pr) : nil
                    available.pNext = UnsafeMutableRawPointer(p11)
                    instance.getFeatures2(physical, &available)
                    available.pNext = nil
                    p11.pointee.pNext = nil
                    p12.pointee.pNext = nil
                }
            }
        }
        var props = VkPhysicalDeviceProperties2()
        props.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2
        var subgroup = VkPhysicalDeviceSubgroupProperties()
        subgroup.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES
        withUnsafeMutablePointer(to: &subgroup) { s in
            props.pNext = UnsafeMutableRawPointer(s)
            instance.getProperties2(physical, &props)
            props.pNext = nil
        }
        limits = props.properties.limits
        apiVersion = props.properties.apiVersion
        if subgroup.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT.rawValue != 0 {
            subgroupOperations = subgroup.supportedOperations
        }

        let f = available.features
        core.shaderInt64 = VkBool32(VK_TRUE)
        core.robustBufferAccess = f.robustBufferAccess
        core.shaderFloat64 = f.shaderFloat64
        core.shaderInt16 = f.shaderInt16
        v11.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES
        v11.storageBuffer16BitAccess = a11.storageBuffer16BitAccess
        v11.uniformAndStorageBuffer16BitAccess = a11.uniformAndStorageBuffer16BitAccess
        v11.storagePushConstant16 = a11.storagePushConstant16
        v11.variablePointersStorageBuffer = a11.variablePointersStorageBuffer
        v11.variablePointers = a11.variablePointers
        v12.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES
        v12.bufferDeviceAddress = VkBool32(VK_TRUE)
        v12.timelineSemaphore = VkBool32(VK_TRUE)
        v12.shaderInt8 = a12.shaderInt8
        v12.shaderFloat16 = a12.shaderFloat16
        v12.storageBuffer8BitAccess = a12.storageBuffer8BitAccess
        v12.uniformAndStorageBuffer8BitAccess = a12.uniformAndStorageBuffer8BitAccess
        v12.storagePushConstant8 = a12.storagePushConstant8
        v12.shaderBufferInt64Atomics = a12.shaderBufferInt64Atomics
        v12.vulkanMemoryModel = a12.vulkanMemoryModel
        v12.vulkanMemoryModelDeviceScope = a12.vulkanMemoryModelDeviceScope
        robustness2.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ROBUSTNESS_2_FEATURES_EXT
        hasRobustness2 = hasRobustness2 && aRobust.robustBufferAccess2 != 0 && f.robustBufferAccess != 0
        robustness2.robustBufferAccess2 = VkBool32(hasRobustness2 ? VK_TRUE : VK_FALSE)
    }

    /// Extensions to enable beside `VK_EXT_external_memory_host`.
    var extensions: [String] { hasRobustness2 ? ["VK_EXT_robustness2"] : [] }

    /// The SPIR-V capabilities the enabled features allow.
    var capabilities: Set<UInt32> {
        var c: Set<UInt32> = [0, 1, 11]  // Matrix, Shader, Int64
        func add(_ cap: UInt32, _ on: VkBool32) { if on != 0 { c.insert(cap) } }
        add(10, core.shaderFloat64)
        add(22, core.shaderInt16)
        add(12, v12.shaderBufferInt64Atomics)
        add(39, v12.shaderInt8)
        add(9, v12.shaderFloat16)
        add(4433, v11.storageBuffer16BitAccess)
        add(4434, v11.uniformAndStorageBuffer16BitAccess)
        add(4435, v11.storagePushConstant16)
        add(4441, v11.variablePointersStorageBuffer)
        add(4442, v11.variablePointers)
        add(4448, v12.storageBuffer8BitAccess)
        add(4449, v12.uniformAndStorageBuffer8BitAccess)
        add(4450, v12.storagePushConstant8)
        add(5345, v12.vulkanMemoryModel)
        add(5346, v12.vulkanMemoryModelDeviceScope)
        // GroupNonUniform (61) … GroupNonUniformQuad (68) follow VK_SUBGROUP_FEATURE_* bits 0…7.
        for bit in 0..<8 where subgroupOperations & (1 << bit) != 0 { c.insert(61 + UInt32(bit)) }
        return c
    }

    var userKernelLimits: UserKernelLimits {
        let l = limits
        let minor = Int((apiVersion >> 12) & 0x3FF)
        return UserKernelLimits(
            vulkanMinor: min(max(minor, 2), 3), capabilities: capabilities,
            maxPushConstantsBytes: l.maxPushConstantsSize, maxBoundDescriptorSets: l.maxBoundDescriptorSets,
            maxStorageBuffers: l.maxPerStageDescriptorStorageBuffers, maxUniformBuffers: l.maxPerStageDescriptorUniformBuffers,
            maxStorageBufferRange: UInt64(l.maxStorageBufferRange), maxUniformBufferRange: UInt64(l.maxUniformBufferRange),
            minStorageBufferOffsetAlignment: l.minStorageBufferOffsetAlignment,
            minUniformBufferOffsetAlignment: l.minUniformBufferOffsetAlignment,
            maxWorkGroupInvocations: l.maxComputeWorkGroupInvocations,
            maxWorkGroupSize: [l.maxComputeWorkGroupSize.0, l.maxComputeWorkGroupSize.1, l.maxComputeWorkGroupSize.2],
            maxWorkGroupCount: [l.maxComputeWorkGroupCount.0, l.maxComputeWorkGroupCount.1, l.maxComputeWorkGroupCount.2],
            maxSharedMemoryBytes: UInt64(l.maxComputeSharedMemorySize))
    }
}
