#version 460
// spin: every invocation loops min(iterations, 65,535) times doing float math, polling the control
// word every 64 iterations. args: iterations. 64 invocations per group; the grid is usually run
// persistently (the host repeats it), so it is the kernel that kill/yield latency is measured on.
#include "tether.glsl"

layout(local_size_x = 64) in;

void main()
{
    tetherBegin();  // first, in uniform control flow (see tether.glsl)
    uint group = tetherLinearGroup();
    if (group >= pc.groupTotal || tetherStop) {
        return;
    }
    uint iterations = uint(min(pc.args[0], uint64_t(TETHER_MAX_LOOP)));
    float v = float(gl_LocalInvocationID.x) * (1.0 / 64.0);
    for (uint i = 0u; i < iterations; ++i) {
        if ((i & 63u) == 0u && tetherShouldStop()) {
            return;
        }
        // Four dependent multiply-adds (8 flops) that keep v within [0, 1].
        v = v * 0.9999 + 0.0001;
        v = v * 1.00005 - 0.00005;
        v = v * 0.99995 + 0.00005;
        v = v * 1.0001 - 0.0001;
    }
    // v never reaches the sentinel, but the compiler cannot know that, so the loop stays live.
    if (v == -1.0) {
        atomicAdd(ControlBlock(pc.control).sink, 1u);
    }
}
