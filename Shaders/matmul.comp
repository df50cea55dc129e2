#version 460
// matmul: C = A·B for row-major n×n f32 matrices. args: n, A, B, C. Each group computes one 16×16
// tile of C; tile t is row t / tilesPerRow, column t % tilesPerRow, tilesPerRow = ceil(n / 16).
#include "tether.glsl"

layout(local_size_x = 16, local_size_y = 16) in;

const uint TILE = 16u;  // BuiltinKernel.matmulTile

shared float tileA[TILE][TILE];
shared float tileB[TILE][TILE];
shared bool stopRequested;

void main()
{
    tetherBegin();  // first, in uniform control flow (see tether.glsl)
    uint group = tetherLinearGroup();
    if (group >= pc.groupTotal) {
        return;
    }
    // One answer for the whole group (see reduce.comp): the tile loop has barriers.
    if (gl_LocalInvocationIndex == 0u) {
        stopRequested = tetherStop;
    }
    barrier();
    if (stopRequested) {
        return;
    }
    uint64_t n64 = pc.args[0];
    // n * n saturates like tetherArrayBytes so that a huge n fails translation.
    uint64_t elements = n64 > 0xFFFFFFFFul ? TETHER_U64_MAX : n64 * n64;
    uint64_t aAddress = tetherTranslateArray(pc.args[1], elements, 4ul);
    uint64_t bAddress = tetherTranslateArray(pc.args[2], elements, 4ul);
    uint64_t cAddress = tetherTranslateArray(pc.args[3], elements, 4ul);
    if (tetherCommitFault()) {
        return;  // the first failing translation's fault, in the order above
    }
    // n * n * 4 bytes fit in a region, so n < 2^31 from here on.
    uint n = uint(n64);
    uint tilesPerRow = (n + TILE - 1u) / TILE;
    if (uint64_t(group) >= uint64_t(tilesPerRow) * uint64_t(tilesPerRow)) {
        return;  // past the last tile; uniform across the group
    }
    uint lx = gl_LocalInvocationID.x;
    uint ly = gl_LocalInvocationID.y;
    uint row = (group / tilesPerRow) * TILE + ly;
    uint col = (group % tilesPerRow) * TILE + lx;
    uint64_t rowBytes = uint64_t(n) * 4ul;
    // 64-bit base addresses: row * n may not fit in the 32-bit array index.
    FloatArray aRow = FloatArray(aAddress + uint64_t(row) * rowBytes);

    float sum = 0.0;
    for (uint k0 = 0u; k0 < n; k0 += TILE) {
        // Cells outside the matrix load as 0 so that edge tiles need no special case below.
        uint ka = k0 + lx;
        tileA[ly][lx] = (row < n && ka < n) ? aRow.v[ka] : 0.0;
        uint kb = k0 + ly;
        float b = 0.0;
        if (kb < n && col < n) {
            b = FloatArray(bAddress + uint64_t(kb) * rowBytes).v[col];
        }
        tileB[ly][lx] = b;
        barrier();
        for (uint k = 0u; k < TILE; ++k) {
            sum += tileA[ly][k] * tileB[k][lx];
        }
        barrier();
    }
    if (row < n && col < n) {
        FloatArray(cAddress + uint64_t(row) * rowBytes).v[col] = sum;
    }
}
