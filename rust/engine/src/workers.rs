//! A small process-wide pool of memcpy threads (the copy kernels built on it are in `memcpy`).
//!
//! One large memcpy is bounded by what one core can move (about 10 GB/s); several cores together
//! reach the memory system's (or the PCIe link's) bandwidth, and fault fresh pages in parallel.
//! `Workers::run(n, f)` calls `f(0..n)` spread over the pool and the calling thread and returns
//! when every call has finished, so `f` may borrow from the caller's stack. The calling thread
//! always works too: a busy pool (several engines copying at once) only makes a call slower,
//! never stuck.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::instance::{current_call_log, CallLog, CallLogScope};
use crate::sync::lock;
use crate::tuning::tuning;

type Task = dyn Fn(usize) + Sync;

struct Job {
    /// The caller's closure with its lifetime erased. Only dereferenced for a claimed part
    /// `< parts`, and the caller does not return before every such call has finished.
    task: *const Task,
    parts: usize,
    next: AtomicUsize,
    /// Parts not yet finished; the caller sleeps on `finished` (under `done`) until zero.
    remaining: AtomicUsize,
    done: Mutex<()>,
    finished: Condvar,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// The caller's validation-message collector (null without validation).
    log: *const CallLog,
}

// SAFETY: `task` points to a `Sync` closure (callable from any thread) and `log` to a `CallLog`
// (all state behind mutexes); both outlive every use (see `Job::task`).
unsafe impl Send for Job {}
// SAFETY: as above.
unsafe impl Sync for Job {}

impl Job {
    /// Claim and run parts until none is left. Returns whether this thread ran any.
    fn work(&self) -> bool {
        let mut ran = false;
        loop {
            let i = self.next.fetch_add(1, Ordering::AcqRel);
            if i >= self.parts {
                return ran;
            }
            ran = true;
            let _scope = CallLogScope::enter(self.log);
            // SAFETY: part `i < parts` was claimed by this thread alone; the caller waits for
            // `remaining` to reach zero before its closure goes out of scope.
            let task = unsafe { &*self.task };
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| task(i))) {
                lock(&self.panic).get_or_insert(p);
            }
            if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                let _g = lock(&self.done);
                self.finished.notify_all();
            }
        }
    }
}

struct Shared {
    queue: Mutex<VecDeque<Arc<Job>>>,
    wake: Condvar,
    /// Jobs in `queue` (read without the lock by spinning workers).
    jobs: AtomicUsize,
    /// How long an idle worker (or a waiting caller) spins before sleeping.
    spin: Duration,
}

/// Spin until `ready()` or `limit` elapsed; returns `ready()`.
fn spin_until(limit: Duration, ready: impl Fn() -> bool) -> bool {
    if limit.is_zero() {
        return ready();
    }
    let start = Instant::now();
    loop {
        if ready() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        for _ in 0..32 {
            std::hint::spin_loop();
        }
    }
}

/// The pool.
pub(crate) struct Workers {
    shared: Arc<Shared>,
    /// Threads that may work on one call, the caller included.
    threads: usize,
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

/// The process-wide pool (`threads - 1` worker threads, started on first use).
pub(crate) fn workers() -> &'static Workers {
    WORKERS.get_or_init(|| {
        let t = tuning();
        Workers::start(t.threads, Duration::from_micros(t.spin_us))
    })
}

impl Workers {
    fn start(threads: usize, spin: Duration) -> Workers {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            jobs: AtomicUsize::new(0),
            spin,
        });
        let mut started = 1;
        for i in 1..threads.max(1) {
            let s = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("exo-vk-copy-{i}"))
                .spawn(move || worker_loop(&s));
            if spawned.is_ok() {
                started += 1;
            }
        }
        Workers {
            shared,
            threads: started,
        }
    }

    /// Threads available to one call (the caller included).
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// Call `f(i)` for every `i < parts`, spread over the pool and this thread; returns once all
    /// calls have finished. A panic in any call is re-raised here afterwards.
    pub(crate) fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        if parts <= 1 || self.threads <= 1 {
            for i in 0..parts {
                f(i);
            }
            return;
        }
        self.run_beside(parts, f, || ());
    }

    /// `run` for fallible parts: every part runs (they may share a buffer that must not be
    /// released early), and the first error seen is returned.
    pub(crate) fn try_run(
        &self,
        parts: usize,
        f: &(dyn Fn(usize) -> crate::error::Result<()> + Sync),
    ) -> crate::error::Result<()> {
        let failed: Mutex<Option<crate::error::EngineError>> = Mutex::new(None);
        self.run(parts, &|i| {
            if let Err(e) = f(i) {
                lock(&failed).get_or_insert(e);
            }
        });
        match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Like `run`, but this thread first runs `main` while the pool works on `f`, then helps
    /// with what is left of `f`. Returns `main`'s result once every part of `f` has finished.
    pub(crate) fn run_beside<R>(
        &self,
        parts: usize,
        f: &(dyn Fn(usize) + Sync),
        main: impl FnOnce() -> R,
    ) -> R {
        if parts == 0 || self.threads <= 1 {
            let r = main();
            for i in 0..parts {
                f(i);
            }
            return r;
        }
        // SAFETY: only the lifetime is erased; see `Job::task`.
        let task: *const Task =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Task>(f) };
        let job = Arc::new(Job {
            task,
            parts,
            next: AtomicUsize::new(0),
            remaining: AtomicUsize::new(parts),
            done: Mutex::new(()),
            finished: Condvar::new(),
            panic: Mutex::new(None),
            log: current_call_log(),
        });
        {
            let mut q = lock(&self.shared.queue);
            q.push_back(Arc::clone(&job));
            self.shared.jobs.fetch_add(1, Ordering::AcqRel);
        }
        let helpers = parts.min(self.threads - 1);
        for _ in 0..helpers {
            self.shared.wake.notify_one();
        }
        // If `main` panics, the parts still running borrow from the caller: wait for them.
        let guard = WaitOnUnwind(&job);
        let r = main();
        std::mem::forget(guard);
        job.work();
        let finished = || job.remaining.load(Ordering::Acquire) == 0;
        if !spin_until(self.shared.spin, finished) {
            let mut g = lock(&job.done);
            while !finished() {
                g = job.finished.wait(g).unwrap_or_else(|e| e.into_inner());
            }
        }
        {
            let mut q = lock(&self.shared.queue);
            let before = q.len();
            q.retain(|j| !Arc::ptr_eq(j, &job));
            self.shared
                .jobs
                .fetch_sub(before - q.len(), Ordering::AcqRel);
        }
        let panic = lock(&job.panic).take();
        if let Some(p) = panic {
            resume_unwind(p);
        }
        r
    }
}

/// Finishes a job's parts (on this thread if need be) when dropped during unwinding.
struct WaitOnUnwind<'a>(&'a Arc<Job>);

impl Drop for WaitOnUnwind<'_> {
    fn drop(&mut self) {
        let job = self.0;
        job.work();
        let mut g = lock(&job.done);
        while job.remaining.load(Ordering::Acquire) > 0 {
            g = job.finished.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn worker_loop(shared: &Shared) {
    loop {
        spin_until(shared.spin, || shared.jobs.load(Ordering::Acquire) > 0);
        let job = {
            let mut q = lock(&shared.queue);
            loop {
                if let Some(j) = q.front() {
                    break Arc::clone(j);
                }
                q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        if !job.work() {
            // Every part was claimed: drop the job from the queue so we don't spin on it.
            let mut q = lock(&shared.queue);
            if q.front().is_some_and(|j| Arc::ptr_eq(j, &job)) {
                q.pop_front();
                shared.jobs.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// How many parts to split `len` bytes into.
pub(crate) fn parts_for(len: usize) -> usize {
    let t = tuning();
    let w = workers().threads();
    (len / t.min_part.max(1)).clamp(1, w)
}

/// Part `i` of `parts` over `len` bytes: boundaries on 4 KiB multiples (whole pages per thread).
pub(crate) fn part_range(len: usize, parts: usize, i: usize) -> (usize, usize) {
    let per = len.div_ceil(parts).next_multiple_of(4096);
    let start = (per * i).min(len);
    let end = (per * (i + 1)).min(len);
    (start, end)
}

/// A raw pointer handed to pool threads (which work on disjoint ranges the caller keeps alive).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut u8);
// SAFETY: used only to hand disjoint byte ranges of buffers the caller keeps alive to the pool.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer plus `n` (a method, so closures capture the whole `SendPtr`).
    ///
    /// # Safety
    /// As `pointer::add`.
    pub(crate) unsafe fn add(self, n: usize) -> *mut u8 {
        // SAFETY: per the function contract.
        unsafe { self.0.add(n) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_part_once() {
        let w = Workers::start(4, Duration::ZERO);
        let hits: Vec<AtomicUsize> = (0..37).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..50 {
            w.run(hits.len(), &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 50));
    }

    #[test]
    fn run_beside_overlaps_main_and_parts() {
        let w = Workers::start(4, Duration::ZERO);
        let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        let r = w.run_beside(
            hits.len(),
            &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            },
            || 42,
        );
        assert_eq!(r, 42);
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        let r = catch_unwind(AssertUnwindSafe(|| {
            w.run_beside(2, &|_| std::thread::sleep(Duration::from_millis(5)), || {
                panic!("main")
            })
        }));
        assert!(r.is_err());
        w.run(4, &|_| {});
    }

    #[test]
    fn panics_surface_after_all_parts() {
        let w = Workers::start(3, Duration::from_micros(20));
        let done = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            w.run(8, &|i| {
                if i == 3 {
                    panic!("part 3");
                }
                done.fetch_add(1, Ordering::Relaxed);
            })
        }));
        assert!(r.is_err());
        assert_eq!(done.load(Ordering::Relaxed), 7);
        // Still usable.
        w.run(4, &|_| {
            done.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(done.load(Ordering::Relaxed), 11);
    }
}
