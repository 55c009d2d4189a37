// copy_probe helper (not a variant): writes the check pattern into binding 1 (grid-stride, local
// size 256): element i = (i ^ seed, i * 0x9e3779b1 + seed, ~i, seed ^ 0xa5a5a5a5), seed = p.param.
// The probe's host side and check.comp compute the same pattern.
#version 450
layout(local_size_x = 256) in;
layout(set = 0, binding = 1, std430) writeonly restrict buffer Dst { uvec4 d[]; };
layout(push_constant) uniform Range { uint src_offset; uint dst_offset; uint count; uint param; } p;

void main() {
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    uint seed = p.param;
    for (uint i = gl_GlobalInvocationID.x; i < p.count; i += stride) {
        d[i] = uvec4(i ^ seed, i * 0x9e3779b1u + seed, ~i, seed ^ 0xa5a5a5a5u);
    }
}
