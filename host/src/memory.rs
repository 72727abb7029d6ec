//! Giving freed memory back to the system when a busy thread goes idle.
//!
//! mimalloc (the global allocator, see `main.rs`) returns freed pages to
//! the system lazily: after a delay, and only on the freeing thread's
//! later allocations. A thread that builds a large transient and then
//! waits keeps it resident for as long as it waits: a request of 10,000
//! events parsed into trees on the engine or in a projector process, a
//! checkpoint on the log writer. Measured after loading a million tokens,
//! that was about 40 bytes per entity in the host and 30 in the projector
//! process (BENCHMARKS.md, "memory per entity"), all of it memory nothing
//! used. An eager purge everywhere (`MIMALLOC_PURGE_DELAY=0`) frees it too
//! but cost ingest a fifth of its rate, so instead the threads that do the
//! heavy lifting release once, when they have had nothing to do for
//! [`IDLE_BEFORE_RELEASE`]: never while busy, once per quiet spell. A
//! release took 0.1-1.3 ms on the engine and 1.3-3.2 ms in a projector
//! process holding a million tokens (timed once, by hand): a request that
//! arrives during one waits that long, once.

use std::time::Duration;

/// How long a thread that worked waits idle before it releases.
pub const IDLE_BEFORE_RELEASE: Duration = Duration::from_millis(50);

/// Hands the memory this thread's heap freed (and any abandoned heaps')
/// back to the system now.
pub fn release_freed_memory() {
    // SAFETY: `mi_collect` has no preconditions; it only frees memory
    // mimalloc holds for this thread's heap and abandoned ones.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Whether a thread has worked since it last released; one per thread
/// that waits for work.
#[derive(Debug, Default)]
pub struct IdleRelease {
    worked: bool,
}

impl IdleRelease {
    /// The thread did some work (and may have freed memory).
    pub fn worked(&mut self) {
        self.worked = true;
    }

    /// How long to wait for work before a release is due: at
    /// most [`IDLE_BEFORE_RELEASE`] after working, else `wait`.
    pub fn wait(&self, wait: Duration) -> Duration {
        if self.worked {
            wait.min(IDLE_BEFORE_RELEASE)
        } else {
            wait
        }
    }

    /// A wait for work that the caller wanted to last `wanted` (and asked
    /// [`IdleRelease::wait`] how long to make) ran out with no work:
    /// release if it was the idle wait after work, not a shorter deadline
    /// of the caller's own.
    pub fn timed_out(&mut self, wanted: Duration) {
        if self.worked && wanted > IDLE_BEFORE_RELEASE {
            self.worked = false;
            release_freed_memory();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_is_due_once_after_work_and_only_when_the_idle_wait_ran_out() {
        let second = Duration::from_secs(1);
        let mut idle = IdleRelease::default();
        assert_eq!(idle.wait(second), second, "nothing to release before work");
        idle.worked();
        assert_eq!(idle.wait(second), IDLE_BEFORE_RELEASE);
        // A deadline of the caller's shorter than the idle wait ran out:
        // not idle yet, still due.
        let deadline = Duration::from_millis(10);
        assert_eq!(idle.wait(deadline), deadline);
        idle.timed_out(deadline);
        assert_eq!(idle.wait(second), IDLE_BEFORE_RELEASE);
        // The idle wait ran out: released, and not again until more work.
        idle.timed_out(second);
        assert_eq!(idle.wait(second), second);
    }
}
