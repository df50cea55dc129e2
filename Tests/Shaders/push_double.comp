#version 450
// 64-bit floats in push constants (needs shaderFloat64).
layout(local_size_x = 32) in;
layout(push_constant) uniform Line { double slope; double intercept; } line;
layout(set = 0, binding = 0) writeonly buffer Out { double y[]; };
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < y.length()) y[i] = line.slope * double(i) + line.intercept;
}
