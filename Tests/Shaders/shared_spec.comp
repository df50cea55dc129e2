#version 450
// Hostile: a shared array whose length is an expression of a spec constant. With N = 0x10000001
// its 16-byte elements come to 4 GiB + 16 bytes, which a 32-bit size would keep as 16.
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint N = 8;
shared uvec4 scratch[N * 2u];
layout(set = 0, binding = 0) buffer Out { uint values[]; };
void main() {
    uint i = gl_LocalInvocationID.x;
    scratch[i % (N * 2u)] = uvec4(i);
    barrier();
    values[gl_GlobalInvocationID.x] = scratch[(i + 1u) % (N * 2u)].x;
}
