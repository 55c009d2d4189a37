// Device-to-device copy: one uvec4 (16 bytes) per element, four independent loads in flight per
// invocation, grid-stride. After editing, regenerate copy_spv.rs (the SPIR-V words, embedded by
// transfer.rs): glslangValidator -V --target-env vulkan1.1 -x -o copy.spv.txt copy.comp, then wrap
// the words as `pub(crate) const COPY_SPV: [u32; N] = [...];` (see the header of copy_spv.rs).
#version 450
layout(local_size_x = 256) in;
layout(set = 0, binding = 0, std430) readonly restrict buffer Src { uvec4 s[]; };
layout(set = 0, binding = 1, std430) writeonly restrict buffer Dst { uvec4 d[]; };
// Offsets (in elements) of the copy within the bound ranges, and its length in elements.
layout(push_constant) uniform Range { uint src_offset; uint dst_offset; uint count; } p;

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
