#version 450
#extension GL_KHR_shader_subgroup_arithmetic : require
// Subgroup arithmetic: each invocation gets the sum over its subgroup.
layout(local_size_x = 64) in;
layout(set = 0, binding = 0) readonly buffer In { uint x[]; };
layout(set = 0, binding = 1) writeonly buffer Out { uint sums[]; };
layout(set = 0, binding = 2) writeonly buffer Info { uint subgroupSize; };
void main() {
    uint i = gl_GlobalInvocationID.x;
    sums[i] = subgroupAdd(x[i]);
    if (i == 0) subgroupSize = gl_SubgroupSize;
}
