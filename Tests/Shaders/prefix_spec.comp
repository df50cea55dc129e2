#version 450
// One storage buffer and a spec constant: each invocation writes the sum of the first N
// naturals offset by its index (a prefix computation over a constant length).
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint LENGTH = 8;
layout(set = 0, binding = 0) buffer Data { uint values[]; };
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= values.length()) return;
    uint sum = 0;
    for (uint k = 0; k < LENGTH; k++) sum += i + k;
    values[i] = sum;
}
