import CVulkan
import TetherCore

/// Device-level entry points, all from `vkGetDeviceProcAddr` (extension functions must come from
/// there, and it skips the loader's dispatch trampoline for the rest).
struct VulkanDeviceFunctions: @unchecked Sendable {
    let destroyDevice: PFN_vkDestroyDevice
    let deviceWaitIdle: PFN_vkDeviceWaitIdle
    let getDeviceQueue: PFN_vkGetDeviceQueue
    let createPipelineLayout: PFN_vkCreatePipelineLayout
    let destroyPipelineLayout: PFN_vkDestroyPipelineLayout
    let createShaderModule: PFN_vkCreateShaderModule
    let destroyShaderModule: PFN_vkDestroyShaderModule
    let createComputePipelines: PFN_vkCreateComputePipelines
    let destroyPipeline: PFN_vkDestroyPipeline
    let createBuffer: PFN_vkCreateBuffer
    let destroyBuffer: PFN_vkDestroyBuffer
    let getBufferMemoryRequirements: PFN_vkGetBufferMemoryRequirements
    let allocateMemory: PFN_vkAllocateMemory
    let freeMemory: PFN_vkFreeMemory
    let bindBufferMemory: PFN_vkBindBufferMemory
    let mapMemory: PFN_vkMapMemory
    let getBufferDeviceAddress: PFN_vkGetBufferDeviceAddress
    let getMemoryHostPointerProperties: PFN_vkGetMemoryHostPointerPropertiesEXT
    let createCommandPool: PFN_vkCreateCommandPool
    let destroyCommandPool: PFN_vkDestroyCommandPool
    let allocateCommandBuffers: PFN_vkAllocateCommandBuffers
    let resetCommandBuffer: PFN_vkResetCommandBuffer
    let beginCommandBuffer: PFN_vkBeginCommandBuffer
    let endCommandBuffer: PFN_vkEndCommandBuffer
    let cmdBindPipeline: PFN_vkCmdBindPipeline
    let cmdPushConstants: PFN_vkCmdPushConstants
    let cmdDispatch: PFN_vkCmdDispatch
    let createFence: PFN_vkCreateFence
    let destroyFence: PFN_vkDestroyFence
    let resetFences: PFN_vkResetFences
    let waitForFences: PFN_vkWaitForFences
    let queueSubmit: PFN_vkQueueSubmit
    let createDescriptorSetLayout: PFN_vkCreateDescriptorSetLayout
    let destroyDescriptorSetLayout: PFN_vkDestroyDescriptorSetLayout
    let createDescriptorPool: PFN_vkCreateDescriptorPool
    let destroyDescriptorPool: PFN_vkDestroyDescriptorPool
    let allocateDescriptorSets: PFN_vkAllocateDescriptorSets
    let updateDescriptorSets: PFN_vkUpdateDescriptorSets
    let cmdBindDescriptorSets: PFN_vkCmdBindDescriptorSets
    let cmdDispatchBase: PFN_vkCmdDispatchBase

    init(instance: VulkanInstance, device: VkDevice) throws(TetherError) {
        func p<T>(_ name: String, _: T.Type) throws(TetherError) -> T {
            guard let raw = instance.getDeviceProcAddr(device, name), let f = unsafeBitCast(raw, to: T?.self) else {
                throw TetherError(.backendUnavailable, "the Vulkan device lacks \(name)")
            }
            return f
        }
        destroyDevice = try p("vkDestroyDevice", PFN_vkDestroyDevice.self)
        deviceWaitIdle = try p("vkDeviceWaitIdle", PFN_vkDeviceWaitIdle.self)
        getDeviceQueue = try p("vkGetDeviceQueue", PFN_vkGetDeviceQueue.self)
        createPipelineLayout = try p("vkCreatePipelineLayout", PFN_vkCreatePipelineLayout.self)
        destroyPipelineLayout = try p("vkDestroyPipelineLayout", PFN_vkDestroyPipelineLayout.self)
        createShaderModule = try p("vkCreateShaderModule", PFN_vkCreateShaderModule.self)
        destroyShaderModule = try p("vkDestroyShaderModule", PFN_vkDestroyShaderModule.self)
        createComputePipelines = try p("vkCreateComputePipelines", PFN_vkCreateComputePipelines.self)
        destroyPipeline = try p("vkDestroyPipeline", PFN_vkDestroyPipeline.self)
        createBuffer = try p("vkCreateBuffer", PFN_vkCreateBuffer.self)
        destroyBuffer = try p("vkDestroyBuffer", PFN_vkDestroyBuffer.self)
        getBufferMemoryRequirements = try p("vkGetBufferMemoryRequirements", PFN_vkGetBufferMemoryRequirements.self)
        allocateMemory = try p("vkAllocateMemory", PFN_vkAllocateMemory.self)
        freeMemory = try p("vkFreeMemory", PFN_vkFreeMemory.self)
        bindBufferMemory = try p("vkBindBufferMemory", PFN_vkBindBufferMemory.self)
        mapMemory = try p("vkMapMemory", PFN_vkMapMemory.self)
        getBufferDeviceAddress = try p("vkGetBufferDeviceAddress", PFN_vkGetBufferDeviceAddress.self)
        getMemoryHostPointerProperties = try p("vkGetMemoryHostPointerPropertiesEXT", PFN_vkGetMemoryHostPointerPropertiesEXT.self)
        createCommandPool = try p("vkCreateCommandPool", PFN_vkCreateCommandPool.self)
        destroyCommandPool = try p("vkDestroyCommandPool", PFN_vkDestroyCommandPool.self)
        allocateCommandBuffers = try p("vkAllocateCommandBuffers", PFN_vkAllocateCommandBuffers.self)
        resetCommandBuffer = try p("vkResetCommandBuffer", PFN_vkResetCommandBuffer.self)
        beginCommandBuffer = try p("vkBeginCommandBuffer", PFN_vkBeginCommandBuffer.self)
        endCommandBuffer = try p("vkEndCommandBuffer", PFN_vkEndCommandBuffer.self)
        cmdBindPipeline = try p("vkCmdBindPipeline", PFN_vkCmdBindPipeline.self)
        cmdPushConstants = try p("vkCmdPushConstants", PFN_vkCmdPushConstants.self)
        cmdDispatch = try p("vkCmdDispatch", PFN_vkCmdDispatch.self)
        createFence = try p("vkCreateFence", PFN_vkCreateFence.self)
        destroyFence = try p("vkDestroyFence", PFN_vkDestroyFence.self)
        resetFences = try p("vkResetFences", PFN_vkResetFences.self)
        waitForFences = try p("vkWaitForFences", PFN_vkWaitForFences.self)
        queueSubmit = try p("vkQueueSubmit", PFN_vkQueueSubmit.self)
        createDescriptorSetLayout = try p("vkCreateDescriptorSetLayout", PFN_vkCreateDescriptorSetLayout.self)
        destroyDescriptorSetLayout = try p("vkDestroyDescriptorSetLayout", PFN_vkDestroyDescriptorSetLayout.self)
        createDescriptorPool = try p("vkCreateDescriptorPool", PFN_vkCreateDescriptorPool.self)
        destroyDescriptorPool = try p("vkDestroyDescriptorPool", PFN_vkDestroyDescriptorPool.self)
        allocateDescriptorSets = try p("vkAllocateDescriptorSets", PFN_vkAllocateDescriptorSets.self)
        updateDescriptorSets = try p("vkUpdateDescriptorSets", PFN_vkUpdateDescriptorSets.self)
        cmdBindDescriptorSets = try p("vkCmdBindDescriptorSets", PFN_vkCmdBindDescriptorSets.self)
        cmdDispatchBase = try p("vkCmdDispatchBase", PFN_vkCmdDispatchBase.self)
    }
}
