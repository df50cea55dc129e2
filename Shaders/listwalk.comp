#version 460
// listwalk: invocation i walks list i from heads[i] and writes out[2i] = sum of values (wrapping),
// out[2i + 1] = node count. args: listCount, heads: *u64 (owner addresses, 0 = empty list),
// out: *u32×2. 64 lists per group; at most maxListLength (65,535) nodes per list.
#include "tether.glsl"

layout(local_size_x = 64) in;

const uint MAX_LIST_LENGTH = 65535u;  // BuiltinKernel.maxListLength, also lavapipe's loop cap

void main()
{
    tetherBegin();  // first, in uniform control flow (see tether.glsl)
    uint group = tetherLinearGroup();
    if (group >= pc.groupTotal || tetherStop) {
        return;
    }
    uint64_t listCount = pc.args[0];
    uint64_t headsAddress = tetherTranslateArray(pc.args[1], listCount, 8ul);
    uint64_t outWords = listCount > TETHER_U64_MAX / 2ul ? TETHER_U64_MAX : listCount * 2ul;
    uint64_t outAddress = tetherTranslateArray(pc.args[2], outWords, 4ul);
    if (tetherCommitFault()) {
        return;  // heads' fault if heads failed, else out's
    }
    uint64_t list = uint64_t(group) * 64ul + gl_LocalInvocationID.x;
    if (list >= listCount) {
        return;
    }
    uint64_t node = Uint64Array(headsAddress + list * 8ul).v[0];
    uint sum = 0u;
    uint count = 0u;
    // Every node pointer comes from memory the owner controls, so each is checked against the
    // region of the previous node (`region`; size 0 matches nothing), and the table is searched
    // only on a miss. The search is folded into this loop, one table entry per iteration, rather
    // than a nested loop: lavapipe gives all loops of an invocation one budget of 65,535
    // iterations, and a nested loop costs at least one iteration per node even when skipped,
    // which would halve the longest walk. It starts as region 0 (read by tetherBegin, no search
    // needed when the first node is there, the common case): region 0 is what a search from entry 0
    // would find first whenever it holds the node.
    RegionTableEntry region = tetherHaveRegion0 ? tetherRegion0 : RegionTableEntry(0ul, 0ul, 0ul);
    RegionTable table = RegionTable(pc.regions);
    uint searched = 0u;  // table entries tried for the current node
    while (node != 0ul && count < MAX_LIST_LENGTH) {
        // A node is 16 bytes (two 8-byte words), 8-byte aligned, inside one region.
        // A bad node ends the walk; the fault is recorded after the loop (one atomic site).
        if ((node & 7ul) != 0ul) {
            tetherNoteFault(node);
            break;
        }
        if (!tetherRegionContains(region, node, 16ul)) {
            if (searched >= pc.regionCount) {
                tetherNoteFault(node);
                break;
            }
            region = table.entries[searched];
            searched++;
            continue;
        }
        searched = 0u;
        ListNode current = ListNodeArray(region.deviceBase + (node - region.ownerBase)).v[0];
        sum += current.value;
        count++;
        node = current.next;
    }
    if (tetherCommitFault()) {
        return;  // the faulting list writes nothing
    }
    UintArray out_ = UintArray(outAddress + list * 8ul);
    out_.v[0] = sum;
    out_.v[1] = count;
}
