//! The compute-pipeline setup the engine's compute copy (`compute`) and the copy probe
//! (`examples/copy_probe.rs`, which includes this file by path) share: two storage-buffer
//! bindings, a pipeline layout with one push-constant range, and a compute pipeline of one
//! SPIR-V module's `main`.

use ash::vk;

/// Bindings 0 and 1: one storage buffer each, for the compute stage.
pub(crate) fn storage_bindings() -> [vk::DescriptorSetLayoutBinding<'static>; 2] {
    [0u32, 1].map(|b| {
        vk::DescriptorSetLayoutBinding::default()
            .binding(b)
            .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
            .descriptor_count(1)
            .stage_flags(vk::ShaderStageFlags::COMPUTE)
    })
}

/// A descriptor-set layout of `storage_bindings` (for push descriptors when `push`) and a
/// pipeline layout of it with `push_bytes` bytes of compute push constants. Nothing is left
/// behind on failure.
///
/// # Safety
/// `device` must be a live device (with VK_KHR_push_descriptor enabled when `push`).
pub(crate) unsafe fn create_layouts(
    device: &ash::Device,
    push: bool,
    push_bytes: u32,
) -> Result<(vk::DescriptorSetLayout, vk::PipelineLayout), vk::Result> {
    let bindings = storage_bindings();
    let flags = if push {
        vk::DescriptorSetLayoutCreateFlags::PUSH_DESCRIPTOR_KHR
    } else {
        vk::DescriptorSetLayoutCreateFlags::empty()
    };
    let set_info = vk::DescriptorSetLayoutCreateInfo::default()
        .flags(flags)
        .bindings(&bindings);
    // SAFETY: live device (contract), valid create info.
    let set_layout = unsafe { device.create_descriptor_set_layout(&set_info, None) }?;
    let ranges = [vk::PushConstantRange::default()
        .stage_flags(vk::ShaderStageFlags::COMPUTE)
        .offset(0)
        .size(push_bytes)];
    let layouts = [set_layout];
    let info = vk::PipelineLayoutCreateInfo::default()
        .set_layouts(&layouts)
        .push_constant_ranges(&ranges);
    // SAFETY: live device; the set layout was just made on it.
    match unsafe { device.create_pipeline_layout(&info, None) } {
        Ok(layout) => Ok((set_layout, layout)),
        Err(r) => {
            // SAFETY: nothing uses the set layout yet.
            unsafe { device.destroy_descriptor_set_layout(set_layout, None) };
            Err(r)
        }
    }
}

/// A compute pipeline of `code`'s `main` on `layout` (with `spec` constants where given), and
/// its shader module. Nothing is left behind on failure.
///
/// # Safety
/// `device` must be live, `layout` made on it, and `code` SPIR-V whose interface fits `layout`.
pub(crate) unsafe fn create_compute_pipeline(
    device: &ash::Device,
    layout: vk::PipelineLayout,
    code: &[u32],
    spec: Option<&vk::SpecializationInfo<'_>>,
) -> Result<(vk::ShaderModule, vk::Pipeline), vk::Result> {
    let module_info = vk::ShaderModuleCreateInfo::default().code(code);
    // SAFETY: live device; `code` is SPIR-V (contract; the driver validates it).
    let module = unsafe { device.create_shader_module(&module_info, None) }?;
    let mut stage = vk::PipelineShaderStageCreateInfo::default()
        .stage(vk::ShaderStageFlags::COMPUTE)
        .module(module)
        .name(c"main");
    if let Some(spec) = spec {
        stage = stage.specialization_info(spec);
    }
    let info = [vk::ComputePipelineCreateInfo::default()
        .stage(stage)
        .layout(layout)];
    // SAFETY: valid create info; the module and layout are live.
    match unsafe { device.create_compute_pipelines(vk::PipelineCache::null(), &info, None) } {
        Ok(p) => Ok((module, p[0])),
        Err((_, r)) => {
            // SAFETY: no pipeline uses the module.
            unsafe { device.destroy_shader_module(module, None) };
            Err(r)
        }
    }
}
