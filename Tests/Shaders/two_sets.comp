#version 450
// Two descriptor sets: inputs in set 0, outputs in set 1.
layout(local_size_x = 64) in;
layout(set = 0, binding = 0) readonly buffer A { int a[]; };
layout(set = 0, binding = 1) readonly buffer B { int b[]; };
layout(set = 1, binding = 0) writeonly buffer Sum { int sum[]; };
layout(set = 1, binding = 1) writeonly buffer Diff { int diff[]; };
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= sum.length()) return;
    sum[i] = a[i] + b[i];
    diff[i] = a[i] - b[i];
}
