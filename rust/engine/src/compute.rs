//! Device-to-device copies by a compute shader (`shaders/copy.comp`): on an H100 one
//! vkCmdCopyBuffer of 1 GiB runs at about 400 GB/s on the universal queue (88 GB/s on the
//! transfer queue), while a plain copy kernel reaches HBM speed. Buffers are bound with push
//! descriptors (VK_KHR_push_descriptor); without that extension, or for small or unaligned
//! copies, vkCmdCopyBuffer is used.

use ash::vk;

use crate::pipeline_setup::{create_compute_pipeline, create_layouts};
use crate::properties::DeviceInfo;

#[path = "../shaders/copy_spv.rs"]
mod spv;

/// Bytes per shader element (`uvec4`).
const ELEMENT: u64 = 16;
/// Invocations per workgroup (`local_size_x` in the shader).
const GROUP: u64 = 256;

/// The copy pipeline of one device.
pub(crate) struct CopyPipeline {
    push: ash::khr::push_descriptor::Device,
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
    shader: vk::ShaderModule,
    pipeline: vk::Pipeline,
    /// Storage-buffer binding limits.
    align: u64,
    max_range: u64,
    max_groups: u64,
}

impl CopyPipeline {
    /// Build the pipeline; `None` when the device cannot (the caller then uses vkCmdCopyBuffer).
    pub(crate) fn new(
        instance: &ash::Instance,
        device: &ash::Device,
        info: &DeviceInfo,
    ) -> Option<CopyPipeline> {
        if !info.extensions.push_descriptor {
            return None;
        }
        let mut made = CopyPipeline {
            push: ash::khr::push_descriptor::Device::new(instance, device),
            set_layout: vk::DescriptorSetLayout::null(),
            layout: vk::PipelineLayout::null(),
            shader: vk::ShaderModule::null(),
            pipeline: vk::Pipeline::null(),
            align: info.min_storage_buffer_offset_alignment.max(ELEMENT),
            max_range: info.max_storage_buffer_range,
            max_groups: u64::from(info.max_compute_work_group_count_x).min(65_535),
        };
        // SAFETY: live device with VK_KHR_push_descriptor (checked above); the shader's
        // interface (two storage buffers, 12 bytes of push constants) fits the layout; every
        // object made here is destroyed by `destroy` (also on the failure paths below).
        let built = unsafe {
            (|| -> Result<(), vk::Result> {
                (made.set_layout, made.layout) = create_layouts(device, true, 12)?;
                (made.shader, made.pipeline) =
                    create_compute_pipeline(device, made.layout, &spv::COPY_SPV, None)?;
                Ok(())
            })()
        };
        match built {
            Ok(()) if made.max_range >= 4 * made.align => Some(made),
            _ => {
                made.destroy(device);
                None
            }
        }
    }

    /// Destroy every object (device idle).
    pub(crate) fn destroy(&self, device: &ash::Device) {
        // SAFETY: the objects belong to `device` and no submitted work uses them any more;
        // destroying null handles is a no-op.
        unsafe {
            device.destroy_pipeline(self.pipeline, None);
            device.destroy_shader_module(self.shader, None);
            device.destroy_pipeline_layout(self.layout, None);
            device.destroy_descriptor_set_layout(self.set_layout, None);
        }
    }

    /// Whether a copy of `size` bytes from absolute offset `src` to `dst` can use the shader:
    /// both must share their position within 16 bytes (the bytes before the first whole element
    /// and after the last go through vkCmdCopyBuffer).
    pub(crate) fn suits(&self, src: u64, dst: u64, size: u64) -> bool {
        src % ELEMENT == dst % ELEMENT && size >= 4 * ELEMENT
    }

    /// Record the copy of `size` bytes from `src_buf`+`src` to `dst_buf`+`dst` (absolute
    /// offsets, non-overlapping, `suits` held).
    pub(crate) fn record(
        &self,
        d: &ash::Device,
        cmd: vk::CommandBuffer,
        (src_buf, src): (vk::Buffer, u64),
        (dst_buf, dst): (vk::Buffer, u64),
        size: u64,
    ) {
        let head = (ELEMENT - src % ELEMENT) % ELEMENT;
        let body = (size - head) / ELEMENT * ELEMENT;
        let tail = size - head - body;
        let mut edges = Vec::with_capacity(2);
        if head > 0 {
            edges.push(vk::BufferCopy {
                src_offset: src,
                dst_offset: dst,
                size: head,
            });
        }
        if tail > 0 {
            edges.push(vk::BufferCopy {
                src_offset: src + head + body,
                dst_offset: dst + head + body,
                size: tail,
            });
        }
        // SAFETY: recording state; the regions are in bounds and disjoint from the body.
        unsafe {
            if !edges.is_empty() {
                d.cmd_copy_buffer(cmd, src_buf, dst_buf, &edges);
            }
            d.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, self.pipeline);
        }
        // Each dispatch binds windows of at most `max_range` bytes starting at aligned offsets,
        // and at most 2^30 elements (the shader's indices stay far from overflow).
        let window = (self.max_range - self.align).min(1 << 34) / ELEMENT * ELEMENT;
        let (mut s, mut t, mut left) = (src + head, dst + head, body);
        while left > 0 {
            let n = left.min(window);
            let (sb, tb) = (s / self.align * self.align, t / self.align * self.align);
            let (so, to) = (s - sb, t - tb);
            let infos = [
                [vk::DescriptorBufferInfo::default()
                    .buffer(src_buf)
                    .offset(sb)
                    .range(so + n)],
                [vk::DescriptorBufferInfo::default()
                    .buffer(dst_buf)
                    .offset(tb)
                    .range(to + n)],
            ];
            let writes = [0usize, 1].map(|b| {
                vk::WriteDescriptorSet::default()
                    .dst_binding(b as u32)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(&infos[b])
            });
            let count = n / ELEMENT;
            let constants: [u32; 3] = [(so / ELEMENT) as u32, (to / ELEMENT) as u32, count as u32];
            let bytes: Vec<u8> = constants.iter().flat_map(|c| c.to_ne_bytes()).collect();
            let groups = count.div_ceil(GROUP).clamp(1, self.max_groups) as u32;
            // SAFETY: recording state with the pipeline bound; the descriptors cover in-bounds
            // ranges of live buffers; the push constants match the layout's 12 bytes.
            unsafe {
                self.push.cmd_push_descriptor_set(
                    cmd,
                    vk::PipelineBindPoint::COMPUTE,
                    self.layout,
                    0,
                    &writes,
                );
                d.cmd_push_constants(cmd, self.layout, vk::ShaderStageFlags::COMPUTE, 0, &bytes);
                d.cmd_dispatch(cmd, groups, 1, 1);
            }
            s += n;
            t += n;
            left -= n;
        }
    }
}
