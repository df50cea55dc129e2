import CVulkan
import Glibc
import Synchronization
import TetherCore
import TetherSys

/// Runs device threads on one Vulkan physical device (a GPU, or lavapipe on the CPU).
///
/// Mirrored pages are imported with `VK_EXT_external_memory_host`. Built-in kernels address them
/// through buffer device addresses, taking every pointer from push constants (`KernelABI`) and
/// translating owner addresses through the region table. User kernels never see an address: they
/// get descriptor sets over byte ranges of the owner's imports, with robust buffer access
/// (`VulkanUserContext`). One compute queue is shared by all device threads under `queueLock`.
public final class VulkanBackend: ComputeBackend, @unchecked Sendable {
    public let device: DeviceDescription
    let instance: VulkanInstance
    let physical: VkPhysicalDevice
    let handle: VkDevice
    let queue: VkQueue
    let queueFamily: UInt32
    let queueLock = Mutex(())
    let minImportAlignment: UInt64
    let memoryProperties: VkPhysicalDeviceMemoryProperties
    let fn: VulkanDeviceFunctions
    let pipelineLayout: VkPipelineLayout
    /// What user kernels may use here (the features enabled at device creation and the limits).
    public let userKernelLimits: UserKernelLimits?
    /// Built-in pipelines, created on first use (creating all six costs ~100 ms on lavapipe).
    private let builtinPipelines = Mutex<[BuiltinKernel: VkPipeline]>([:])

    /// Opens `physical` of `instance` (made with `VulkanDiscovery`).
    init(instance: VulkanInstance, physical: VkPhysicalDevice, description: DeviceDescription,
         minImportAlignment: UInt64) throws(TetherError) {
        self.instance = instance
        self.physical = physical
        self.device = description
        self.minImportAlignment = max(minImportAlignment, 1)
        guard description.usable else {
            throw TetherError(.backendUnavailable, "\(description.name) lacks \(description.missing.joined(separator: ", "))")
        }
        var familyCount: UInt32 = 0
        instance.getQueueFamilies(physical, &familyCount, nil)
        var families = [VkQueueFamilyProperties](repeating: VkQueueFamilyProperties(), count: Int(familyCount))
        instance.getQueueFamilies(physical, &familyCount, &families)
        guard let family = families.firstIndex(where: { $0.queueFlags & VK_QUEUE_COMPUTE_BIT.rawValue != 0 }) else {
            throw TetherError(.backendUnavailable, "\(description.name) has no compute queue")
        }
        queueFamily = UInt32(family)
        var memProps = VkPhysicalDeviceMemoryProperties()
        instance.getMemoryProperties(physical, &memProps)
        memoryProperties = memProps

        var priority: Float = 1
        var queueInfo = VkDeviceQueueCreateInfo()
        queueInfo.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO
        queueInfo.queueFamilyIndex = UInt32(family)
        queueInfo.queueCount = 1
        var features = VulkanFeatures(instance: instance, physical: physical)
        userKernelLimits = features.userKernelLimits
        let extensions = CStrings(["VK_EXT_external_memory_host"] + features.extensions)
        var created: VkDevice?
        let result = withUnsafePointer(to: &priority) { prio in
            queueInfo.pQueuePriorities = prio
            return withUnsafePointer(to: &queueInfo) { q in
                withUnsafePointer(to: &features.core) { f in
                    withUnsafeMutablePointer(to: &features.v11) { v11 in
                        withUnsafeMutablePointer(to: &features.v12) { v12 in
                            withUnsafeMutablePointer(to: &features.robustness2) { robust in
                                extensions.pointers.withUnsafeBufferPointer { e in
                                    v11.pointee.pNext = UnsafeMutableRawPointer(v12)
                                    v12.pointee.pNext = features.hasRobustness2 ? UnsafeMutableRawPointer(robust) : nil
                                    var info = VkDeviceCreateInfo()
                                    info.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO
                                    info.pNext = UnsafeRawPointer(v11)
                                    info.queueCreateInfoCount = 1
                                    info.pQueueCreateInfos = q
                                    info.enabledExtensionCount = UInt32(e.count)
                                    info.ppEnabledExtensionNames = e.baseAddress
                                    info.pEnabledFeatures = f
                                    return instance.createDevice(physical, &info, nil, &created)
                                }
                            }
                        }
                    }
                }
            }
        }
        try check(result, "vkCreateDevice")
        guard let created else { throw TetherError(.deviceError, "vkCreateDevice returned no device") }
        handle = created
        let fn = try VulkanDeviceFunctions(instance: instance, device: created)
        self.fn = fn
        var q: VkQueue?
        fn.getDeviceQueue(created, UInt32(family), 0, &q)
        queue = q!

        var range = VkPushConstantRange(stageFlags: VK_SHADER_STAGE_COMPUTE_BIT.rawValue, offset: 0,
                                        size: UInt32(KernelABI.pushConstantSize))
        var layoutInfo = VkPipelineLayoutCreateInfo()
        layoutInfo.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO
        var layout: VkPipelineLayout?
        let layoutResult = withUnsafePointer(to: &range) { r in
            layoutInfo.pushConstantRangeCount = 1
            layoutInfo.pPushConstantRanges = r
            return fn.createPipelineLayout(created, &layoutInfo, nil, &layout)
        }
        guard layoutResult == VK_SUCCESS, let layout else {
            fn.destroyDevice(created, nil)
            throw TetherError(.deviceError, "vkCreatePipelineLayout failed (\(layoutResult.rawValue))")
        }
        pipelineLayout = layout
    }

    deinit {
        _ = fn.deviceWaitIdle(handle)
        builtinPipelines.withLock { pipelines in
            for p in pipelines.values { fn.destroyPipeline(handle, p, nil) }
        }
        fn.destroyPipelineLayout(handle, pipelineLayout, nil)
        fn.destroyDevice(handle, nil)
    }

    // MARK: Pipelines

    /// A compute pipeline of `words` (SPIR-V) at `entryPoint`, with `layout`. `flags`: e.g.
    /// `VK_PIPELINE_CREATE_DISPATCH_BASE_BIT` for pipelines dispatched with a base.
    func makePipeline(words: [UInt32], entryPoint: String = "main", layout: VkPipelineLayout? = nil,
                      flags: VkPipelineCreateFlags = 0) throws(TetherError) -> VkPipeline {
        guard !words.isEmpty, words[0] == 0x0723_0203 else {
            throw TetherError(.invalidArgument, "the kernel is not SPIR-V (bad magic number)")
        }
        var module: VkShaderModule?
        let moduleResult = words.withUnsafeBufferPointer { w -> VkResult in
            var info = VkShaderModuleCreateInfo()
            info.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO
            info.codeSize = w.count * 4
            info.pCode = w.baseAddress
            return fn.createShaderModule(handle, &info, nil, &module)
        }
        guard moduleResult == VK_SUCCESS, let module else {
            throw TetherError(.invalidArgument, "the device rejected the SPIR-V module (VkResult \(moduleResult.rawValue))")
        }
        defer { fn.destroyShaderModule(handle, module, nil) }
        var pipeline: VkPipeline?
        let result = entryPoint.withCString { entry -> VkResult in
            var stage = VkPipelineShaderStageCreateInfo()
            stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO
            stage.stage = VK_SHADER_STAGE_COMPUTE_BIT
            stage.module = module
            stage.pName = entry
            var info = VkComputePipelineCreateInfo()
            info.sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO
            info.flags = flags
            info.stage = stage
            info.layout = layout ?? pipelineLayout
            return fn.createComputePipelines(handle, nil, 1, &info, nil, &pipeline)
        }
        guard result == VK_SUCCESS, let pipeline else {
            throw TetherError(.invalidArgument, "the device could not compile the module (vkCreateComputePipelines: VkResult \(result.rawValue))")
        }
        return pipeline
    }

    func builtinPipeline(_ kernel: BuiltinKernel) throws(TetherError) -> VkPipeline {
        try builtinPipelines.withLock { (pipelines) throws(TetherError) -> VkPipeline in
            if let p = pipelines[kernel] { return p }
            let p = try makePipeline(words: ShaderModules.spirv(for: kernel))
            pipelines[kernel] = p
            return p
        }
    }

    // MARK: Memory

    func memoryType(bits: UInt32, flags: UInt32) -> UInt32? {
        var props = memoryProperties
        return withUnsafeBytes(of: &props.memoryTypes) { raw -> UInt32? in
            let types = raw.bindMemory(to: VkMemoryType.self)
            for i in 0..<Int(props.memoryTypeCount) where bits & (1 << i) != 0 && types[i].propertyFlags & flags == flags {
                return UInt32(i)
            }
            return nil
        }
    }

    /// A buffer over `size` bytes with device address; memory either imported from `host` or newly
    /// allocated host-visible.
    func makeBuffer(size: Int, importing host: UnsafeMutableRawPointer?) throws(TetherError) -> VulkanBuffer {
        var external = VkExternalMemoryBufferCreateInfo()
        external.sType = VK_STRUCTURE_TYPE_EXTERNAL_MEMORY_BUFFER_CREATE_INFO
        external.handleTypes = VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT.rawValue
        var bufferInfo = VkBufferCreateInfo()
        bufferInfo.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO
        bufferInfo.size = VkDeviceSize(size)
        bufferInfo.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT.rawValue | VK_BUFFER_USAGE_UNIFORM_BUFFER_BIT.rawValue
            | VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT.rawValue
        bufferInfo.sharingMode = VK_SHARING_MODE_EXCLUSIVE
        var buffer: VkBuffer?
        let created = withUnsafePointer(to: &external) { e -> VkResult in
            bufferInfo.pNext = host == nil ? nil : UnsafeRawPointer(e)
            return fn.createBuffer(handle, &bufferInfo, nil, &buffer)
        }
        try check(created, "vkCreateBuffer")
        guard let buffer else { throw TetherError(.deviceError, "vkCreateBuffer returned no buffer") }
        var requirements = VkMemoryRequirements()
        fn.getBufferMemoryRequirements(handle, buffer, &requirements)
        var typeBits = requirements.memoryTypeBits
        if let host {
            var hostProps = VkMemoryHostPointerPropertiesEXT()
            hostProps.sType = VK_STRUCTURE_TYPE_MEMORY_HOST_POINTER_PROPERTIES_EXT
            let r = fn.getMemoryHostPointerProperties(handle, VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT, host, &hostProps)
            guard r == VK_SUCCESS else {
                fn.destroyBuffer(handle, buffer, nil)
                throw TetherError(.deviceError, "vkGetMemoryHostPointerPropertiesEXT failed (\(r.rawValue))")
            }
            typeBits &= hostProps.memoryTypeBits
        }
        let wanted = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT.rawValue | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT.rawValue
        guard let typeIndex = memoryType(bits: typeBits, flags: wanted) ?? memoryType(bits: typeBits, flags: 0) else {
            fn.destroyBuffer(handle, buffer, nil)
            throw TetherError(.deviceError, "no memory type fits the buffer")
        }
        var flagsInfo = VkMemoryAllocateFlagsInfo()
        flagsInfo.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_FLAGS_INFO
        flagsInfo.flags = VK_MEMORY_ALLOCATE_DEVICE_ADDRESS_BIT.rawValue
        var importInfo = VkImportMemoryHostPointerInfoEXT()
        importInfo.sType = VK_STRUCTURE_TYPE_IMPORT_MEMORY_HOST_POINTER_INFO_EXT
        importInfo.handleType = VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT
        importInfo.pHostPointer = host
        var memory: VkDeviceMemory?
        let allocated = withUnsafeMutablePointer(to: &flagsInfo) { f -> VkResult in
            withUnsafeMutablePointer(to: &importInfo) { i -> VkResult in
                var allocInfo = VkMemoryAllocateInfo()
                allocInfo.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO
                allocInfo.allocationSize = host == nil ? requirements.size : VkDeviceSize(size)
                allocInfo.memoryTypeIndex = typeIndex
                if host != nil {
                    i.pointee.pNext = UnsafeRawPointer(f)
                    allocInfo.pNext = UnsafeRawPointer(i)
                } else {
                    allocInfo.pNext = UnsafeRawPointer(f)
                }
                return fn.allocateMemory(handle, &allocInfo, nil, &memory)
            }
        }
        guard allocated == VK_SUCCESS, let memory else {
            fn.destroyBuffer(handle, buffer, nil)
            throw TetherError(.resourceExhausted, "vkAllocateMemory failed (VkResult \(allocated.rawValue))")
        }
        let bound = fn.bindBufferMemory(handle, buffer, memory, 0)
        guard bound == VK_SUCCESS else {
            fn.destroyBuffer(handle, buffer, nil)
            fn.freeMemory(handle, memory, nil)
            throw TetherError(.deviceError, "vkBindBufferMemory failed (\(bound.rawValue))")
        }
        var addressInfo = VkBufferDeviceAddressInfo()
        addressInfo.sType = VK_STRUCTURE_TYPE_BUFFER_DEVICE_ADDRESS_INFO
        addressInfo.buffer = buffer
        let address = fn.getBufferDeviceAddress(handle, &addressInfo)
        var mapped: UnsafeMutableRawPointer? = host
        if host == nil {
            let r = fn.mapMemory(handle, memory, 0, VkDeviceSize(VK_WHOLE_SIZE), 0, &mapped)
            guard r == VK_SUCCESS else {
                fn.destroyBuffer(handle, buffer, nil)
                fn.freeMemory(handle, memory, nil)
                throw TetherError(.deviceError, "vkMapMemory failed (\(r.rawValue))")
            }
        }
        return VulkanBuffer(backend: self, buffer: buffer, memory: memory, deviceBase: address, mapped: mapped!)
    }

    public func importMemory(base: UnsafeMutableRawPointer, size: Int) throws(TetherError) -> any ImportedMemory {
        let address = UInt64(UInt(bitPattern: base))
        guard address % minImportAlignment == 0, UInt64(size) % minImportAlignment == 0, size > 0 else {
            throw TetherError(.invalidArgument, "host memory to import must be aligned to \(minImportAlignment) bytes")
        }
        return try makeBuffer(size: size, importing: base)
    }

    /// Two: the next slice waits on the queue while one runs (a third would only lengthen a kill).
    public let sliceDepth = 2

    /// The submitter records, submits and waits on the fence itself, asleep meanwhile while the
    /// device runs the slice: this saves the hand-off to the scheduler's worker and back, 50–100 µs
    /// of a ~35 µs tiny `run` on lavapipe here (`tether bench dispatch`). The event loop's other
    /// clients wait meanwhile, so the bound is a few such hand-offs: an eighth of a default slice.
    public var submitterSliceNanos: Double { 250_000 }

    /// The event loop waits this long for a fence at most: a run whose device threads were kept
    /// off the CPU (a busy or stalled machine: 0.6–5.7 ms, several times a second on lavapipe
    /// here) or whose work costs more than measured stalls the daemon's other clients no longer.
    /// Not shorter: a fence wait with a timeout of 1 ms or less made lavapipe's tiny round trips
    /// 4–13 µs slower here (40,000 round trips, `tether bench dispatch --socket S --runs 40000
    /// --samples` against `tether daemon --backend vulkan --submitter-wait-us N`: p50 45–47 µs at
    /// 500 or 1,000 µs against 33–34 µs at 2,000 µs or more in one session's alternated runs,
    /// 45.5–46.9 against 42.1–42.9 µs in a later pair), for reasons inside the driver's wait we did
    /// not find.
    public var submitterWaitNanos: UInt64 { 2_000_000 }

    /// Two on a GPU. One on a CPU driver: a second slice saves lavapipe only ~10 µs of its ~45 µs
    /// per-slice cost, while after a kill each of its workgroups still costs ~4 µs to skip — a
    /// queued 2 ms slice of small groups would add most of a millisecond to the kill.
    public var defaultSlicesInFlight: Int { device.isGPU ? 2 : 1 }

    public func makeContext(program: KernelProgram) throws(TetherError) -> any ThreadContext {
        let pipeline: VkPipeline
        var owned = false
        switch program {
        case .builtin(let kernel): pipeline = try builtinPipeline(kernel)
        case .spirv(let words, _):
            pipeline = try makePipeline(words: words)
            owned = true
        case .module(let launch):
            guard let compiled = launch.module.compiled.withLock({ $0 }) as? VulkanModule, compiled.backend === self else {
                throw TetherError(.invalidArgument, "module \(launch.module.id) was not prepared for this device")
            }
            return try VulkanUserContext(backend: self, module: compiled, launch: launch)
        }
        return try VulkanThreadContext(backend: self, pipeline: pipeline, ownsPipeline: owned)
    }

    public func prepare(_ module: UserModule) throws(TetherError) {
        let compiled = try VulkanModule(backend: self, module: module)
        module.compiled.withLock { $0 = compiled }
    }
}

/// A buffer with bound memory and its device address; frees both on `deinit`.
final class VulkanBuffer: ImportedMemory, @unchecked Sendable {
    let backend: VulkanBackend
    let buffer: VkBuffer
    let memory: VkDeviceMemory
    let deviceBase: UInt64
    let mapped: UnsafeMutableRawPointer

    init(backend: VulkanBackend, buffer: VkBuffer, memory: VkDeviceMemory, deviceBase: UInt64, mapped: UnsafeMutableRawPointer) {
        self.backend = backend
        self.buffer = buffer
        self.memory = memory
        self.deviceBase = deviceBase
        self.mapped = mapped
    }

    deinit {
        backend.fn.destroyBuffer(backend.handle, buffer, nil)
        backend.fn.freeMemory(backend.handle, memory, nil)
    }
}

/// One device thread of a built-in (or trusted pointer-ABI) kernel: its submission slots and its
/// control block, with the region table copy the kernel translates owner addresses through.
final class VulkanThreadContext: ThreadContext, @unchecked Sendable {
    static let maxRegions = 256
    let backend: VulkanBackend
    let pipeline: VkPipeline
    let ownsPipeline: Bool
    let slots: VulkanSlots
    /// Control block at offset 0, region table at offset 64.
    let block: VulkanBuffer
    let control: UnsafeMutablePointer<ControlBlock>
    private var tableInUse: [RegionTableEntry] = []

    init(backend: VulkanBackend, pipeline: VkPipeline, ownsPipeline: Bool) throws(TetherError) {
        self.backend = backend
        self.pipeline = pipeline
        self.ownsPipeline = ownsPipeline
        do {
            slots = try VulkanSlots(backend: backend)
            block = try backend.makeBuffer(size: 64 + RegionTableEntry.stride * Self.maxRegions, importing: nil)
        } catch {
            if ownsPipeline { backend.fn.destroyPipeline(backend.handle, pipeline, nil) }
            throw error
        }
        control = block.mapped.bindMemory(to: ControlBlock.self, capacity: 1)
        control.initialize(to: ControlBlock())
    }

    deinit {
        try? slots.waitForPending()
        if ownsPipeline { backend.fn.destroyPipeline(backend.handle, pipeline, nil) }
    }

    func startSlice(_ slice: SliceLaunch) throws(TetherError) {
        let regions = slice.regions
        guard regions.count <= Self.maxRegions else {
            throw TetherError(.resourceExhausted, "at most \(Self.maxRegions) mirrored regions per address space")
        }
        guard slice.args.count <= KernelABI.maxArguments else {
            throw TetherError(.invalidArgument, "at most \(KernelABI.maxArguments) kernel arguments")
        }
        if regions != tableInUse {
            // Slices in flight read the table: let them end before it changes.
            try slots.waitForPending()
            let table = block.mapped.advanced(by: 64).bindMemory(to: RegionTableEntry.self, capacity: Self.maxRegions)
            for (i, r) in regions.enumerated() { table[i] = r }
            tableInUse = regions
        }
        let fn = backend.fn
        var push = [UInt64](repeating: 0, count: KernelABI.pushConstantSize / 8)
        push[0] = block.deviceBase
        push[1] = block.deviceBase + 64
        for (i, a) in slice.args.enumerated() { push[4 + i] = a }
        try slots.submit { commandBuffer in
            fn.cmdBindPipeline(commandBuffer, VK_PIPELINE_BIND_POINT_COMPUTE, pipeline)
            // maxComputeWorkGroupCount[0] is 65,535 on lavapipe: larger slices become several dispatches.
            var base = slice.groupBase
            let end = slice.groupBase + slice.groupCount
            while base < end {
                let count = min(end - base, 65_535)
                push.withUnsafeMutableBytes { raw in
                    raw.storeBytes(of: UInt32(regions.count), toByteOffset: 16, as: UInt32.self)
                    raw.storeBytes(of: base, toByteOffset: 20, as: UInt32.self)
                    raw.storeBytes(of: slice.groupTotal, toByteOffset: 24, as: UInt32.self)
                    raw.storeBytes(of: slice.round, toByteOffset: 28, as: UInt32.self)
                    fn.cmdPushConstants(commandBuffer, backend.pipelineLayout, VK_SHADER_STAGE_COMPUTE_BIT.rawValue, 0,
                                        UInt32(KernelABI.pushConstantSize), raw.baseAddress)
                }
                fn.cmdDispatch(commandBuffer, count, 1, 1)
                base += count
            }
        }
    }

    func finishSlice() throws(TetherError) -> UInt64? {
        try slots.finishOldest()
        return nil
    }

    func waitForOldestSlice(nanos: UInt64) -> Bool { slots.waitForOldest(nanos: nanos) }
}
