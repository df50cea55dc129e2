#version 450
// Reads gl_NumWorkGroups: every group writes the grid size it sees and its linear id.
layout(local_size_x = 4, local_size_y = 2, local_size_z = 1) in;
layout(set = 0, binding = 0) writeonly buffer Out { uvec4 seen[]; };
void main() {
    if (gl_LocalInvocationIndex != 0) return;
    uvec3 n = gl_NumWorkGroups;
    uvec3 g = gl_WorkGroupID;
    uint linear = g.x + n.x * (g.y + n.y * g.z);
    seen[linear] = uvec4(n, linear);
}
