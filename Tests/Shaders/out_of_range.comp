#version 450
// Hostile: reads and writes far past its bindings, at an index from push constants.
layout(local_size_x = 64) in;
layout(push_constant) uniform Reach { uint offset; } reach;
layout(set = 0, binding = 0) readonly buffer In { uint x[]; };
layout(set = 0, binding = 1) buffer Out { uint y[]; };
void main() {
    uint i = gl_GlobalInvocationID.x;
    uint far = i + reach.offset;
    y[far] = 0xDEADBEEFu;          // past the binding: dropped
    y[i] = x[far] + 1u;            // past the binding: reads zero
}
