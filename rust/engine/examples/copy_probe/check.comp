// copy_probe helper (not a variant): compares binding 0 with fill.comp's pattern for seed p.param
// over p.count elements (grid-stride, local size 256) and records in binding 1 the number of
// mismatching elements and the lowest mismatching index (initialised to 0 and 0xffffffff).
#version 450
layout(local_size_x = 256) in;
layout(set = 0, binding = 0, std430) readonly restrict buffer Got { uvec4 g[]; };
layout(set = 0, binding = 1, std430) restrict buffer Result { uint bad; uint first; } r;
layout(push_constant) uniform Range { uint src_offset; uint dst_offset; uint count; uint param; } p;

void main() {
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    uint seed = p.param;
    uint bad = 0u;
    uint first = 0xffffffffu;
    for (uint i = gl_GlobalInvocationID.x; i < p.count; i += stride) {
        uvec4 want = uvec4(i ^ seed, i * 0x9e3779b1u + seed, ~i, seed ^ 0xa5a5a5a5u);
        if (g[i] != want) {
            bad++;
            first = min(first, i);
        }
    }
    if (bad > 0u) {
        atomicAdd(r.bad, bad);
        atomicMin(r.first, first);
    }
}
