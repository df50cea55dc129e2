#version 460
// mandelbrot: out[p] = escape iterations of pixel p (row-major, width × height) over
// x ∈ [−2, 1], y ∈ [−1.5, 1.5]. args: width, height, maxIterations, out: *u32. 256 pixels per group.
#include "tether.glsl"

layout(local_size_x = 256) in;

void main()
{
    tetherBegin();  // first, in uniform control flow (see tether.glsl)
    uint group = tetherLinearGroup();
    if (group >= pc.groupTotal || tetherStop) {
        return;
    }
    uint64_t width = pc.args[0];
    uint64_t height = pc.args[1];
    // lavapipe stops loops of more than 65,535 iterations; the twin clamps the same way.
    uint maxIterations = uint(min(pc.args[2], uint64_t(TETHER_MAX_LOOP)));
    uint64_t pixels = (height != 0ul && width > TETHER_U64_MAX / height) ? TETHER_U64_MAX : width * height;
    uint64_t outAddress = tetherTranslateArray(pc.args[3], pixels, 4ul);
    if (tetherCommitFault()) {
        return;
    }
    uint64_t first = uint64_t(group) * 256ul;
    uint64_t p = first + gl_LocalInvocationID.x;
    if (p >= pixels) {
        return;
    }
    uint64_t px = p % width;
    uint64_t py = p / width;
    // precise: no fused multiply-add, so results match the Swift twin and CPU reference bit for
    // bit wherever the device rounds like IEEE (all but a handful of boundary pixels elsewhere).
    precise float cx = -2.0 + 3.0 * float(px) / float(width);
    precise float cy = -1.5 + 3.0 * float(py) / float(height);
    precise float zx = 0.0;
    precise float zy = 0.0;
    uint iterations = 0u;
    while (iterations < maxIterations) {
        precise float zx2 = zx * zx;
        precise float zy2 = zy * zy;
        if (zx2 + zy2 > 4.0) {
            break;
        }
        zy = 2.0 * zx * zy + cy;
        zx = zx2 - zy2 + cx;
        iterations++;
    }
    UintArray(outAddress + first * 4ul).v[gl_LocalInvocationID.x] = iterations;
}
