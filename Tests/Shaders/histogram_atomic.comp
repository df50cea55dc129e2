#version 450
// 32-bit atomics: a histogram of values into 16 bins, and a running total.
layout(local_size_x = 128) in;
layout(set = 0, binding = 0) readonly buffer In { uint values[]; };
layout(set = 0, binding = 1) buffer Bins { uint total; uint bins[16]; };
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= values.length()) return;
    atomicAdd(bins[values[i] % 16u], 1u);
    atomicAdd(total, values[i]);
}
