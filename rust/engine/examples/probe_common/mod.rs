//! What the probes (`queue_probe`, `copy_probe`) share: their error type, a buffer with its own
//! memory, and the choice of a memory type.

use ash::vk;

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// A buffer bound to memory of its own (the probes free neither: they exit).
pub struct Buf {
    pub buffer: vk::Buffer,
    pub memory: vk::DeviceMemory,
}

/// The first memory type among `bits` with every flag of `want`, one with none of `avoid` if
/// there is such a type.
pub fn memory_type(
    props: &vk::PhysicalDeviceMemoryProperties,
    bits: u32,
    want: vk::MemoryPropertyFlags,
    avoid: vk::MemoryPropertyFlags,
) -> Res<u32> {
    let find = |avoid: vk::MemoryPropertyFlags| {
        (0..props.memory_type_count).find(|&i| {
            let f = props.memory_types[i as usize].property_flags;
            bits & (1 << i) != 0 && f.contains(want) && !f.intersects(avoid)
        })
    };
    find(avoid)
        .or_else(|| find(vk::MemoryPropertyFlags::empty()))
        .ok_or_else(|| "no suitable memory type".into())
}

/// The Vulkan loader, an instance (Vulkan 1.2) and the first physical device. The entry must
/// outlive the instance: it holds the loader library.
pub fn first_device() -> Res<(ash::Entry, ash::Instance, vk::PhysicalDevice)> {
    // SAFETY: loading the system's Vulkan loader.
    let entry = unsafe { ash::Entry::load()? };
    let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_2);
    // SAFETY: valid create info.
    let instance = unsafe {
        entry.create_instance(
            &vk::InstanceCreateInfo::default().application_info(&app),
            None,
        )
    }
    .map_err(|e| format!("vkCreateInstance: {e}"))?;
    // SAFETY: valid instance.
    let physical = *unsafe { instance.enumerate_physical_devices()? }
        .first()
        .ok_or("no Vulkan device")?;
    Ok((entry, instance, physical))
}
