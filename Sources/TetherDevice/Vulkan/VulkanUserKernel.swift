import CVulkan
import Synchronization
import TetherCore

/// A user module compiled for one Vulkan device: one descriptor set layout per set index up to the
/// highest it uses (empty ones fill the gaps), and per specialization the pipeline and its layout,
/// compiled from the specialized SPIR-V — the module that was checked is the module that runs, with
/// no `VkSpecializationInfo` left for the driver to apply (at most `UserModule.maxSpecializations`).
final class VulkanModule: @unchecked Sendable {
    struct Compiled {
        var pipeline: VkPipeline
        var layout: VkPipelineLayout
    }

    let backend: VulkanBackend
    let setLayouts: [VkDescriptorSetLayout]
    let entryPoint: String
    private let pipelines = Mutex<[[SpecValue]: Compiled]>([:])

    init(backend: VulkanBackend, module: UserModule) throws(TetherError) {
        self.backend = backend
        let description = module.description
        entryPoint = description.entryPoint
        let fn = backend.fn
        let device = backend.handle
        var layouts: [VkDescriptorSetLayout] = []
        let sets = (description.bindings.map(\.set).max()).map { Int($0) + 1 } ?? 0
        for set in 0..<sets {
            let entries = description.bindings.filter { $0.set == UInt32(set) }.map { b in
                VkDescriptorSetLayoutBinding(binding: b.binding, descriptorType: Self.descriptorType(b.kind),
                                             descriptorCount: 1, stageFlags: VK_SHADER_STAGE_COMPUTE_BIT.rawValue,
                                             pImmutableSamplers: nil)
            }
            var layout: VkDescriptorSetLayout?
            let r = entries.withUnsafeBufferPointer { e -> VkResult in
                var info = VkDescriptorSetLayoutCreateInfo()
                info.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO
                info.bindingCount = UInt32(e.count)
                info.pBindings = e.baseAddress
                return fn.createDescriptorSetLayout(device, &info, nil, &layout)
            }
            guard r == VK_SUCCESS, let layout else {
                for l in layouts { fn.destroyDescriptorSetLayout(device, l, nil) }
                throw TetherError(.resourceExhausted, "vkCreateDescriptorSetLayout failed (VkResult \(r.rawValue))")
            }
            layouts.append(layout)
        }
        self.setLayouts = layouts
    }

    deinit {
        let fn = backend.fn
        let device = backend.handle
        for c in pipelines.withLock({ Array($0.values) }) {
            fn.destroyPipeline(device, c.pipeline, nil)
            fn.destroyPipelineLayout(device, c.layout, nil)
        }
        for l in setLayouts { fn.destroyDescriptorSetLayout(device, l, nil) }
    }

    static func descriptorType(_ kind: ModuleDescription.BufferKind) -> VkDescriptorType {
        kind == .uniform ? VK_DESCRIPTOR_TYPE_UNIFORM_BUFFER : VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
    }

    /// The pipeline of a launch's specialization, compiled on first use.
    func compiled(_ launch: UserLaunch) throws(TetherError) -> Compiled {
        try pipelines.withLock { (cache) throws(TetherError) -> Compiled in
            if let c = cache[launch.specialization] { return c }
            let c = try compile(launch.specialized)
            cache[launch.specialization] = c
            return c
        }
    }

    private func compile(_ specialized: SpecializedModule) throws(TetherError) -> Compiled {
        let fn = backend.fn
        let device = backend.handle
        let push = specialized.description.pushConstantBytes
        var range = VkPushConstantRange(stageFlags: VK_SHADER_STAGE_COMPUTE_BIT.rawValue, offset: 0, size: push)
        var layout: VkPipelineLayout?
        let r = setLayouts.map { Optional($0) }.withUnsafeBufferPointer { l -> VkResult in
            withUnsafePointer(to: &range) { rp in
                var info = VkPipelineLayoutCreateInfo()
                info.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO
                info.setLayoutCount = UInt32(l.count)
                info.pSetLayouts = l.baseAddress
                info.pushConstantRangeCount = push > 0 ? 1 : 0
                info.pPushConstantRanges = push > 0 ? rp : nil
                return fn.createPipelineLayout(device, &info, nil, &layout)
            }
        }
        guard r == VK_SUCCESS, let layout else {
            throw TetherError(.resourceExhausted, "vkCreatePipelineLayout failed (VkResult \(r.rawValue))")
        }
        do {
            // Slices are vkCmdDispatchBase over a range of workgroups.
            let pipeline = try backend.makePipeline(words: specialized.words, entryPoint: entryPoint, layout: layout,
                                                    flags: VK_PIPELINE_CREATE_DISPATCH_BASE_BIT.rawValue)
            return Compiled(pipeline: pipeline, layout: layout)
        } catch {
            fn.destroyPipelineLayout(device, layout, nil)
            throw error
        }
    }
}

/// One device thread of a user module: its descriptor sets (pointing at byte ranges of the
/// owner's regions, with robust buffer access), push constants and grid. Each slice is one
/// `vkCmdDispatchBase` per box of the 3-D grid that its linear workgroup range covers.
///
/// User kernels do not poll a control word (they cannot be trusted to): a kill drops the queued
/// slices and waits for the one in flight, which the scheduler keeps within its quantum.
final class VulkanUserContext: ThreadContext, @unchecked Sendable {
    let backend: VulkanBackend
    let module: VulkanModule
    let launch: UserLaunch
    let pipeline: VkPipeline
    let layout: VkPipelineLayout
    let slots: VulkanSlots
    let pool: VkDescriptorPool
    let sets: [VkDescriptorSet]
    /// Written by the scheduler; never read by device code.
    let control = UnsafeMutablePointer<ControlBlock>.allocate(capacity: 1)

    init(backend: VulkanBackend, module: VulkanModule, launch: UserLaunch) throws(TetherError) {
        self.backend = backend
        self.module = module
        self.launch = launch
        let compiled = try module.compiled(launch)
        pipeline = compiled.pipeline
        layout = compiled.layout
        slots = try VulkanSlots(backend: backend)
        let fn = backend.fn
        let device = backend.handle
        let storage = launch.bindings.filter { $0.binding.kind == .storage }.count
        let sizes = [
            VkDescriptorPoolSize(type: VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount: UInt32(max(storage, 1))),
            VkDescriptorPoolSize(type: VK_DESCRIPTOR_TYPE_UNIFORM_BUFFER, descriptorCount: UInt32(max(launch.bindings.count - storage, 1))),
        ]
        var pool: VkDescriptorPool?
        let created = sizes.withUnsafeBufferPointer { s -> VkResult in
            var info = VkDescriptorPoolCreateInfo()
            info.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO
            info.maxSets = UInt32(max(module.setLayouts.count, 1))
            info.poolSizeCount = UInt32(s.count)
            info.pPoolSizes = s.baseAddress
            return fn.createDescriptorPool(device, &info, nil, &pool)
        }
        guard created == VK_SUCCESS, let pool else {
            throw TetherError(.resourceExhausted, "vkCreateDescriptorPool failed (VkResult \(created.rawValue))")
        }
        self.pool = pool
        var sets = [VkDescriptorSet?](repeating: nil, count: module.setLayouts.count)
        if !sets.isEmpty {
            let r = module.setLayouts.map { Optional($0) }.withUnsafeBufferPointer { l -> VkResult in
                var info = VkDescriptorSetAllocateInfo()
                info.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO
                info.descriptorPool = pool
                info.descriptorSetCount = UInt32(l.count)
                info.pSetLayouts = l.baseAddress
                return fn.allocateDescriptorSets(device, &info, &sets)
            }
            guard r == VK_SUCCESS else {
                fn.destroyDescriptorPool(device, pool, nil)
                throw TetherError(.resourceExhausted, "vkAllocateDescriptorSets failed (VkResult \(r.rawValue))")
            }
        }
        self.sets = sets.map { $0! }
        var infos = launch.bindings.map { b in
            VkDescriptorBufferInfo(buffer: (b.memory as! VulkanBuffer).buffer, offset: b.offset, range: b.bytes)
        }
        infos.withUnsafeMutableBufferPointer { info in
            var writes: [VkWriteDescriptorSet] = []
            for (i, b) in launch.bindings.enumerated() {
                var w = VkWriteDescriptorSet()
                w.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET
                w.dstSet = self.sets[Int(b.binding.set)]
                w.dstBinding = b.binding.binding
                w.descriptorCount = 1
                w.descriptorType = VulkanModule.descriptorType(b.binding.kind)
                w.pBufferInfo = UnsafePointer(info.baseAddress! + i)
                writes.append(w)
            }
            fn.updateDescriptorSets(device, UInt32(writes.count), writes, 0, nil)
        }
        control.initialize(to: ControlBlock())
    }

    deinit {
        try? slots.waitForPending()
        backend.fn.destroyDescriptorPool(backend.handle, pool, nil)
        control.deallocate()
    }

    func startSlice(_ slice: SliceLaunch) throws(TetherError) {
        let fn = backend.fn
        let boxes = launch.grid.boxes(first: UInt64(slice.groupBase), count: UInt64(slice.groupCount))
        try slots.submit { commandBuffer in
            fn.cmdBindPipeline(commandBuffer, VK_PIPELINE_BIND_POINT_COMPUTE, pipeline)
            if !sets.isEmpty {
                sets.map { Optional($0) }.withUnsafeBufferPointer { s in
                    fn.cmdBindDescriptorSets(commandBuffer, VK_PIPELINE_BIND_POINT_COMPUTE, layout, 0,
                                             UInt32(s.count), s.baseAddress, 0, nil)
                }
            }
            if !launch.pushConstants.isEmpty {
                launch.pushConstants.withUnsafeBytes { p in
                    fn.cmdPushConstants(commandBuffer, layout, VK_SHADER_STAGE_COMPUTE_BIT.rawValue, 0,
                                        UInt32(p.count), p.baseAddress)
                }
            }
            for box in boxes {
                fn.cmdDispatchBase(commandBuffer, box.base[0], box.base[1], box.base[2],
                                   box.count[0], box.count[1], box.count[2])
            }
        }
    }

    func finishSlice() throws(TetherError) -> UInt64? {
        try slots.finishOldest()
        return nil
    }

    func waitForOldestSlice(nanos: UInt64) -> Bool { slots.waitForOldest(nanos: nanos) }
}
