#version 450
// A 2-D dispatch writing an image-like buffer, row-major, sized by push constants.
layout(local_size_x = 8, local_size_y = 8) in;
layout(push_constant) uniform Size { uint width; uint height; } size;
layout(set = 0, binding = 0) writeonly buffer Image { uint pixels[]; };
void main() {
    uvec2 p = gl_GlobalInvocationID.xy;
    if (p.x >= size.width || p.y >= size.height) return;
    pixels[p.y * size.width + p.x] = (p.x * 7u) ^ (p.y * 13u);
}
