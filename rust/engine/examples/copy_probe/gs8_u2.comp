// copy_probe variant "gs8u2": grid-stride with uvec2 (8-byte) elements, eight loads in flight (the
// same 64 bytes per invocation as copy.comp, in half-width accesses). `count` and the offsets are
// in uvec2 elements. local_size_x is specialization constant 0.
#version 450
layout(local_size_x_id = 0) in;
layout(set = 0, binding = 0, std430) readonly restrict buffer Src { uvec2 s[]; };
layout(set = 0, binding = 1, std430) writeonly restrict buffer Dst { uvec2 d[]; };
layout(push_constant) uniform Range { uint src_offset; uint dst_offset; uint count; uint param; } p;

void main() {
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    uint i = gl_GlobalInvocationID.x;
    uint so = p.src_offset;
    uint dof = p.dst_offset;
    uint n = p.count;
    for (; i + 7u * stride < n; i += 8u * stride) {
        uvec2 v0 = s[so + i];
        uvec2 v1 = s[so + i + stride];
        uvec2 v2 = s[so + i + 2u * stride];
        uvec2 v3 = s[so + i + 3u * stride];
        uvec2 v4 = s[so + i + 4u * stride];
        uvec2 v5 = s[so + i + 5u * stride];
        uvec2 v6 = s[so + i + 6u * stride];
        uvec2 v7 = s[so + i + 7u * stride];
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
