// Tether device-side ABI, mirrored from Sources/TetherCore/KernelABI.swift. Keep the two in step:
// the push-constant block, ControlBlock, RegionTableEntry and ListNode layouts here must match the
// Swift declarations byte for byte (the software backend's twins in SoftwareKernels.swift mirror
// the helpers below).
//
// Pointers in kernel arguments are *owner* virtual addresses (addresses in the client process).
// Device code never dereferences them directly: tetherTranslate maps them through the region
// table, and records a fault in the control block instead of touching memory outside a region.
#ifndef TETHER_GLSL
#define TETHER_GLSL

#extension GL_EXT_buffer_reference : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require

// Offsets 0, 8, 16, 20, 24, 28, 32; 120 bytes in all (KernelABI.pushConstantSize).
layout(push_constant, std430) uniform TetherPushConstants {
    uint64_t control;     // device address of this thread's ControlBlock
    uint64_t regions;     // device address of RegionTableEntry[regionCount]
    uint regionCount;
    uint groupBase;       // first linear workgroup of this dispatch
    uint groupTotal;      // workgroups in the thread's whole grid
    uint round;           // how many times a persistent thread has run its grid
    uint64_t args[11];    // owner addresses and scalars (floats: bit pattern in the low 32 bits)
} pc;

// The per-thread control block (24 bytes). volatile + coherent: `word` is written by the host while
// the kernel runs, so every read must go to memory, not a register or a non-coherent cache.
layout(buffer_reference, std430, buffer_reference_align = 8) coherent volatile buffer ControlBlock {
    uint word;            // KernelABI.controlRun / controlKill / controlYield
    uint fault;           // KernelABI.faultNone / faultAddress; first fault wins
    uint64_t faultAddress;
    uint sink;            // a side effect spin can target so its math is not dead code
    uint pad;
};

struct RegionTableEntry {
    uint64_t ownerBase;
    uint64_t size;
    uint64_t deviceBase;
};

layout(buffer_reference, std430, buffer_reference_align = 8) readonly buffer RegionTable {
    RegionTableEntry entries[];
};

struct ListNode {
    uint64_t next;        // owner address of the next node, 0 ends the list
    uint value;
    uint pad;
};

layout(buffer_reference, std430, buffer_reference_align = 4) buffer FloatArray { float v[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) buffer UintArray { uint v[]; };
layout(buffer_reference, std430, buffer_reference_align = 8) buffer Uint64Array { uint64_t v[]; };
layout(buffer_reference, std430, buffer_reference_align = 8) buffer ListNodeArray { ListNode v[]; };

const uint64_t TETHER_U64_MAX = 0xFFFFFFFFFFFFFFFFul;
const uint TETHER_MAX_LOOP = 65535u;  // lavapipe stops loops of more iterations than this

// The kernel's linear workgroup id. The host slices a grid into dispatches of at most
// maxComputeWorkGroupCount[0] groups and passes the first one's id in groupBase.
uint tetherLinearGroup()
{
    return gl_WorkGroupID.x + pc.groupBase;
}

// True once the host asked this thread to stop (kill or yield).
bool tetherShouldStop()
{
    return ControlBlock(pc.control).word != 0u;
}

// Records an address fault for `va`; the first fault of the thread wins.
void tetherRecordFault(uint64_t va)
{
    ControlBlock block = ControlBlock(pc.control);
    if (atomicCompSwap(block.fault, 0u, 1u) == 0u) {
        block.faultAddress = va;
    }
}

// True when owner range [va, va + bytes) lies inside region r. Written as RegionTableEntry.translate
// in Swift so that va + bytes never overflows.
bool tetherRegionContains(RegionTableEntry r, uint64_t va, uint64_t bytes)
{
    return va >= r.ownerBase && bytes <= r.size && va - r.ownerBase <= r.size - bytes;
}

// The index of the first region holding [va, va + bytes), or -1.
//
// lavapipe stops runaway loops with one budget of 65,535 iterations shared by *every* loop an
// invocation runs, this one included (a nested loop costs an iteration even when its condition is
// false at once). Kernels therefore translate before their main loop, and listwalk, which must
// translate inside it, searches the table within its own loop instead of calling this.
int tetherFindRegion(uint64_t va, uint64_t bytes)
{
    RegionTable table = RegionTable(pc.regions);
    for (uint i = 0u; i < pc.regionCount; ++i) {
        if (tetherRegionContains(table.entries[i], va, bytes)) {
            return int(i);
        }
    }
    return -1;
}

// The device address of owner range [va, va + bytes), or 0 after recording a fault.
uint64_t tetherTranslate(uint64_t va, uint64_t bytes)
{
    int index = tetherFindRegion(va, bytes);
    if (index < 0) {
        tetherRecordFault(va);
        return 0ul;
    }
    RegionTableEntry r = RegionTable(pc.regions).entries[index];
    return r.deviceBase + (va - r.ownerBase);
}

// count * elementSize, saturated: a wrapped product could pass translation and let indexing run
// past the region. A saturated one fails translation instead.
uint64_t tetherArrayBytes(uint64_t count, uint64_t elementSize)
{
    return count > TETHER_U64_MAX / elementSize ? TETHER_U64_MAX : count * elementSize;
}

// Translates an array of `count` elements of `elementSize` bytes (a power of two) in one go.
// A misaligned pointer is a fault too: a typed access through it is undefined behaviour on the
// device, and the software twin must not make unaligned typed loads either.
uint64_t tetherTranslateArray(uint64_t va, uint64_t count, uint64_t elementSize)
{
    if ((va & (elementSize - 1ul)) != 0ul) {
        tetherRecordFault(va);
        return 0ul;
    }
    return tetherTranslate(va, tetherArrayBytes(count, elementSize));
}

// args[i] as the float whose bits are in its low 32 bits.
float tetherArgFloat(int i)
{
    return uintBitsToFloat(uint(pc.args[i]));
}

#endif
