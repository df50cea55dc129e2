#version 450
// One step of an iterative loop: the host dispatches it many times over the same buffer.
layout(local_size_x = 64) in;
layout(set = 0, binding = 0) buffer Data { uint v[]; };
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < v.length()) v[i] += i + 1u;
}
