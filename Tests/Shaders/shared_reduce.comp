#version 450
// A workgroup tree reduction in shared memory, its size (and the local size) set by a spec constant.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint GROUP = 64;
shared float partial[GROUP];
layout(set = 0, binding = 0) readonly buffer In { float x[]; };
layout(set = 0, binding = 1) writeonly buffer Out { float sums[]; };
void main() {
    uint l = gl_LocalInvocationID.x;
    partial[l] = x[gl_GlobalInvocationID.x];
    barrier();
    for (uint stride = GROUP / 2; stride > 0; stride /= 2) {
        if (l < stride) partial[l] += partial[l + stride];
        barrier();
    }
    if (l == 0) sums[gl_WorkGroupID.x] = partial[0];
}
