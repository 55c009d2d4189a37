// copy_probe variant "gs8": copy.comp with eight independent uvec4 loads in flight per invocation
// instead of four (all eight loads are issued before the first store), grid-stride.
// local_size_x is specialization constant 0.
#version 450
layout(local_size_x_id = 0) in;
layout(set = 0, binding = 0, std430) readonly restrict buffer Src { uvec4 s[]; };
layout(set = 0, binding = 1, std430) writeonly restrict buffer Dst { uvec4 d[]; };
layout(push_constant) uniform Range { uint src_offset; uint dst_offset; uint count; uint param; } p;

void main() {
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    uint i = gl_GlobalInvocationID.x;
    uint so = p.src_offset;
    uint dof = p.dst_offset;
    uint n = p.count;
    for (; i + 7u * stride < n; i += 8u * stride) {
        uvec4 v0 = s[so + i];
        uvec4 v1 = s[so + i + stride];
        uvec4 v2 = s[so + i + 2u * stride];
        uvec4 v3 = s[so + i + 3u * stride];
        uvec4 v4 = s[so + i + 4u * stride];
        uvec4 v5 = s[so + i + 5u * stride];
        uvec4 v6 = s[so + i + 6u * stride];
        uvec4 v7 = s[so + i + 7u * stride];
        d[dof + i] = v0;
        d[dof + i + stride] = v1;
        d[dof + i + 2u * stride] = v2;
        d[dof + i + 3u * stride] = v3;
        d[dof + i + 4u * stride] = v4;
        d[dof + i + 5u * stride] = v5;
        d[dof + i + 6u * stride] = v6;
        d[dof + i + 7u * stride] = v7;
    }
    for (; i < n; i += stride) {
        d[dof + i] = s[so + i];
    }
}
