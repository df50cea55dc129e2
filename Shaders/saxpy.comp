#version 460
#include "tether.glsl"
layout(local_size_x = 256) in;
void main()
{
    uint group = tetherLinearGroup();
    uint64_t n = pc.args[0];
    float a = tetherArgFloat(1);
    RegionTableEntry r = RegionTable(pc.regions).entries[0];
    int ix = tetherFindRegion(pc.args[2], n * 4ul);
    if (ix < 0) return;
    uint64_t xAddress = r.deviceBase + (pc.args[2] - r.ownerBase);
    uint64_t yAddress = r.deviceBase + (pc.args[3] - r.ownerBase);
    uint64_t first = uint64_t(group) * 256ul;
    if (first + gl_LocalInvocationID.x >= n) {
        return;
    }
    FloatArray x = FloatArray(xAddress + first * 4ul);
    FloatArray y = FloatArray(yAddress + first * 4ul);
    uint i = gl_LocalInvocationID.x;
    precise float result = a * x.v[i] + y.v[i];
    y.v[i] = result;
}
