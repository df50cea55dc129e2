#version 450
// A uniform block of parameters plus a push constant the host changes between runs.
layout(local_size_x = 64) in;
layout(set = 0, binding = 0, std140) uniform Params { float scale; float offset; uint count; } params;
layout(set = 0, binding = 1) readonly buffer In { float x[]; };
layout(set = 0, binding = 2) writeonly buffer Out { float y[]; };
layout(push_constant) uniform Push { float bias; } push;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < params.count) y[i] = x[i] * params.scale + params.offset + push.bias;
}
