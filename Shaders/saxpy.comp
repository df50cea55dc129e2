#version 460
// saxpy: y[i] = a * x[i] + y[i]. args: n, a (f32 bits), x: *f32, y: *f32. 256 elements per group.
#include "tether.glsl"

layout(local_size_x = 256) in;

void main()
{
    tetherBegin();  // first, in uniform control flow (see tether.glsl)
    uint group = tetherLinearGroup();
    if (group >= pc.groupTotal || tetherStop) {
        return;
    }
    uint64_t n = pc.args[0];
    float a = tetherArgFloat(1);
    uint64_t xAddress = tetherTranslateArray(pc.args[2], n, 4ul);
    uint64_t yAddress = tetherTranslateArray(pc.args[3], n, 4ul);
    if (tetherCommitFault()) {
        return;  // x's fault if x failed, else y's
    }
    uint64_t first = uint64_t(group) * 256ul;
    if (first + gl_LocalInvocationID.x >= n) {
        return;
    }
    // Arrays are indexed with 32-bit ints in GLSL, so step the base address to this group's
    // elements instead (a grid may cover more than 2^32 bytes).
    FloatArray x = FloatArray(xAddress + first * 4ul);
    FloatArray y = FloatArray(yAddress + first * 4ul);
    uint i = gl_LocalInvocationID.x;
    // precise: no fused multiply-add, so the result is bit-identical to the Swift twin and the CPU
    // reference (IEEE add and multiply are correctly rounded on Vulkan).
    precise float result = a * x.v[i] + y.v[i];
    y.v[i] = result;
}
