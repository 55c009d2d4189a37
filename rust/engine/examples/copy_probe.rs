//! Copy probe: how fast device-to-device copy kernels run on device 0, next to vkCmdCopyBuffer,
//! with no engine in between. It answers which kernel and dispatch shape the engine's compute copy
//! (`shaders/copy.comp`, recorded by `src/compute.rs`) should use: the engine's kernel at several
//! group counts and workgroup sizes, one element per invocation, deeper grid-stride loops,
//! block-stride loops, 8-byte elements, `coherent` buffers and nontemporal accesses.
//!
//! `cargo run --release --example copy_probe [MiB] [d2d|h2d|d2h] [cached]` (default 1024 d2d;
//! `h2d` puts the source in host memory, `d2h` the destination, to time the same kernels across
//! PCIe; `cached` picks a HOST_CACHED host memory type). Every row copies the whole source buffer
//! to the destination buffer on the universal queue. It is checked once (the whole destination on
//! the GPU against the pattern written into the source, three windows also on the host), then
//! timed: one warm-up, then `RUNS` submissions. GB/s = bytes copied / seconds / 1e9,
//! from GPU timestamps (median and best) and from wall time (submit to fence, median). Prints one
//! table. The variant shaders are GLSL in `examples/copy_probe/`, with their SPIR-V next to them
//! (`examples/copy_probe/build.sh` regenerates it); the engine's own kernel is taken from
//! `shaders/copy_spv.rs`.

use std::collections::HashSet;
use std::io::Write;
use std::time::Instant;

use ash::vk;

#[path = "../shaders/copy_spv.rs"]
mod engine_spv;

#[path = "probe_common/mod.rs"]
mod probe_common;
use probe_common::{first_device, memory_type, Buf, Res};

/// The engine's compute-pipeline setup (the probe times kernels set up exactly as the engine's).
#[path = "../src/pipeline_setup.rs"]
mod pipeline_setup;
use pipeline_setup::{create_compute_pipeline, create_layouts};

/// Timed submissions per row (after one warm-up).
const RUNS: usize = 10;
/// Bytes of the check result (mismatch count, lowest mismatching index) at the readback's start;
/// the host windows follow at `WINDOWS_AT`.
const WINDOWS_AT: u64 = 256;
/// Assumed SM count when VK_NV_shader_sm_builtins does not say (H200: 132).
const DEFAULT_SMS: u64 = 132;

const ONE: &[u8] = include_bytes!("copy_probe/one.spv");
const GS4: &[u8] = include_bytes!("copy_probe/gs4_spec.spv");
const GS4C: &[u8] = include_bytes!("copy_probe/gs4_coherent.spv");
const GS8: &[u8] = include_bytes!("copy_probe/gs8.spv");
const GS8U2: &[u8] = include_bytes!("copy_probe/gs8_u2.spv");
const GS16U: &[u8] = include_bytes!("copy_probe/gs16u.spv");
const BLOCK4: &[u8] = include_bytes!("copy_probe/block4.spv");
const RUN4: &[u8] = include_bytes!("copy_probe/run4.spv");
const FILL: &[u8] = include_bytes!("copy_probe/fill.spv");
const CHECK: &[u8] = include_bytes!("copy_probe/check.spv");

/// Where a row's kernel comes from.
#[derive(Clone, Copy)]
enum Code {
    /// vkCmdCopyBuffer of the whole buffer, no kernel.
    CopyBuffer,
    /// The engine's kernel (`shaders/copy_spv.rs`), local size fixed at 256.
    CopyComp,
    /// An `examples/copy_probe/*.spv`, local size from specialization constant 0.
    File(&'static [u8]),
}

/// How a row's dispatch follows from the copy's `n` elements.
#[derive(Clone, Copy)]
enum Shape {
    /// What `compute.rs` does: ceil(n / 256) groups, clamped to [1, min(limit, 65535)].
    EngineGroups,
    /// ceil(n / (local * loads)) groups: each invocation makes one pass of its `loads` loads.
    Pass(u64),
    /// SMs * k groups (grid-stride).
    Sm(u64),
    /// ceil(n / local) groups, one element per invocation: 1D where maxComputeWorkGroupCount[0]
    /// allows, else 2D.
    Cover,
    /// The same as a 2D grid of this many groups per row.
    Cover2d(u64),
    /// Block-stride: blocks of B elements (a multiple of 4 * local), B chosen for about SMs * k
    /// groups; B is passed in the push constants' `param`.
    Block(u64),
}

struct Variant {
    name: &'static str,
    code: Code,
    local: u32,
    /// Bytes per shader element.
    elem: u64,
    nontemporal: bool,
    shape: Shape,
}

const fn var(name: &'static str, code: Code, local: u32, shape: Shape) -> Variant {
    Variant {
        name,
        code,
        local,
        elem: 16,
        nontemporal: false,
        shape,
    }
}

const fn nt(mut v: Variant) -> Variant {
    v.nontemporal = true;
    v
}

const fn uvec2(mut v: Variant) -> Variant {
    v.elem = 8;
    v
}

fn variants() -> Vec<Variant> {
    use Code::*;
    use Shape::*;
    vec![
        var("vkCmdCopyBuffer", CopyBuffer, 0, EngineGroups),
        // a. The engine's kernel as it is, at the engine's and other group counts.
        var("copy.comp", CopyComp, 256, EngineGroups),
        var("copy.comp", CopyComp, 256, Pass(4)),
        var("copy.comp", CopyComp, 256, Sm(8)),
        var("copy.comp", CopyComp, 256, Sm(16)),
        var("copy.comp", CopyComp, 256, Sm(32)),
        var("copy.comp", CopyComp, 256, Sm(64)),
        nt(var("copy.comp+nt", CopyComp, 256, EngineGroups)),
        // The same kernel at other workgroup sizes.
        var("gs4", File(GS4), 128, Pass(4)),
        var("gs4", File(GS4), 512, Pass(4)),
        var("gs4", File(GS4), 1024, Pass(4)),
        var("gs4", File(GS4), 1024, Sm(2)),
        var("gs4", File(GS4), 1024, Sm(8)),
        // b. One uvec4 per invocation, no loop.
        var("one", File(ONE), 128, Cover),
        var("one", File(ONE), 256, Cover),
        var("one", File(ONE), 512, Cover),
        var("one", File(ONE), 1024, Cover),
        var("one", File(ONE), 256, Cover2d(1000)),
        nt(var("one+nt", File(ONE), 256, Cover)),
        // c. Grid-stride, eight loads in flight.
        var("gs8", File(GS8), 256, Pass(8)),
        var("gs8", File(GS8), 256, Sm(16)),
        var("gs8", File(GS8), 256, Sm(32)),
        var("gs8", File(GS8), 512, Pass(8)),
        nt(var("gs8+nt", File(GS8), 256, Pass(8))),
        // d. Block-stride.
        var("block4", File(BLOCK4), 256, Block(4)),
        var("block4", File(BLOCK4), 256, Block(16)),
        var("block4", File(BLOCK4), 256, Block(64)),
        var("block4", File(BLOCK4), 1024, Block(16)),
        nt(var("block4+nt", File(BLOCK4), 256, Block(16))),
        var("run4", File(RUN4), 256, Block(16)),
        // e. Sixteen loads through [[unroll]], `coherent` buffers, 8-byte elements.
        var("gs16u", File(GS16U), 256, Pass(16)),
        var("gs16u", File(GS16U), 256, Sm(16)),
        var("gs4c", File(GS4C), 256, Pass(4)),
        var("gs4c", File(GS4C), 256, Sm(16)),
        uvec2(var("gs8u2", File(GS8U2), 256, Pass(8))),
        uvec2(var("gs8u2", File(GS8U2), 256, Sm(32))),
    ]
}

/// A dispatch: groups in x and y, and the push constants' `param`.
struct Plan {
    gx: u32,
    gy: u32,
    param: u32,
}

/// Work out `shape` for `n` elements; `Err` says why the device cannot run it.
fn plan(shape: Shape, n: u64, local: u64, sms: u64, limit: [u32; 3]) -> Result<Plan, String> {
    let (lx, ly) = (u64::from(limit[0]), u64::from(limit[1]));
    let grid = |groups: u64, width: u64| -> Result<Plan, String> {
        let width = width.min(lx);
        let rows = groups.div_ceil(width);
        if rows > ly {
            return Err(format!("{groups} groups exceed the device's {lx} x {ly}"));
        }
        Ok(Plan {
            gx: groups.min(width) as u32,
            gy: rows as u32,
            param: 0,
        })
    };
    let flat = |groups: u64| Plan {
        gx: groups.clamp(1, lx) as u32,
        gy: 1,
        param: 0,
    };
    Ok(match shape {
        Shape::EngineGroups => flat(n.div_ceil(256).min(65_535)),
        Shape::Pass(loads) => flat(n.div_ceil(local * loads)),
        Shape::Sm(k) => flat(sms * k),
        Shape::Cover => grid(n.div_ceil(local), lx)?,
        Shape::Cover2d(width) => grid(n.div_ceil(local), width)?,
        Shape::Block(k) => {
            let block = n.div_ceil(sms * k).next_multiple_of(4 * local);
            let groups = n.div_ceil(block);
            if groups > lx {
                return Err(format!("{groups} groups exceed the device's {lx}"));
            }
            Plan {
                gx: groups as u32,
                gy: 1,
                param: block as u32,
            }
        }
    })
}

fn shape_label(shape: Shape) -> String {
    match shape {
        Shape::EngineGroups => "engine groups".into(),
        Shape::Pass(_) => "one pass".into(),
        Shape::Sm(k) => format!("sm*{k}"),
        Shape::Cover => "1 elem/inv".into(),
        Shape::Cover2d(_) => "1 elem/inv, 2D".into(),
        Shape::Block(k) => format!("block, sm*{k}"),
    }
}

/// SPIR-V words of an embedded `.spv` (copied, so aligned).
fn words(bytes: &[u8]) -> Res<Vec<u32>> {
    Ok(ash::util::read_spv(&mut std::io::Cursor::new(bytes))?)
}

/// `words` with the Nontemporal memory operand on every load and store through a storage buffer
/// (GLSL cannot say it). Errs when there was none to mark.
fn nontemporal(words: &[u32]) -> Res<Vec<u32>> {
    const VARIABLE: u32 = 59;
    const LOAD: u32 = 61;
    const STORE: u32 = 62;
    const ACCESS_CHAIN: u32 = 65;
    const IN_BOUNDS_ACCESS_CHAIN: u32 = 66;
    const STORAGE_BUFFER: u32 = 12;
    const NONTEMPORAL: u32 = 0x4;
    if words.len() < 5 {
        return Err("SPIR-V too short".into());
    }
    // Ids of storage-buffer variables and of pointers into them.
    let mut ssbo = HashSet::new();
    let mut out = words[..5].to_vec();
    let mut marked = 0;
    let mut at = 5;
    while at < words.len() {
        let count = (words[at] >> 16) as usize;
        let op = words[at] & 0xffff;
        if count == 0 || at + count > words.len() {
            return Err("malformed SPIR-V".into());
        }
        let ins = &words[at..at + count];
        // Index of the memory-operand mask of a load/store through a storage buffer.
        let mask_at = match op {
            VARIABLE if count >= 4 && ins[3] == STORAGE_BUFFER => {
                ssbo.insert(ins[2]);
                None
            }
            ACCESS_CHAIN | IN_BOUNDS_ACCESS_CHAIN if count >= 4 && ssbo.contains(&ins[3]) => {
                ssbo.insert(ins[2]);
                None
            }
            LOAD if count >= 4 && ssbo.contains(&ins[3]) => Some(4),
            STORE if count >= 3 && ssbo.contains(&ins[1]) => Some(3),
            _ => None,
        };
        match mask_at {
            Some(m) if count > m => {
                let start = out.len();
                out.extend_from_slice(ins);
                out[start + m] |= NONTEMPORAL;
                marked += 1;
            }
            Some(_) => {
                out.push(((count as u32 + 1) << 16) | op);
                out.extend_from_slice(&ins[1..]);
                out.push(NONTEMPORAL);
                marked += 1;
            }
            None => out.extend_from_slice(ins),
        }
        at += count;
    }
    if marked == 0 {
        return Err("no storage-buffer access to mark nontemporal".into());
    }
    Ok(out)
}

/// The check pattern of element `i` (fill.comp and check.comp compute the same).
fn pattern(i: u32, seed: u32) -> [u32; 4] {
    [
        i ^ seed,
        i.wrapping_mul(0x9e37_79b1).wrapping_add(seed),
        !i,
        seed ^ 0xa5a5_a5a5,
    ]
}

/// What one copy records: a kernel dispatch or vkCmdCopyBuffer.
enum Op {
    Kernel {
        pipeline: vk::Pipeline,
        plan: Plan,
        push: [u32; 4],
    },
    CopyBuffer,
}

struct Gpu {
    device: ash::Device,
    queue: vk::Queue,
    pool: vk::CommandPool,
    fence: vk::Fence,
    /// Timestamp query pool (two queries) and nanoseconds per tick; `None` without timestamps.
    timer: Option<(vk::QueryPool, f64, u64)>,
    layout: vk::PipelineLayout,
    /// Descriptor sets: copy (src, dst), fill (-, src), check (dst, result).
    sets: [vk::DescriptorSet; 3],
    fill: vk::Pipeline,
    check: vk::Pipeline,
    /// Groups for fill/check (grid-stride, local size 256).
    util_groups: u32,
    src: Buf,
    dst: Buf,
    result: Buf,
    readback: Buf,
    mapped: *const u8,
    size: u64,
    /// Offsets of the host-checked windows of dst, and their length.
    windows: [u64; 3],
    window: u64,
}

impl Gpu {
    fn buffer(
        device: &ash::Device,
        props: &vk::PhysicalDeviceMemoryProperties,
        size: u64,
        usage: vk::BufferUsageFlags,
        want: vk::MemoryPropertyFlags,
        avoid: vk::MemoryPropertyFlags,
    ) -> Res<Buf> {
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(usage)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: valid device and create info.
        let buffer = unsafe { device.create_buffer(&info, None)? };
        // SAFETY: the buffer was just created on this device.
        let req = unsafe { device.get_buffer_memory_requirements(buffer) };
        let index = memory_type(props, req.memory_type_bits, want, avoid)?;
        if size >= 1 << 20 {
            let flags = props.memory_types[index as usize].property_flags;
            println!(
                "{} MiB buffer in memory type {index}: {flags:?}",
                size >> 20
            );
        }
        let mut dedicated = vk::MemoryDedicatedAllocateInfo::default().buffer(buffer);
        let alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(index)
            .push_next(&mut dedicated);
        // SAFETY: valid allocate info (dedicated to the buffer, Vulkan 1.1); freed at the end.
        let memory = unsafe { device.allocate_memory(&alloc, None) }
            .map_err(|e| format!("allocating {} MiB: {e}", size >> 20))?;
        // SAFETY: fresh buffer and memory of a type it accepts, offset 0.
        unsafe { device.bind_buffer_memory(buffer, memory, 0)? };
        Ok(Buf { buffer, memory })
    }

    /// A compute pipeline of `code`, with specialization constant 0 = `local` where given.
    fn pipeline(&self, code: &[u32], local: Option<u32>) -> Res<(vk::ShaderModule, vk::Pipeline)> {
        let entries = [vk::SpecializationMapEntry {
            constant_id: 0,
            offset: 0,
            size: 4,
        }];
        let data = local.unwrap_or(0).to_ne_bytes();
        let spec = vk::SpecializationInfo::default()
            .map_entries(&entries)
            .data(&data);
        // SAFETY: valid device; `self.layout` was made on it for these kernels' interface (two
        // storage buffers, 16 bytes of push constants); `code` is SPIR-V (checked by the driver).
        unsafe { create_compute_pipeline(&self.device, self.layout, code, local.map(|_| &spec)) }
            .map_err(|e| format!("vkCreateComputePipelines: {e}").into())
    }

    /// A recorded primary command buffer (free it with `free`).
    fn record(&self, body: impl FnOnce(vk::CommandBuffer)) -> Res<vk::CommandBuffer> {
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(self.pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: the pool belongs to this device and is used from this thread only.
        unsafe {
            let cmd = self.device.allocate_command_buffers(&alloc)?[0];
            self.device
                .begin_command_buffer(cmd, &vk::CommandBufferBeginInfo::default())?;
            body(cmd);
            self.device.end_command_buffer(cmd)?;
            Ok(cmd)
        }
    }

    /// Free `cmd` once its submissions finished; after a failed submission or wait it may still
    /// be pending, so it is left allocated (the probe exits soon after).
    fn free(&self, cmd: vk::CommandBuffer, waited: bool) {
        if !waited {
            return;
        }
        // SAFETY: every submission of `cmd` was waited for (`waited`).
        unsafe { self.device.free_command_buffers(self.pool, &[cmd]) };
    }

    /// Submit `cmd`, wait for it; seconds from submission to the fence.
    fn submit(&self, cmd: vk::CommandBuffer) -> Res<f64> {
        let d = &self.device;
        let c = [cmd];
        let submit = vk::SubmitInfo::default().command_buffers(&c);
        // SAFETY: the fence is unsignalled and unused (each submission is waited for and the
        // fence reset); `cmd` is recorded and not pending; the queue is used from this thread.
        unsafe {
            let start = Instant::now();
            d.queue_submit(self.queue, &[submit], self.fence)?;
            d.wait_for_fences(&[self.fence], true, 30_000_000_000)
                .map_err(|e| format!("waiting for the GPU: {e}"))?;
            let secs = start.elapsed().as_secs_f64();
            d.reset_fences(&[self.fence])?;
            Ok(secs)
        }
    }

    /// Make compute/transfer writes visible to later compute/transfer work (or the host).
    fn barrier(&self, cmd: vk::CommandBuffer, host: bool) {
        let (stage, access) = if host {
            (vk::PipelineStageFlags::HOST, vk::AccessFlags::HOST_READ)
        } else {
            (
                vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER,
                vk::AccessFlags::SHADER_READ
                    | vk::AccessFlags::SHADER_WRITE
                    | vk::AccessFlags::TRANSFER_READ
                    | vk::AccessFlags::TRANSFER_WRITE,
            )
        };
        let barrier = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::SHADER_WRITE | vk::AccessFlags::TRANSFER_WRITE)
            .dst_access_mask(access)];
        // SAFETY: recording state; a global memory barrier outside any render pass.
        unsafe {
            self.device.cmd_pipeline_barrier(
                cmd,
                vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER,
                stage,
                vk::DependencyFlags::empty(),
                &barrier,
                &[],
                &[],
            );
        }
    }

    /// Record `pipeline` with descriptor set `set`, push constants and a dispatch.
    fn dispatch(
        &self,
        cmd: vk::CommandBuffer,
        pipeline: vk::Pipeline,
        set: usize,
        push: [u32; 4],
        (gx, gy): (u32, u32),
    ) {
        let d = &self.device;
        let bytes: Vec<u8> = push.iter().flat_map(|c| c.to_ne_bytes()).collect();
        // SAFETY: recording state; the pipeline and set use `self.layout`, whose push-constant
        // range is these 16 bytes; the set's buffers are live.
        unsafe {
            d.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, pipeline);
            d.cmd_bind_descriptor_sets(
                cmd,
                vk::PipelineBindPoint::COMPUTE,
                self.layout,
                0,
                &[self.sets[set]],
                &[],
            );
            d.cmd_push_constants(cmd, self.layout, vk::ShaderStageFlags::COMPUTE, 0, &bytes);
            d.cmd_dispatch(cmd, gx, gy, 1);
        }
    }

    /// Record the copy of the whole src to dst.
    fn copy(&self, cmd: vk::CommandBuffer, op: &Op) {
        match op {
            Op::Kernel {
                pipeline,
                plan,
                push,
            } => self.dispatch(cmd, *pipeline, 0, *push, (plan.gx, plan.gy)),
            Op::CopyBuffer => {
                let region = [vk::BufferCopy {
                    src_offset: 0,
                    dst_offset: 0,
                    size: self.size,
                }];
                // SAFETY: recording state; the region is both buffers' whole size.
                unsafe {
                    self.device
                        .cmd_copy_buffer(cmd, self.src.buffer, self.dst.buffer, &region)
                };
            }
        }
    }

    /// Fill src with the pattern of `seed`, clear dst, copy, check: "ok" or what went wrong.
    fn verify(&self, op: &Op, seed: u32) -> Res<String> {
        let d = &self.device;
        let n = (self.size / 16) as u32;
        let push = [0, 0, n, seed];
        let groups = (self.util_groups, 1);
        let cmd = self.record(|cmd| {
            self.barrier(cmd, false);
            self.dispatch(cmd, self.fill, 1, push, groups);
            // SAFETY: recording state; in-bounds fills of live buffers with TRANSFER_DST usage.
            unsafe {
                d.cmd_fill_buffer(cmd, self.dst.buffer, 0, vk::WHOLE_SIZE, 0);
                d.cmd_fill_buffer(cmd, self.result.buffer, 0, 4, 0);
                d.cmd_fill_buffer(cmd, self.result.buffer, 4, 4, u32::MAX);
            }
            self.barrier(cmd, false);
            self.copy(cmd, op);
            self.barrier(cmd, false);
            self.dispatch(cmd, self.check, 2, push, groups);
            self.barrier(cmd, false);
            let mut regions = vec![vk::BufferCopy {
                src_offset: 0,
                dst_offset: 0,
                size: 8,
            }];
            for (k, &at) in self.windows.iter().enumerate() {
                regions.push(vk::BufferCopy {
                    src_offset: at,
                    dst_offset: WINDOWS_AT + k as u64 * self.window,
                    size: self.window,
                });
            }
            // SAFETY: recording state; the result copy and the window copies are in bounds and
            // go to disjoint parts of the readback buffer.
            unsafe {
                d.cmd_copy_buffer(cmd, self.result.buffer, self.readback.buffer, &regions[..1]);
                d.cmd_copy_buffer(cmd, self.dst.buffer, self.readback.buffer, &regions[1..]);
            }
            self.barrier(cmd, true);
        })?;
        let waited = self.submit(cmd);
        self.free(cmd, waited.is_ok());
        waited?;
        let len = (WINDOWS_AT + 3 * self.window) as usize;
        // SAFETY: the readback buffer is mapped (host-coherent) over its whole size, and the GPU
        // finished writing it (fence waited, host barrier recorded).
        let data = unsafe { std::slice::from_raw_parts(self.mapped, len) };
        let word =
            |at: usize| u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let (bad, first) = (word(0), word(4));
        let mut host_bad = 0u64;
        for (k, &at) in self.windows.iter().enumerate() {
            let base = WINDOWS_AT as usize + k * self.window as usize;
            for e in 0..(self.window / 16) as usize {
                let i = (at / 16) as u32 + e as u32;
                let want = pattern(i, seed);
                if (0..4).any(|c| word(base + 16 * e + 4 * c) != want[c]) {
                    host_bad += 1;
                }
            }
        }
        Ok(if bad == 0 && host_bad == 0 {
            "ok".into()
        } else {
            format!("MISMATCH ({bad} elements, first {first}; host windows {host_bad})")
        })
    }

    /// Warm up once, then time `RUNS` copies: (GPU seconds, if timestamps work; wall seconds).
    fn time(&self, op: &Op) -> Res<(Vec<f64>, Vec<f64>)> {
        let d = &self.device;
        let cmd = self.record(|cmd| {
            // Orders this run's writes after the previous run's.
            self.barrier(cmd, false);
            // SAFETY: recording state; two timestamp queries of a live pool, reset before use.
            unsafe {
                if let Some((pool, ..)) = self.timer {
                    d.cmd_reset_query_pool(cmd, pool, 0, 2);
                    d.cmd_write_timestamp(cmd, vk::PipelineStageFlags::TOP_OF_PIPE, pool, 0);
                }
                self.copy(cmd, op);
                if let Some((pool, ..)) = self.timer {
                    d.cmd_write_timestamp(cmd, vk::PipelineStageFlags::BOTTOM_OF_PIPE, pool, 1);
                }
            }
        })?;
        let timed = (|| -> Res<(Vec<f64>, Vec<f64>)> {
            let (mut gpu, mut wall) = (Vec::new(), Vec::new());
            for run in 0..=RUNS {
                let secs = self.submit(cmd)?;
                let mut ticks = [0u64; 2];
                if let Some((pool, period, mask)) = self.timer {
                    // SAFETY: both queries were written by the finished submission.
                    unsafe {
                        d.get_query_pool_results(
                            pool,
                            0,
                            &mut ticks,
                            vk::QueryResultFlags::TYPE_64 | vk::QueryResultFlags::WAIT,
                        )?
                    };
                    if run > 0 {
                        gpu.push((ticks[1].wrapping_sub(ticks[0]) & mask) as f64 * period * 1e-9);
                    }
                }
                if run > 0 {
                    wall.push(secs);
                }
            }
            Ok((gpu, wall))
        })();
        self.free(cmd, timed.is_ok());
        timed
    }
}

/// (median, best) of `secs`, as GB/s of `bytes`; `None` when empty.
fn rates(bytes: u64, mut secs: Vec<f64>) -> Option<(f64, f64)> {
    if secs.is_empty() || secs.iter().any(|s| *s <= 0.0) {
        return None;
    }
    secs.sort_by(f64::total_cmp);
    let m = secs.len() / 2;
    let median = if secs.len() % 2 == 0 {
        (secs[m - 1] + secs[m]) / 2.0
    } else {
        secs[m]
    };
    let gbs = |s: f64| bytes as f64 / s / 1e9;
    Some((gbs(median), gbs(secs[0])))
}

fn main() {
    if let Err(e) = run() {
        eprintln!("copy_probe: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let started = Instant::now();
    let mut mib: u64 = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .ok()
            .filter(|&m| m > 0)
            .ok_or("the first argument is the buffer size in MiB (a positive integer)")?,
        None => 1024,
    };
    // Where the two buffers live: both in device memory, or one in host memory (HOST_VISIBLE
    // and not DEVICE_LOCAL, as the engine's pinned host buffers and staging are), so that the
    // same kernels and vkCmdCopyBuffer move bytes across PCIe; `cached` asks for a HOST_CACHED
    // host type (the engine's upload staging prefers one).
    let (src_in_host, dst_in_host) = match std::env::args().nth(2).as_deref() {
        None | Some("d2d") => (false, false),
        Some("h2d") => (true, false),
        Some("d2h") => (false, true),
        Some(_) => return Err("the second argument is d2d (default), h2d or d2h".into()),
    };
    let cached = match std::env::args().nth(3).as_deref() {
        None => false,
        Some("cached") => true,
        Some(_) => return Err("the third argument, if any, is `cached`".into()),
    };
    let (_entry, instance, physical) = first_device()?;
    // SAFETY: valid physical device.
    let (families, mem_props, dprops, extensions) = unsafe {
        (
            instance.get_physical_device_queue_family_properties(physical),
            instance.get_physical_device_memory_properties(physical),
            instance.get_physical_device_properties(physical),
            instance.enumerate_device_extension_properties(physical)?,
        )
    };
    if dprops.api_version < vk::API_VERSION_1_1 {
        return Err("the device does not support Vulkan 1.1".into());
    }
    let limits = dprops.limits;
    let has_sm = extensions
        .iter()
        .any(|e| e.extension_name_as_c_str() == Ok(ash::nv::shader_sm_builtins::NAME));
    let sms = if has_sm {
        let mut sm = vk::PhysicalDeviceShaderSMBuiltinsPropertiesNV::default();
        let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut sm);
        // SAFETY: Vulkan 1.1 device supporting VK_NV_shader_sm_builtins; valid chain.
        unsafe { instance.get_physical_device_properties2(physical, &mut props2) };
        Some(u64::from(sm.shader_sm_count)).filter(|&n| n > 0)
    } else {
        None
    };
    let family = families
        .iter()
        .position(|f| {
            f.queue_flags
                .contains(vk::QueueFlags::GRAPHICS | vk::QueueFlags::COMPUTE)
        })
        .ok_or("no graphics+compute queue family")? as u32;
    println!(
        "device: {:?}, driver {:#x}, Vulkan {}.{}",
        dprops.device_name_as_c_str().unwrap_or_default(),
        dprops.driver_version,
        vk::api_version_major(dprops.api_version),
        vk::api_version_minor(dprops.api_version)
    );
    println!(
        "SMs: {}; maxComputeWorkGroupCount {:?}; maxComputeWorkGroupSize[0] {}; \
         maxStorageBufferRange {}; timestampPeriod {} ns; queue family {family}",
        match sms {
            Some(n) => format!("{n} (VK_NV_shader_sm_builtins)"),
            None => format!("{DEFAULT_SMS} (assumed)"),
        },
        limits.max_compute_work_group_count,
        limits.max_compute_work_group_size[0],
        limits.max_storage_buffer_range,
        limits.timestamp_period
    );
    let sms = sms.unwrap_or(DEFAULT_SMS);
    // Every row binds each buffer whole, so one buffer may not exceed the binding limit.
    let fits = u64::from(limits.max_storage_buffer_range) >> 20;
    if mib > fits {
        if fits == 0 {
            return Err("maxStorageBufferRange is below 1 MiB".into());
        }
        println!("note: {mib} MiB exceeds maxStorageBufferRange; using {fits} MiB");
        mib = fits;
    }
    let size = mib << 20;
    let priorities = [1.0f32];
    let queue_info = [vk::DeviceQueueCreateInfo::default()
        .queue_family_index(family)
        .queue_priorities(&priorities)];
    // SAFETY: valid create info (no extensions or features needed).
    let device = unsafe {
        instance.create_device(
            physical,
            &vk::DeviceCreateInfo::default().queue_create_infos(&queue_info),
            None,
        )
    }
    .map_err(|e| format!("vkCreateDevice: {e}"))?;
    // SAFETY: requested at device creation.
    let queue = unsafe { device.get_device_queue(family, 0) };

    let storage = vk::BufferUsageFlags::STORAGE_BUFFER
        | vk::BufferUsageFlags::TRANSFER_SRC
        | vk::BufferUsageFlags::TRANSFER_DST;
    let local = vk::MemoryPropertyFlags::DEVICE_LOCAL;
    let visible = vk::MemoryPropertyFlags::HOST_VISIBLE;
    let mut host = visible | vk::MemoryPropertyFlags::HOST_COHERENT;
    if cached {
        host |= vk::MemoryPropertyFlags::HOST_CACHED;
    }
    let place = |in_host: bool| {
        if in_host {
            (host, local)
        } else {
            (local, visible)
        }
    };
    let ((src_want, src_avoid), (dst_want, dst_avoid)) = (place(src_in_host), place(dst_in_host));
    let src = Gpu::buffer(&device, &mem_props, size, storage, src_want, src_avoid)?;
    let dst = Gpu::buffer(&device, &mem_props, size, storage, dst_want, dst_avoid)?;
    let result = Gpu::buffer(&device, &mem_props, 256, storage, local, visible)?;
    let window = (size / 4).min(1 << 20) / 16 * 16;
    let readback = Gpu::buffer(
        &device,
        &mem_props,
        WINDOWS_AT + 3 * window,
        vk::BufferUsageFlags::TRANSFER_DST,
        visible | vk::MemoryPropertyFlags::HOST_COHERENT,
        local,
    )?;
    // SAFETY: host-visible memory, mapped once over its whole size until the end.
    let mapped = unsafe {
        device.map_memory(
            readback.memory,
            0,
            vk::WHOLE_SIZE,
            vk::MemoryMapFlags::empty(),
        )?
    }
    .cast::<u8>()
    .cast_const();

    let pool_sizes = [vk::DescriptorPoolSize {
        ty: vk::DescriptorType::STORAGE_BUFFER,
        descriptor_count: 6,
    }];
    // SAFETY: valid device and create infos; every object is destroyed at the end.
    let (set_layout, layout, descriptor_pool, pool, fence) = unsafe {
        let (set_layout, layout) = create_layouts(&device, false, 16)?;
        let descriptor_pool = device.create_descriptor_pool(
            &vk::DescriptorPoolCreateInfo::default()
                .max_sets(3)
                .pool_sizes(&pool_sizes),
            None,
        )?;
        let pool = device.create_command_pool(
            &vk::CommandPoolCreateInfo::default().queue_family_index(family),
            None,
        )?;
        let fence = device.create_fence(&vk::FenceCreateInfo::default(), None)?;
        (set_layout, layout, descriptor_pool, pool, fence)
    };
    let set_layouts = [set_layout; 3];
    // SAFETY: the pool has room for three sets of this layout.
    let sets = unsafe {
        device.allocate_descriptor_sets(
            &vk::DescriptorSetAllocateInfo::default()
                .descriptor_pool(descriptor_pool)
                .set_layouts(&set_layouts),
        )?
    };
    let sets = [sets[0], sets[1], sets[2]];
    let info = |b: &Buf, range: u64| {
        [vk::DescriptorBufferInfo::default()
            .buffer(b.buffer)
            .offset(0)
            .range(range)]
    };
    let infos = [
        [info(&src, size), info(&dst, size)],
        [info(&dst, size), info(&src, size)],
        [info(&dst, size), info(&result, 8)],
    ];
    let mut writes = Vec::new();
    for (s, pair) in infos.iter().enumerate() {
        for (b, i) in pair.iter().enumerate() {
            writes.push(
                vk::WriteDescriptorSet::default()
                    .dst_set(sets[s])
                    .dst_binding(b as u32)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(i),
            );
        }
    }
    // SAFETY: the sets are unused; the ranges lie within live buffers with STORAGE usage and
    // within maxStorageBufferRange (checked above).
    unsafe { device.update_descriptor_sets(&writes, &[]) };
    let timer = if families[family as usize].timestamp_valid_bits > 0 {
        let bits = families[family as usize].timestamp_valid_bits;
        let mask = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let info = vk::QueryPoolCreateInfo::default()
            .query_type(vk::QueryType::TIMESTAMP)
            .query_count(2);
        // SAFETY: valid create info; destroyed at the end.
        let qp = unsafe { device.create_query_pool(&info, None)? };
        Some((qp, f64::from(limits.timestamp_period), mask))
    } else {
        println!("note: the queue has no timestamps; only wall times");
        None
    };
    let util_groups = (size / 16).div_ceil(256).clamp(
        1,
        u64::from(limits.max_compute_work_group_count[0]).min(65_535),
    ) as u32;
    let mut gpu = Gpu {
        device,
        queue,
        pool,
        fence,
        timer,
        layout,
        sets,
        fill: vk::Pipeline::null(),
        check: vk::Pipeline::null(),
        util_groups,
        src,
        dst,
        result,
        readback,
        mapped,
        size,
        windows: [0, size / 2 / 16 * 16, size - window],
        window,
    };
    let (fill_module, fill) = gpu.pipeline(&words(FILL)?, None)?;
    let (check_module, check) = gpu.pipeline(&words(CHECK)?, None)?;
    gpu.fill = fill;
    gpu.check = check;

    println!(
        "\n{mib} MiB copied per run from {} to {} memory; {RUNS} runs after a warm-up; \
         GB/s = bytes copied / s / 1e9\n",
        if src_in_host { "host" } else { "device" },
        if dst_in_host { "host" } else { "device" },
    );
    println!(
        "| variant | groups | local_size | GB/s(median) | GB/s(best) | wall GB/s(median) | check |"
    );
    println!("|---|---|---|---|---|---|---|");
    // Whole GB/s on a GPU; three significant digits on a slow (CPU) device.
    let num = |x: f64| match x {
        x if x >= 100.0 => format!("{x:.0}"),
        x if x >= 10.0 => format!("{x:.1}"),
        x => format!("{x:.2}"),
    };
    let fmt = |r: Option<(f64, f64)>| match r {
        Some((m, b)) => (num(m), num(b)),
        None => ("-".into(), "-".into()),
    };
    for (row, v) in variants().iter().enumerate() {
        let name = match v.code {
            Code::CopyBuffer => v.name.to_string(),
            _ => format!("{} ({})", v.name, shape_label(v.shape)),
        };
        let seed = (row as u32 + 1).wrapping_mul(0x2545_f491);
        let skip =
            |why: String| println!("| {name} | - | {} | - | - | - | skipped: {why} |", v.local);
        let (op, module, groups) = match v.code {
            Code::CopyBuffer => (Op::CopyBuffer, None, "-".to_string()),
            Code::CopyComp | Code::File(_) => {
                if v.local > limits.max_compute_work_group_size[0]
                    || v.local > limits.max_compute_work_group_invocations
                {
                    skip("local_size above the device's limit".into());
                    continue;
                }
                let n = size / v.elem;
                let plan = match plan(
                    v.shape,
                    n,
                    u64::from(v.local),
                    sms,
                    limits.max_compute_work_group_count,
                ) {
                    Ok(p) => p,
                    Err(why) => {
                        skip(why);
                        continue;
                    }
                };
                let (code, local) = match v.code {
                    Code::File(bytes) => (words(bytes)?, Some(v.local)),
                    _ => (engine_spv::COPY_SPV.to_vec(), None),
                };
                let code = if v.nontemporal {
                    nontemporal(&code)?
                } else {
                    code
                };
                let (module, pipeline) = match gpu.pipeline(&code, local) {
                    Ok(p) => p,
                    Err(why) => {
                        skip(why.to_string());
                        continue;
                    }
                };
                let groups = if plan.gy > 1 {
                    format!("{}x{}", plan.gx, plan.gy)
                } else {
                    plan.gx.to_string()
                };
                let push = [0, 0, n as u32, plan.param];
                (
                    Op::Kernel {
                        pipeline,
                        plan,
                        push,
                    },
                    Some(module),
                    groups,
                )
            }
        };
        let checked = gpu.verify(&op, seed)?;
        let (gpu_secs, wall_secs) = gpu.time(&op)?;
        let (med, best) = fmt(rates(size, gpu_secs));
        let (wall, _) = fmt(rates(size, wall_secs));
        let local = match v.code {
            Code::CopyBuffer => "-".to_string(),
            _ => v.local.to_string(),
        };
        println!("| {name} | {groups} | {local} | {med} | {best} | {wall} | {checked} |");
        std::io::stdout().flush()?;
        if let Op::Kernel { pipeline, .. } = op {
            // SAFETY: every submission using the pipeline was waited for.
            unsafe {
                gpu.device.destroy_pipeline(pipeline, None);
                if let Some(m) = module {
                    gpu.device.destroy_shader_module(m, None);
                }
            }
        }
    }
    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
    // SAFETY: every submission was waited for; the process exits after this.
    unsafe {
        let d = &gpu.device;
        d.device_wait_idle()?;
        d.destroy_pipeline(gpu.fill, None);
        d.destroy_pipeline(gpu.check, None);
        d.destroy_shader_module(fill_module, None);
        d.destroy_shader_module(check_module, None);
        if let Some((qp, ..)) = gpu.timer {
            d.destroy_query_pool(qp, None);
        }
        d.destroy_fence(gpu.fence, None);
        d.destroy_command_pool(gpu.pool, None);
        d.destroy_descriptor_pool(descriptor_pool, None);
        d.destroy_pipeline_layout(gpu.layout, None);
        d.destroy_descriptor_set_layout(set_layout, None);
        for b in [&gpu.src, &gpu.dst, &gpu.result, &gpu.readback] {
            d.destroy_buffer(b.buffer, None);
            d.free_memory(b.memory, None);
        }
        d.destroy_device(None);
        instance.destroy_instance(None);
    }
    Ok(())
}
