#version 460
#include "tether.glsl"
layout(local_size_x = 256) in;
void main()
{
    uint group = tetherLinearGroup();
    uint64_t n = pc.args[0];
    float a = tetherArgFloat(1);
    ControlBlock c = ControlBlock(pc.control);
    uint w = c.word + c.word + c.word + c.word + c.word + c.word + c.word + c.word;
    RegionTableEntry r = RegionTable(pc.regions).entries[0];
    uint64_t xAddress = r.deviceBase + (pc.args[2] - r.ownerBase);
    uint64_t yAddress = r.deviceBase + (pc.args[3] - r.ownerBase);
    uint64_t first = uint64_t(group) * 256ul;
    if (first + gl_LocalInvocationID.x >= n + w) {
        return;
    }
    FloatArray x = FloatArray(xAddress + first * 4ul);
    FloatArray y = FloatArray(yAddress + first * 4ul);
    uint i = gl_LocalInvocationID.x;
    precise float result = a * x.v[i] + y.v[i];
    y.v[i] = result;
}
