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

// Translation failures are noted here first and recorded by tetherCommitFault, so that a kernel
// has one atomic site instead of one per failure path: on lavapipe every atomic (and store) site
// costs each 8-invocation chunk a lane-by-lane loop whether or not it runs.
bool tetherFaulted;     // set by tetherBegin
uint64_t tetherFaultVA;

// Notes a fault at `va` unless one is noted already (the first one in program order wins, as the
// first recorded one would).
void tetherNoteFault(uint64_t va)
{
    if (!tetherFaulted) {
        tetherFaulted = true;
        tetherFaultVA = va;
    }
}

// Records the fault noted by the translations since tetherBegin, if any; true when there was one
// (the kernel must then return without touching memory). Call it after the translations.
bool tetherCommitFault()
{
    if (tetherFaulted) {
        tetherRecordFault(tetherFaultVA);
    }
    return tetherFaulted;
}

// True when owner range [va, va + bytes) lies inside region r. Written as RegionTableEntry.translate
// in Swift so that va + bytes never overflows.
bool tetherRegionContains(RegionTableEntry r, uint64_t va, uint64_t bytes)
{
    return va >= r.ownerBase && bytes <= r.size && va - r.ownerBase <= r.size - bytes;
}

// Region 0 and the control word, read once at the very top of main() by tetherBegin().
//
// Performance on lavapipe (llvmpipe, Mesa 22.3): a workgroup runs as chunks of 8 invocations, and
// each chunk runs every instruction of the kernel under an execution mask. A loop costs each chunk
// its mask and limiter bookkeeping, and loads inside a loop or branch cannot use the one-load-and-
// broadcast path of a load that every lane is known to reach: they go lane by lane. Searching the
// table in a loop for every pointer argument therefore cost more than the kernels' own work
// (saxpy ran at 0.14 GB/s). So region 0 is read once, outside any branch or loop, and each
// translation tries it first; the search loop (from entry 1) only runs on a miss. The result is the
// same: region 0 is the first match whenever it matches. tetherBegin must run in uniform control
// flow, before anything else; reading entries[0] is safe even when the table is empty (the table
// buffer always holds all its slots), and tetherHaveRegion0 says whether the entry is real.
bool tetherStop;                      // the control word was non-zero at group start
bool tetherHaveRegion0;               // pc.regionCount > 0
RegionTableEntry tetherRegion0;       // RegionTable(pc.regions).entries[0]

void tetherBegin()
{
    tetherStop = ControlBlock(pc.control).word != 0u;
    tetherRegion0 = RegionTable(pc.regions).entries[0];
    tetherHaveRegion0 = pc.regionCount != 0u;
    tetherFaulted = false;
    tetherFaultVA = 0ul;
}

// The index of the first region at or after `start` holding [va, va + bytes), or -1.
//
// lavapipe stops runaway loops with one budget of 65,535 iterations shared by *every* loop an
// invocation runs, this one included (a nested loop costs an iteration even when its condition is
// false at once). Kernels therefore translate before their main loop, and listwalk, which must
// translate inside it, searches the table within its own loop instead of calling this.
int tetherFindRegion(uint start, uint64_t va, uint64_t bytes)
{
    RegionTable table = RegionTable(pc.regions);
    for (uint i = start; i < pc.regionCount; ++i) {
        if (tetherRegionContains(table.entries[i], va, bytes)) {
            return int(i);
        }
    }
    return -1;
}

// The device address of owner range [va, va + bytes), or 0 after noting a fault (see
// tetherCommitFault). Needs tetherBegin(). Region 0 is tried without a loop; the table loop (entries 1 on) runs only when it
// misses, so a translation never costs more loop iterations than a search from entry 0 would.
uint64_t tetherTranslate(uint64_t va, uint64_t bytes)
{
    RegionTableEntry r = tetherRegion0;
    if (!tetherHaveRegion0 || !tetherRegionContains(r, va, bytes)) {
        int index = tetherFindRegion(1u, va, bytes);
        if (index < 0) {
            tetherNoteFault(va);
            return 0ul;
        }
        r = RegionTable(pc.regions).entries[index];
    }
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
// device, and the software twin must not make unaligned typed loads either. 0 after noting a fault.
uint64_t tetherTranslateArray(uint64_t va, uint64_t count, uint64_t elementSize)
{
    if ((va & (elementSize - 1ul)) != 0ul) {
        tetherNoteFault(va);
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
