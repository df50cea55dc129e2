import CVulkan
import TetherCore

/// A device thread's submission slots: one command buffer and fence each, used in turn, so the
/// scheduler records and submits the next slice while the previous one runs. Used by one thread
/// at a time (the scheduler's worker).
final class VulkanSlots: @unchecked Sendable {
    let backend: VulkanBackend
    let pool: VkCommandPool
    let commandBuffers: [VkCommandBuffer]
    let fences: [VkFence]
    /// Slots with a submitted, unfinished slice, oldest first.
    private var pending: [Int] = []
    private var nextSlot = 0

    init(backend: VulkanBackend) throws(TetherError) {
        let count = backend.sliceDepth
        self.backend = backend
        let fn = backend.fn
        let device = backend.handle
        var poolInfo = VkCommandPoolCreateInfo()
        poolInfo.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO
        poolInfo.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT.rawValue
        poolInfo.queueFamilyIndex = backend.queueFamily
        var pool: VkCommandPool?
        try check(fn.createCommandPool(device, &poolInfo, nil, &pool), "vkCreateCommandPool")
        var allocInfo = VkCommandBufferAllocateInfo()
        allocInfo.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO
        allocInfo.commandPool = pool
        allocInfo.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY
        allocInfo.commandBufferCount = UInt32(count)
        var buffers = [VkCommandBuffer?](repeating: nil, count: count)
        var result = fn.allocateCommandBuffers(device, &allocInfo, &buffers)
        var fences: [VkFence] = []
        var fenceInfo = VkFenceCreateInfo()
        fenceInfo.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO
        while result == VK_SUCCESS && fences.count < count {
            var fence: VkFence?
            result = fn.createFence(device, &fenceInfo, nil, &fence)
            if let fence { fences.append(fence) }
        }
        guard result == VK_SUCCESS else {
            for f in fences { fn.destroyFence(device, f, nil) }
            fn.destroyCommandPool(device, pool, nil)
            throw TetherError(.resourceExhausted, "could not allocate command buffers (VkResult \(result.rawValue))")
        }
        self.pool = pool!
        self.commandBuffers = buffers.map { $0! }
        self.fences = fences
    }

    deinit {
        let fn = backend.fn
        for slot in pending { _ = wait(slot) }
        for f in fences { fn.destroyFence(backend.handle, f, nil) }
        fn.destroyCommandPool(backend.handle, pool, nil)
    }

    /// Waits for a slot's fence. A slice is bounded by the scheduler's quantum; a minute means
    /// the device is hung.
    private func wait(_ slot: Int, nanos: UInt64 = 60_000_000_000) -> VkResult {
        var f: VkFence? = fences[slot]
        return backend.fn.waitForFences(backend.handle, 1, &f, VkBool32(VK_TRUE), nanos)
    }

    /// Waits at most `nanos` for the oldest submitted slice; true once it is done (or failed:
    /// `finishOldest` then reports it), false while it runs.
    func waitForOldest(nanos: UInt64) -> Bool {
        guard let slot = pending.first else { return true }
        return wait(slot, nanos: nanos) != VK_TIMEOUT
    }

    /// Waits until no slice started here runs (without handing them back).
    func waitForPending() throws(TetherError) {
        for slot in pending { try check(wait(slot), "vkWaitForFences") }
    }

    /// Records the next slot's command buffer with `record` and submits it.
    func submit(_ record: (VkCommandBuffer) -> Void) throws(TetherError) {
        precondition(pending.count < fences.count, "more slices started than the context has slots")
        let fn = backend.fn
        let slot = nextSlot
        let commandBuffer = commandBuffers[slot]
        var begin = VkCommandBufferBeginInfo()
        begin.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO
        begin.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT.rawValue
        try check(fn.resetCommandBuffer(commandBuffer, 0), "vkResetCommandBuffer")
        try check(fn.beginCommandBuffer(commandBuffer, &begin), "vkBeginCommandBuffer")
        record(commandBuffer)
        try check(fn.endCommandBuffer(commandBuffer), "vkEndCommandBuffer")
        var cb: VkCommandBuffer? = commandBuffer
        let submitted = withUnsafePointer(to: &cb) { cbp -> VkResult in
            var submit = VkSubmitInfo()
            submit.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO
            submit.commandBufferCount = 1
            submit.pCommandBuffers = cbp
            return backend.queueLock.withLock { _ in fn.queueSubmit(backend.queue, 1, &submit, fences[slot]) }
        }
        try check(submitted, "vkQueueSubmit")
        pending.append(slot)
        nextSlot = (slot + 1) % fences.count
    }

    /// Waits for the oldest submitted slice and frees its slot.
    func finishOldest() throws(TetherError) {
        guard !pending.isEmpty else { return }
        let slot = pending.removeFirst()
        try check(wait(slot), "vkWaitForFences")
        var f: VkFence? = fences[slot]
        try check(backend.fn.resetFences(backend.handle, 1, &f), "vkResetFences")
    }
}
