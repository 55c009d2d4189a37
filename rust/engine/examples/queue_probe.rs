//! Queue probe: how fast each queue of device 0 moves bytes, alone and side by side, with no
//! engine in between. It answers the questions behind the transfer plan's queue choice: which
//! queue reaches the PCIe limit from pinned host memory, whether two queues of one direction add
//! up, which pairs of queues overlap an upload with a download, and what vkCmdCopyBuffer does
//! device-to-device on each queue.
//!
//! `cargo run --release --example queue_probe [MiB]` (default 1024). Prints one table.

use std::time::Instant;

use ash::vk;

#[path = "probe_common/mod.rs"]
mod probe_common;
use probe_common::{first_device, memory_type, Buf, Res};

struct Probe {
    device: ash::Device,
    queues: Vec<(String, u32, vk::Queue)>,
    pools: Vec<vk::CommandPool>,
}

impl Probe {
    fn buffer(
        &self,
        props: &vk::PhysicalDeviceMemoryProperties,
        size: u64,
        host: bool,
    ) -> Res<Buf> {
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: valid device and create info.
        let buffer = unsafe { self.device.create_buffer(&info, None)? };
        // SAFETY: the buffer was just created on this device.
        let req = unsafe { self.device.get_buffer_memory_requirements(buffer) };
        let (want, avoid) = if host {
            (
                vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_CACHED,
                vk::MemoryPropertyFlags::DEVICE_LOCAL,
            )
        } else {
            (
                vk::MemoryPropertyFlags::DEVICE_LOCAL,
                vk::MemoryPropertyFlags::HOST_VISIBLE,
            )
        };
        let index = memory_type(props, req.memory_type_bits, want, avoid)?;
        let alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(index);
        // SAFETY: valid allocate info; the memory is bound once and freed never (the probe exits).
        let memory = unsafe { self.device.allocate_memory(&alloc, None)? };
        // SAFETY: fresh buffer and memory of a type it accepts, offset 0.
        unsafe { self.device.bind_buffer_memory(buffer, memory, 0)? };
        if host {
            // SAFETY: host-visible memory, mapped once over its whole size and filled.
            unsafe {
                let p = self.device.map_memory(
                    memory,
                    0,
                    vk::WHOLE_SIZE,
                    vk::MemoryMapFlags::empty(),
                )?;
                std::ptr::write_bytes(p.cast::<u8>(), 0x5a, size as usize);
            }
        }
        Ok(Buf { buffer, memory })
    }

    /// Run one copy job per entry at once, each on its queue: `(queue, src, dst, regions)`.
    /// Returns seconds from the first submission until every fence signalled.
    fn run(&self, jobs: &[(usize, &Buf, &Buf, Vec<vk::BufferCopy>)]) -> Res<f64> {
        let d = &self.device;
        let mut cmds = Vec::new();
        let mut fences = Vec::new();
        for (q, src, dst, regions) in jobs {
            let alloc = vk::CommandBufferAllocateInfo::default()
                .command_pool(self.pools[*q])
                .level(vk::CommandBufferLevel::PRIMARY)
                .command_buffer_count(1);
            // SAFETY: the pool belongs to this device; recording and submission follow the
            // usual rules, and everything is waited for before the next run.
            unsafe {
                let cmd = d.allocate_command_buffers(&alloc)?[0];
                d.begin_command_buffer(cmd, &vk::CommandBufferBeginInfo::default())?;
                d.cmd_copy_buffer(cmd, src.buffer, dst.buffer, regions);
                d.end_command_buffer(cmd)?;
                cmds.push(cmd);
                fences.push(d.create_fence(&vk::FenceCreateInfo::default(), None)?);
            }
        }
        let start = Instant::now();
        for (k, (q, ..)) in jobs.iter().enumerate() {
            let c = [cmds[k]];
            let submit = vk::SubmitInfo::default().command_buffers(&c);
            // SAFETY: recorded command buffer, queue used from this thread only.
            unsafe { d.queue_submit(self.queues[*q].2, &[submit], fences[k])? };
        }
        // SAFETY: fences of the submissions above.
        unsafe { d.wait_for_fences(&fences, true, 60_000_000_000)? };
        let secs = start.elapsed().as_secs_f64();
        for (k, (q, ..)) in jobs.iter().enumerate() {
            // SAFETY: the work finished (fences waited).
            unsafe {
                d.destroy_fence(fences[k], None);
                d.free_command_buffers(self.pools[*q], &[cmds[k]]);
            }
        }
        Ok(secs)
    }
}

fn regions(size: u64, pieces: u64, src_base: u64, dst_base: u64) -> Vec<vk::BufferCopy> {
    let per = size / pieces;
    (0..pieces)
        .map(|i| vk::BufferCopy {
            src_offset: src_base + i * per,
            dst_offset: dst_base + i * per,
            size: per,
        })
        .collect()
}

fn main() -> Res<()> {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let size = mib << 20;
    let (_entry, instance, physical) = first_device()?;
    // SAFETY: valid physical device.
    let (families, props, dprops) = unsafe {
        (
            instance.get_physical_device_queue_family_properties(physical),
            instance.get_physical_device_memory_properties(physical),
            instance.get_physical_device_properties(physical),
        )
    };
    println!(
        "device: {:?}",
        dprops.device_name_as_c_str().unwrap_or_default()
    );
    let priorities = [1.0f32; 4];
    let mut infos = Vec::new();
    for (f, fam) in families.iter().enumerate() {
        if fam.queue_flags.intersects(
            vk::QueueFlags::TRANSFER | vk::QueueFlags::COMPUTE | vk::QueueFlags::GRAPHICS,
        ) {
            let n = fam.queue_count.min(2) as usize;
            println!("family {f}: {:?} x{}", fam.queue_flags, fam.queue_count);
            infos.push(
                vk::DeviceQueueCreateInfo::default()
                    .queue_family_index(f as u32)
                    .queue_priorities(&priorities[..n]),
            );
        }
    }
    // SAFETY: valid create info.
    let device = unsafe {
        instance.create_device(
            physical,
            &vk::DeviceCreateInfo::default().queue_create_infos(&infos),
            None,
        )?
    };
    let mut queues = Vec::new();
    let mut pools = Vec::new();
    for info in &infos {
        let f = info.queue_family_index;
        let flags = families[f as usize].queue_flags;
        let kind = if flags.contains(vk::QueueFlags::GRAPHICS) {
            "gfx"
        } else if flags.contains(vk::QueueFlags::COMPUTE) {
            "comp"
        } else {
            "xfer"
        };
        for i in 0..info.queue_count {
            // SAFETY: requested at device creation.
            let q = unsafe { device.get_device_queue(f, i) };
            let pool_info = vk::CommandPoolCreateInfo::default().queue_family_index(f);
            // SAFETY: valid create info.
            pools.push(unsafe { device.create_command_pool(&pool_info, None)? });
            queues.push((format!("{kind}{f}.{i}"), f, q));
        }
    }
    let p = Probe {
        device,
        queues,
        pools,
    };
    let (h1, h2) = (p.buffer(&props, size, true)?, p.buffer(&props, size, true)?);
    let (d1, d2) = (
        p.buffer(&props, size, false)?,
        p.buffer(&props, size, false)?,
    );
    let gbs = |bytes: u64, s: f64| bytes as f64 / s / 1e9;
    let best = |f: &dyn Fn() -> Res<f64>| -> Res<f64> {
        let mut b = f64::MAX;
        for _ in 0..4 {
            b = b.min(f()?);
        }
        Ok(b)
    };
    let n = p.queues.len();
    println!("\n| queue | h2d 1 region | h2d 16 regions | d2h 1 region | d2d |");
    println!("|---|---|---|---|---|");
    for q in 0..n {
        let up = best(&|| p.run(&[(q, &h1, &d1, regions(size, 1, 0, 0))]))?;
        let up16 = best(&|| p.run(&[(q, &h1, &d1, regions(size, 16, 0, 0))]))?;
        let down = best(&|| p.run(&[(q, &d1, &h2, regions(size, 1, 0, 0))]))?;
        let dd = best(&|| p.run(&[(q, &d1, &d2, regions(size, 1, 0, 0))]))?;
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.0} |",
            p.queues[q].0,
            gbs(size, up),
            gbs(size, up16),
            gbs(size, down),
            gbs(size, dd)
        );
    }
    println!("\n| pair (a, b) | h2d halves a+b | d2h halves a+b | h2d on a + d2h on b (total) |");
    println!("|---|---|---|---|");
    let half = size / 2;
    for a in 0..n {
        for b in 0..n {
            if a == b {
                continue;
            }
            let up = best(&|| {
                p.run(&[
                    (a, &h1, &d1, regions(half, 1, 0, 0)),
                    (b, &h1, &d1, regions(half, 1, half, half)),
                ])
            })?;
            let down = best(&|| {
                p.run(&[
                    (a, &d1, &h2, regions(half, 1, 0, 0)),
                    (b, &d1, &h2, regions(half, 1, half, half)),
                ])
            })?;
            let duplex = best(&|| {
                p.run(&[
                    (a, &h1, &d1, regions(size, 1, 0, 0)),
                    (b, &d2, &h2, regions(size, 1, 0, 0)),
                ])
            })?;
            println!(
                "| {}, {} | {:.1} | {:.1} | {:.1} |",
                p.queues[a].0,
                p.queues[b].0,
                gbs(size, up),
                gbs(size, down),
                gbs(2 * size, duplex)
            );
        }
    }
    // SAFETY: every submission was waited for; the process exits after this.
    unsafe {
        p.device.device_wait_idle()?;
        for b in [&h1, &h2, &d1, &d2] {
            p.device.destroy_buffer(b.buffer, None);
            p.device.free_memory(b.memory, None);
        }
    }
    Ok(())
}
