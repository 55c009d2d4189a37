// copy_probe variant "one": one uvec4 per invocation, no loop; the dispatch covers the whole copy
// (groups = count / local_size), 1D or, where maxComputeWorkGroupCount[0] is too small, 2D (the
// flat group index is y * num_groups.x + x). local_size_x is specialization constant 0.
#version 450
layout(local_size_x_id = 0) in;
layout(set = 0, binding = 0, std430) readonly restrict buffer Src { uvec4 s[]; };
layout(set = 0, binding = 1, std430) writeonly restrict buffer Dst { uvec4 d[]; };
layout(push_constant) uniform Range { uint src_offset; uint dst_offset; uint count; uint param; } p;

void main() {
    uint group = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
    uint i = group * gl_WorkGroupSize.x + gl_LocalInvocationID.x;
    if (i < p.count) {
        d[p.dst_offset + i] = s[p.src_offset + i];
    }
}
