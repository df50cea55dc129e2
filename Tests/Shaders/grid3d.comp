#version 450
// A 3-D grid without gl_NumWorkGroups: sliced; each group writes its own id.
layout(local_size_x = 1) in;
layout(push_constant) uniform Dims { uint x; uint y; } dims;
layout(set = 0, binding = 0) writeonly buffer Out { uvec4 ids[]; };
void main() {
    uvec3 g = gl_WorkGroupID;
    ids[g.x + dims.x * (g.y + dims.y * g.z)] = uvec4(g, 1);
}
