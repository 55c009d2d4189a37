// copy_probe variant "gs4": copy.comp unchanged except that local_size_x is specialization
// constant 0 (so the engine's kernel can be tried at other workgroup sizes than 256).
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
    for (; i + 3u * stride < n; i += 4u * stride) {
        uvec4 a = s[so + i];
        uvec4 b = s[so + i + stride];
        uvec4 c = s[so + i + 2u * stride];
        uvec4 e = s[so + i + 3u * stride];
        d[dof + i] = a;
        d[dof + i + stride] = b;
        d[dof + i + 2u * stride] = c;
        d[dof + i + 3u * stride] = e;
    }
    for (; i < n; i += stride) {
        d[dof + i] = s[so + i];
    }
}
