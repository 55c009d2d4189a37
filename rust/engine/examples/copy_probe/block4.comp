// copy_probe variant "block4": block-stride instead of grid-stride. Workgroup w copies the
// contiguous elements [w * B, (w + 1) * B) (B = p.param, a multiple of 4 * local_size), its
// invocations striding by local_size inside the block with four uvec4 loads in flight (coalesced:
// a warp's loads are contiguous). Each workgroup streams through its own part of memory.
// local_size_x is specialization constant 0.
#version 450
layout(local_size_x_id = 0) in;
layout(set = 0, binding = 0, std430) readonly restrict buffer Src { uvec4 s[]; };
layout(set = 0, binding = 1, std430) writeonly restrict buffer Dst { uvec4 d[]; };
layout(push_constant) uniform Range { uint src_offset; uint dst_offset; uint count; uint param; } p;

void main() {
    uint l = gl_WorkGroupSize.x;
    uint base = gl_WorkGroupID.x * p.param;
    uint end = min(base + p.param, p.count);
    uint so = p.src_offset;
    uint dof = p.dst_offset;
    uint i = base + gl_LocalInvocationID.x;
    for (; i + 3u * l < end; i += 4u * l) {
        uvec4 a = s[so + i];
        uvec4 b = s[so + i + l];
        uvec4 c = s[so + i + 2u * l];
        uvec4 e = s[so + i + 3u * l];
        d[dof + i] = a;
        d[dof + i + l] = b;
        d[dof + i + 2u * l] = c;
        d[dof + i + 3u * l] = e;
    }
    for (; i < end; i += l) {
        d[dof + i] = s[so + i];
    }
}
