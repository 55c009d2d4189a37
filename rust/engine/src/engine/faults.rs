//! Fault injection (feature `fault-injection`): a panic inside the engine, a hung device and a
//! lost device, as the reliability tests provoke them.

use crate::error::Result;

use super::Engine;

impl Engine {
    /// Panic inside the engine.
    pub fn inject_panic(&self) -> Result<()> {
        self.call(|_| -> Result<()> { panic!("injected panic inside the Vulkan engine") })
    }

    /// Make device `index` hang (opening it first if needed): every later
    /// submission waits for a semaphore that is never signalled, and waits give up after
    /// `timeout` (then the device counts as hung: lost, and nothing it may touch is freed).
    pub fn inject_hang(&self, index: usize, timeout: std::time::Duration) -> Result<()> {
        self.call(|i| {
            i.device(index)?.ctx.inject_hang(timeout);
            Ok(())
        })
    }

    /// Mark device `index` lost (opening it first if needed), exactly as a
    /// VK_ERROR_DEVICE_LOST from the driver does: every engine holding the device fails fast,
    /// and later engines get a fresh device.
    pub fn inject_device_lost(&self, index: usize) -> Result<()> {
        self.call(|i| {
            i.device(index)?.ctx.mark_lost();
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::error::EngineError;
    use crate::Engine;

    /// A hung device (fault injection) frees nothing it may still touch: allocations freed
    /// after the hang keep their memory (the allocator's figures do not fall). Without
    /// validation, so it gets a logical device of its own (the others use the validation one).
    #[test]
    fn hung_device_frees_nothing() {
        if crate::test_support::skip_without(crate::Engine::probe()) {
            return;
        }
        let e = Engine::new(false, Some("staging")).expect("engine");
        let size = 8 << 20;
        let a = e.allocate(0, size, true).expect("allocate");
        let b = e.allocate(0, size, true).expect("allocate");
        e.write(a, 0, &vec![7u8; size as usize]).expect("write");
        // Pinned host memory whose direct DMA is in flight when the device hangs.
        let pinned = e.host_alloc(0, size).expect("host_alloc");
        // SAFETY: the HostMemory (alive until dropped below) owns `size` bytes at `as_ptr`.
        let host = unsafe { std::slice::from_raw_parts(pinned.as_ptr(), pinned.len()) };
        e.write(b, 0, host).expect("pinned write");
        assert!(e.stats(0).expect("stats").pinned_bytes >= size);
        let ctx = Arc::clone(&e.inner().expect("open").device(0).expect("device").ctx);
        let before = ctx.mem.figures();
        e.inject_hang(0, std::time::Duration::from_millis(200))
            .expect("inject");
        assert!(matches!(
            e.write(b, 0, host),
            Err(EngineError::DeviceLost(_))
        ));
        assert!(ctx.is_hung());
        assert!(matches!(
            e.write(b, 0, &vec![1u8; size as usize]),
            Err(EngineError::DeviceLost(_))
        ));
        // Neither releasing nor dropping the pinned memory frees it: the DMA may still read it.
        e.host_release(pinned.id()).expect("host_release");
        drop(pinned);
        e.free(a).expect("free");
        e.free(b).expect("free");
        e.close().expect("close");
        let after = ctx.mem.figures();
        assert_eq!(
            (after.0, after.2),
            (before.0, before.2),
            "memory was released"
        );
    }
}
