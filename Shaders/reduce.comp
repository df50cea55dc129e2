#version 460
// reduce: partials[group] = sum of x[group*2048 ..< group*2048 + 2048] (elements past n count as 0).
// args: n, x: *f32, partials: *f32. 256 invocations each add 8 elements, then a shared-memory tree.
#include "tether.glsl"

layout(local_size_x = 256) in;

const uint ELEMENTS_PER_GROUP = 2048u;  // BuiltinKernel.reduceElementsPerGroup
const uint PER_INVOCATION = ELEMENTS_PER_GROUP / 256u;

shared float sums[256];
shared bool stopRequested;

void main()
{
    tetherBegin();  // first, in uniform control flow (see tether.glsl)
    uint group = tetherLinearGroup();
    if (group >= pc.groupTotal) {
        return;
    }
    uint lane = gl_LocalInvocationID.x;
    // The stop check must give the whole group one answer: an invocation that returned early
    // would leave the others waiting at barrier() forever. One invocation reads, all follow.
    if (lane == 0u) {
        stopRequested = tetherStop;
    }
    barrier();
    if (stopRequested) {
        return;
    }
    uint64_t n = pc.args[0];
    // Every invocation computes the same translation, so a fault makes the whole group return.
    uint64_t xAddress = tetherTranslateArray(pc.args[1], n, 4ul);
    uint64_t partialCount = n / ELEMENTS_PER_GROUP + ((n % ELEMENTS_PER_GROUP) != 0ul ? 1ul : 0ul);
    uint64_t partialsAddress = tetherTranslateArray(pc.args[2], partialCount, 4ul);
    if (tetherCommitFault()) {
        return;  // the first failing translation's fault, in the order above
    }
    uint64_t first = uint64_t(group) * ELEMENTS_PER_GROUP;
    if (first >= n) {
        return;  // no elements and no partial slot for this group (uniform across the group)
    }
    uint64_t remaining = n - first;
    uint valid = remaining >= ELEMENTS_PER_GROUP ? ELEMENTS_PER_GROUP : uint(remaining);

    FloatArray x = FloatArray(xAddress + first * 4ul);
    // Invocation `lane` adds elements lane, lane + 256, …: neighbouring invocations read
    // neighbouring words, so each of the 8 loads is one coalesced sweep.
    float sum = 0.0;
    for (uint k = 0u; k < PER_INVOCATION; ++k) {
        uint e = lane + k * 256u;
        if (e < valid) {
            sum += x.v[e];
        }
    }
    sums[lane] = sum;
    barrier();
    for (uint stride = 128u; stride > 0u; stride >>= 1) {
        if (lane < stride) {
            sums[lane] += sums[lane + stride];
        }
        barrier();
    }
    if (lane == 0u) {
        FloatArray slot = FloatArray(partialsAddress + uint64_t(group) * 4ul);
        slot.v[0] = sums[0];
    }
}
