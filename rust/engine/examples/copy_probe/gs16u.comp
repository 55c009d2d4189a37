// copy_probe variant "gs16u": grid-stride with sixteen uvec4 loads in flight, written as
// [[unroll]] loops over a local array (tests both a deeper pipeline and whether the driver
// unrolls and keeps the array in registers; if it spills to local memory this row is slow).
// local_size_x is specialization constant 0.
#version 450
#extension GL_EXT_control_flow_attributes : require
layout(local_size_x_id = 0) in;
layout(set = 0, binding = 0, std430) readonly restrict buffer Src { uvec4 s[]; };
layout(set = 0, binding = 1, std430) writeonly restrict buffer Dst { uvec4 d[]; };
layout(push_constant) uniform Range { uint src_offset; uint dst_offset; uint count; uint param; } p;

const uint K = 16u;

void main() {
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    uint i = gl_GlobalInvocationID.x;
    uint so = p.src_offset;
    uint dof = p.dst_offset;
    uint n = p.count;
    uvec4 v[K];
    for (; i + (K - 1u) * stride < n; i += K * stride) {
        [[unroll]] for (uint k = 0u; k < K; k++) {
            v[k] = s[so + i + k * stride];
        }
        [[unroll]] for (uint k = 0u; k < K; k++) {
            d[dof + i + k * stride] = v[k];
        }
    }
    for (; i < n; i += stride) {
        d[dof + i] = s[so + i];
    }
}
