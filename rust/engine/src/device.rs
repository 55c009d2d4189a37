//! The raw logical device and its health: creation (queues, extensions, timeline semaphores),
//! the device-lost / hung state every wait consults, and the wait timeout.
//!
//! "Lost" means every later call fails fast. "Hung" additionally means GPU work may still be
//! running (a wait did not observe completion): from then on nothing the device may touch is
//! ever freed or reused, and the device itself is leaked rather than destroyed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ash::vk;

use crate::error::{EngineError, Result};
use crate::instance::InstanceContext;
use crate::properties::DeviceInfo;
use crate::tuning::Tuning;

/// Where each queue of a device comes from: `(family, index within the family)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueLayout {
    /// Device-side copies, fills, compute.
    pub(crate) universal: (u32, u32),
    /// Host -> device DMA.
    pub(crate) upload: (u32, u32),
    /// Device -> host DMA (the upload queue's own when the family has one queue only).
    pub(crate) download: (u32, u32),
}

impl QueueLayout {
    /// Uploads and downloads each get a queue of their own where the transfer family has two
    /// (else they share one; their work still overlaps on it).
    pub(crate) fn of(info: &DeviceInfo) -> QueueLayout {
        let (u, t) = (info.universal_queue_family, info.transfer_queue_family);
        let count = info.transfer_queue_count.max(1);
        if u != t {
            QueueLayout {
                universal: (u, 0),
                upload: (t, 0),
                download: (t, 1.min(count - 1)),
            }
        } else {
            QueueLayout {
                universal: (u, 0),
                upload: (u, 1.min(count - 1)),
                download: (u, 2.min(count - 1)),
            }
        }
    }

    /// The layout with the upload and download queues moved to the families `tuning` names
    /// (`upload_family`, `download_family`), where they exist and can copy (a video-only or
    /// optical-flow-only family cannot, and is ignored): each role takes the first queue of its
    /// family that no other role uses, or shares the family's last one. Unless `tuning` names
    /// one, uploads on an NVIDIA device go to its compute family without graphics
    /// (`nvidia_upload_family`).
    fn overridden(
        mut self,
        families: &[vk::QueueFamilyProperties],
        vendor_id: u32,
        t: &Tuning,
    ) -> QueueLayout {
        let copies = vk::QueueFlags::TRANSFER | vk::QueueFlags::COMPUTE | vk::QueueFlags::GRAPHICS;
        let upload_family = t.upload_family.or_else(|| {
            if vendor_id == NVIDIA {
                nvidia_upload_family(families, self.universal.0)
            } else {
                None
            }
        });
        for (family, upload) in [(upload_family, true), (t.download_family, false)] {
            let Some(f) = family.filter(|f| {
                families
                    .get(*f as usize)
                    .is_some_and(|p| p.queue_flags.intersects(copies) && p.queue_count > 0)
            }) else {
                continue;
            };
            let count = families[f as usize].queue_count.clamp(1, 4);
            // The queues the other roles hold (the moved role's own does not count).
            let other = if upload { self.download } else { self.upload };
            let taken = [self.universal, other];
            let index = (0..count)
                .find(|i| !taken.contains(&(f, *i)))
                .unwrap_or(count - 1);
            if upload {
                self.upload = (f, index);
            } else {
                self.download = (f, index);
            }
        }
        self
    }

    /// Queues to request per family: `(family, count)`.
    fn requests(&self) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = Vec::new();
        for (f, i) in [self.universal, self.upload, self.download] {
            match out.iter_mut().find(|(g, _)| *g == f) {
                Some(e) => e.1 = e.1.max(i + 1),
                None => out.push((f, i + 1)),
            }
        }
        out
    }
}

/// PCI vendor id of NVIDIA.
const NVIDIA: u32 = 0x10de;

/// The family NVIDIA uploads go to by default: the first with compute and without graphics,
/// other than the universal queue's. Its queues' DMA from host memory is faster than the
/// transfer-only family's (H200 `queue_probe`, 2026-12-01: 50.8-50.9 GB/s against 49.1-49.2;
/// H100, 2026-12-06: a file into device memory 47.0-48.3 GB/s against 45.9-47.2, `load_weights`
/// 3-4 % faster). The cost: an upload there beside a download on the transfer family moves
/// 54.8-54.9 GB/s in total against 58.6 with both on the transfer family (H200 `queue_probe`;
/// `download_family=3`, its transfer + video family, gives 58.5). Weight loading is uploads.
fn nvidia_upload_family(families: &[vk::QueueFamilyProperties], universal: u32) -> Option<u32> {
    (0u32..)
        .zip(families)
        .find(|&(f, p)| {
            f != universal
                && p.queue_count > 0
                && p.queue_flags.contains(vk::QueueFlags::COMPUTE)
                && !p.queue_flags.contains(vk::QueueFlags::GRAPHICS)
        })
        .map(|(f, _)| f)
}

/// A logical device with its health state. Everything built on it (queues, memory, rings) takes
/// a `&RawDevice`; the device is destroyed last, by `Drop`, unless it hung.
pub struct RawDevice {
    /// Keeps the instance alive until the device is destroyed.
    pub(crate) instance: Arc<InstanceContext>,
    pub(crate) device: ash::Device,
    pub(crate) physical: vk::PhysicalDevice,
    pub(crate) info: DeviceInfo,
    pub(crate) layout: QueueLayout,
    /// The distinct queue families in use (buffers are shared CONCURRENTly between them).
    pub(crate) families: Vec<u32>,
    /// Which families support compute (barriers then cover compute-shader copies too).
    pub(crate) compute_families: Vec<u32>,
    /// VK_EXT_external_memory_host functions, when enabled.
    pub(crate) ext_host: Option<ash::ext::external_memory_host::Device>,
    /// VK_KHR_external_memory_fd functions, when the device shares memory as opaque fds.
    pub(crate) ext_fd: Option<ash::khr::external_memory_fd::Device>,
    /// VK_KHR_push_descriptor was enabled (the compute-shader copy can be built).
    pub(crate) push_descriptor: bool,
    lost: AtomicBool,
    hung: AtomicBool,
    /// How long a wait may take before the device counts as hung (nanoseconds).
    timeout_ns: AtomicU64,
    /// How long a wait polls before blocking (zero on CPU devices, whose queue threads need the
    /// cores a poll would take).
    pub(crate) spin: Duration,
    /// Fault injection: submissions also wait for this timeline semaphore, never signalled.
    #[cfg(feature = "fault-injection")]
    pub(crate) never: vk::Semaphore,
    #[cfg(feature = "fault-injection")]
    pub(crate) hang: AtomicBool,
}

impl RawDevice {
    /// Create the logical device for `physical` with the queues of `QueueLayout::of(info)` (as
    /// `tuning` may move them: `QueueLayout::overridden`) and
    /// the timeline-semaphore feature (Vulkan 1.2 core), which every wait relies on.
    pub(crate) fn new(
        instance: Arc<InstanceContext>,
        physical: vk::PhysicalDevice,
        info: DeviceInfo,
        tuning: &Tuning,
    ) -> Result<RawDevice> {
        if info.api_version < vk::API_VERSION_1_2 || instance.api_version < vk::API_VERSION_1_2 {
            return Err(EngineError::Unavailable(format!(
                "device {} ({}) lacks Vulkan 1.2 (timeline semaphores)",
                info.index, info.name
            )));
        }
        let mut timeline = vk::PhysicalDeviceTimelineSemaphoreFeatures::default();
        {
            let mut features = vk::PhysicalDeviceFeatures2::default().push_next(&mut timeline);
            // SAFETY: `physical` belongs to `instance`; the out-structs are valid.
            unsafe {
                instance
                    .instance
                    .get_physical_device_features2(physical, &mut features)
            };
        }
        if timeline.timeline_semaphore == vk::FALSE {
            return Err(EngineError::Unavailable(format!(
                "device {} ({}) lacks timeline semaphores",
                info.index, info.name
            )));
        }
        // SAFETY: `physical` belongs to `instance`.
        let families_props = unsafe {
            instance
                .instance
                .get_physical_device_queue_family_properties(physical)
        };
        let layout = QueueLayout::of(&info).overridden(&families_props, info.vendor_id, tuning);
        let requests = layout.requests();
        let priorities = [1.0f32; 4];
        let queue_infos: Vec<_> = requests
            .iter()
            .map(|&(f, n)| {
                vk::DeviceQueueCreateInfo::default()
                    .queue_family_index(f)
                    .queue_priorities(&priorities[..n.clamp(1, 4) as usize])
            })
            .collect();
        let compute_of = |f: u32| {
            families_props
                .get(f as usize)
                .is_some_and(|p| p.queue_flags.contains(vk::QueueFlags::COMPUTE))
        };
        let mut extensions = Vec::new();
        if info.extensions.memory_budget {
            extensions.push(ash::ext::memory_budget::NAME.as_ptr());
        }
        if info.extensions.portability_subset {
            extensions.push(ash::khr::portability_subset::NAME.as_ptr());
        }
        let import = info.min_imported_host_pointer_alignment.is_some();
        if import {
            extensions.push(ash::ext::external_memory_host::NAME.as_ptr());
        }
        let share_fd = info.opaque_fd.is_some();
        if share_fd {
            extensions.push(ash::khr::external_memory_fd::NAME.as_ptr());
        }
        let push_descriptor =
            info.extensions.push_descriptor && compute_of(layout.universal.0) && tuning.d2d_compute;
        if push_descriptor {
            extensions.push(ash::khr::push_descriptor::NAME.as_ptr());
        }
        let mut enable =
            vk::PhysicalDeviceTimelineSemaphoreFeatures::default().timeline_semaphore(true);
        let create_info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queue_infos)
            .enabled_extension_names(&extensions)
            .push_next(&mut enable);
        // SAFETY: `physical` belongs to `instance`; all pointers in `create_info` are alive.
        let device = unsafe {
            instance
                .instance
                .create_device(physical, &create_info, None)
        }
        .map_err(|r| EngineError::from_vk("vkCreateDevice", r))?;
        let mut families: Vec<u32> = requests.iter().map(|(f, _)| *f).collect();
        families.dedup();
        let compute_families = families
            .iter()
            .copied()
            .filter(|&f| compute_of(f))
            .collect();
        let ext_host = import
            .then(|| ash::ext::external_memory_host::Device::new(&instance.instance, &device));
        let ext_fd = share_fd
            .then(|| ash::khr::external_memory_fd::Device::new(&instance.instance, &device));
        let spin = if info.device_type == "cpu" {
            Duration::ZERO
        } else {
            Duration::from_micros(tuning.fence_spin_us)
        };
        #[cfg(feature = "fault-injection")]
        let never = {
            let mut kind = vk::SemaphoreTypeCreateInfo::default()
                .semaphore_type(vk::SemaphoreType::TIMELINE)
                .initial_value(0);
            let ci = vk::SemaphoreCreateInfo::default().push_next(&mut kind);
            // SAFETY: valid device and create info.
            match unsafe { device.create_semaphore(&ci, None) } {
                Ok(s) => s,
                Err(r) => {
                    // SAFETY: nothing else was created on the device yet.
                    unsafe { device.destroy_device(None) };
                    return Err(EngineError::from_vk("vkCreateSemaphore", r));
                }
            }
        };
        Ok(RawDevice {
            instance,
            device,
            physical,
            info,
            layout,
            families,
            compute_families,
            ext_host,
            ext_fd,
            push_descriptor,
            lost: AtomicBool::new(false),
            hung: AtomicBool::new(false),
            timeout_ns: AtomicU64::new(
                u64::try_from(tuning.timeout.as_nanos()).unwrap_or(u64::MAX),
            ),
            spin,
            #[cfg(feature = "fault-injection")]
            never,
            #[cfg(feature = "fault-injection")]
            hang: AtomicBool::new(false),
        })
    }

    /// Fail fast with `DeviceLost` once the device was lost.
    pub(crate) fn check_alive(&self) -> Result<()> {
        if self.is_lost() {
            Err(self.lost_error())
        } else {
            Ok(())
        }
    }

    pub(crate) fn lost_error(&self) -> EngineError {
        EngineError::DeviceLost(format!(
            "device {} ({}) was lost earlier; every later call on it fails \
             (open a new backend to get a fresh device)",
            self.info.index, self.info.name
        ))
    }

    /// Mark the device lost: every later call on it fails with `DeviceLost`; the device cache
    /// drops it, so later engines get a fresh device. (Only fault injection marks a device lost
    /// without a driver result; waits and submissions mark it through `fail` and `mark_hung`.)
    #[cfg(feature = "fault-injection")]
    pub(crate) fn mark_lost(&self) {
        self.lost.store(true, Ordering::Release);
    }

    /// Mark the device lost with work possibly still running on it: nothing it may touch is
    /// freed from now on.
    pub(crate) fn mark_hung(&self) {
        self.hung.store(true, Ordering::Release);
        self.lost.store(true, Ordering::Release);
    }

    /// Whether the device was marked lost.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Whether GPU work may still be running on a lost device.
    pub(crate) fn is_hung(&self) -> bool {
        self.hung.load(Ordering::Acquire)
    }

    /// Convert a failed Vulkan call. VK_ERROR_DEVICE_LOST marks the device hung: the driver no
    /// longer tells what still runs, so nothing submitted is ever freed.
    pub(crate) fn fail(&self, call: &'static str, r: vk::Result) -> EngineError {
        if r == vk::Result::ERROR_DEVICE_LOST {
            self.mark_hung();
        }
        EngineError::from_vk(call, r)
    }

    /// The wait timeout (one for every wait: after it the device counts as hung).
    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout_ns.load(Ordering::Relaxed))
    }

    /// Fault injection: from now on every submission waits for a semaphore that is never
    /// signalled, and waits give up after `timeout`.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn inject_hang(&self, timeout: Duration) {
        self.timeout_ns.store(
            u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.hang.store(true, Ordering::Release);
    }

    /// Sharing mode arguments for buffers used by every queue family of this device.
    pub(crate) fn sharing(&self) -> (vk::SharingMode, &[u32]) {
        if self.families.len() > 1 {
            (vk::SharingMode::CONCURRENT, &self.families)
        } else {
            (vk::SharingMode::EXCLUSIVE, &[])
        }
    }

    /// Whether `family` supports compute.
    pub(crate) fn family_compute(&self, family: u32) -> bool {
        self.compute_families.contains(&family)
    }
}

impl Drop for RawDevice {
    fn drop(&mut self) {
        if self.is_hung() {
            // Work may still be running: destroying the device could fault it. Leak it (the
            // driver reclaims it at process exit).
            return;
        }
        // SAFETY: every child object was destroyed by the owners built on this device (they
        // drop first); waiting idle before destroying is always valid.
        unsafe {
            let _ = self.device.device_wait_idle();
            #[cfg(feature = "fault-injection")]
            self.device.destroy_semaphore(self.never, None);
            self.device.destroy_device(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMD: u32 = 0x1002;

    fn family(flags: vk::QueueFlags, queue_count: u32) -> vk::QueueFamilyProperties {
        vk::QueueFamilyProperties {
            queue_flags: flags,
            queue_count,
            ..Default::default()
        }
    }

    #[test]
    fn tuning_moves_queues_only_to_families_that_copy() {
        let families = [
            family(vk::QueueFlags::GRAPHICS | vk::QueueFlags::COMPUTE, 16),
            family(vk::QueueFlags::TRANSFER, 2),
            family(vk::QueueFlags::COMPUTE, 8),
            family(vk::QueueFlags::VIDEO_DECODE_KHR, 1),
        ];
        let base = QueueLayout {
            universal: (0, 0),
            upload: (1, 0),
            download: (1, 1),
        };
        let moved = base.overridden(
            &families,
            AMD,
            &Tuning::parse("upload_family=2,download_family=3").unwrap(),
        );
        assert_eq!((moved.upload, moved.download), ((2, 0), (1, 1)));
        // Its own family: the role keeps its queue rather than taking the other role's.
        let same = base.overridden(&families, AMD, &Tuning::parse("upload_family=1").unwrap());
        assert_eq!((same.upload, same.download), ((1, 0), (1, 1)));
        // The universal family: the next queue after the universal one.
        let both = base.overridden(
            &families,
            AMD,
            &Tuning::parse("upload_family=0,download_family=0").unwrap(),
        );
        assert_eq!((both.upload, both.download), ((0, 1), (0, 2)));
        assert_eq!(
            base.overridden(&families, AMD, &Tuning::parse("upload_family=9").unwrap()),
            base
        );
    }

    #[test]
    fn nvidia_uploads_default_to_the_compute_family() {
        let families = [
            family(
                vk::QueueFlags::GRAPHICS | vk::QueueFlags::COMPUTE | vk::QueueFlags::TRANSFER,
                16,
            ),
            family(vk::QueueFlags::TRANSFER, 2),
            family(vk::QueueFlags::COMPUTE | vk::QueueFlags::TRANSFER, 8),
            family(
                vk::QueueFlags::TRANSFER | vk::QueueFlags::VIDEO_DECODE_KHR,
                7,
            ),
        ];
        let base = QueueLayout {
            universal: (0, 0),
            upload: (1, 0),
            download: (1, 1),
        };
        let defaults = Tuning::parse("").unwrap();
        let nvidia = base.overridden(&families, NVIDIA, &defaults);
        assert_eq!((nvidia.upload, nvidia.download), ((2, 0), (1, 1)));
        assert_eq!(nvidia.requests(), vec![(0, 1), (2, 1), (1, 2)]);
        // Another vendor, or a family the tuning names, keeps the measured choice.
        assert_eq!(base.overridden(&families, AMD, &defaults), base);
        let named = base.overridden(
            &families,
            NVIDIA,
            &Tuning::parse("upload_family=1").unwrap(),
        );
        assert_eq!(named, base);
        // No compute family without graphics but the universal one: nothing moves.
        assert_eq!(base.overridden(&families[..2], NVIDIA, &defaults), base);
        // A device without graphics, its universal queue on the compute family: uploads stay.
        let headless = [
            family(vk::QueueFlags::TRANSFER, 2),
            family(vk::QueueFlags::COMPUTE | vk::QueueFlags::TRANSFER, 8),
        ];
        let compute_universal = QueueLayout {
            universal: (1, 0),
            upload: (0, 0),
            download: (0, 1),
        };
        assert_eq!(
            compute_universal.overridden(&headless, NVIDIA, &defaults),
            compute_universal
        );
    }
}
