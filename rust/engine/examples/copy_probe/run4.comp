// copy_probe variant "run4": block-stride like block4 (workgroup w copies [w * B, (w + 1) * B),
// B = p.param, a multiple of 4 * local_size), but each invocation copies a contiguous run of four
// uvec4s (64 bytes) per step, the runs of one step lying side by side (a warp's load instruction
// touches every fourth 16 bytes of 2 KiB). local_size_x is specialization constant 0.
#version 450
layout(local_size_x_id = 0) in;
layout(set = 0, binding = 0, std430) readonly restrict buffer Src { uvec4 s[]; };
layout(set = 0, binding = 1, std430) writeonly restrict buffer Dst { uvec4 d[]; };
layout(push_constant) uniform Range { uint src_offset; uint dst_offset; uint count; uint param; } p;

void main() {
    uint step = 4u * gl_WorkGroupSize.x;
    uint base = gl_WorkGroupID.x * p.param;
    uint end = min(base + p.param, p.count);
    uint so = p.src_offset;
    uint dof = p.dst_offset;
    for (uint i = base + 4u * gl_LocalInvocationID.x; i < end; i += step) {
        if (i + 3u < end) {
            uvec4 a = s[so + i];
            uvec4 b = s[so + i + 1u];
            uvec4 c = s[so + i + 2u];
            uvec4 e = s[so + i + 3u];
            d[dof + i] = a;
            d[dof + i + 1u] = b;
            d[dof + i + 2u] = c;
            d[dof + i + 3u] = e;
        } else {
            for (uint j = i; j < end; j++) {
                d[dof + j] = s[so + j];
            }
        }
    }
}
