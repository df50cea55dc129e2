#version 450
// A user kernel in the style of compute samples: y = a * x + y over two storage buffers, `a` a
// push constant, the workgroup size a specialization constant (local_size_x_id).
// Run it with (one command line):
//   tether run --spirv examples/shaders/saxpy.comp --buffer 0.0=@x.bin --buffer 0.1=@y.bin
//       --push @a.bin --spec 0=128 --groups N/128 --output 0.1=y.bin
layout(local_size_x_id = 0) in;
layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) buffer Y { float y[]; };
layout(push_constant) uniform Scale { float a; } scale;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < y.length()) y[i] = scale.a * x[i] + y[i];
}
