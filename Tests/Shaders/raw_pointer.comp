#version 450
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
// Hostile: stores one word at an absolute address taken from its push constants.
layout(buffer_reference, std430) buffer Word { uint value; };
layout(local_size_x = 1) in;
layout(push_constant) uniform Target { uint64_t address; uint value; } target;
void main() {
    Word(target.address).value = target.value;
}
