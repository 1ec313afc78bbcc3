//! Compute cores: which CPU a long compute runs on.
//!
//! A long inference (milliseconds) streams the model's weights through the caches of the core it
//! runs on. When the request's own work (HTTP, the plugin's instance, its pre- and
//! post-processing) runs on that same core afterwards, it starts cold: measured on the
//! benchmark's 2-vCPU guest at one connection, running the compute apart cut the time outside
//! the model from about 450 to 360 µs per embed request (bench/RESULTS.md). So each long
//! compute runs on a blocking thread pinned to a core of its own, taken from the highest of the
//! process's CPUs down, one compute per core, and the rest of the host keeps the other cores
//! warm. With more computes at once than CPUs the extra ones run unpinned; with a single CPU (or
//! off Linux) nothing is pinned.

use std::sync::{Mutex, OnceLock};

/// The CPUs the process may run on, and which of them a compute holds now.
pub(crate) struct ComputeCores {
    /// CPU numbers, highest first.
    cpus: Vec<usize>,
    taken: Mutex<Vec<bool>>,
}

impl ComputeCores {
    /// The process-wide set: the CPUs this process was allowed when first asked.
    pub(crate) fn global() -> &'static ComputeCores {
        static CORES: OnceLock<ComputeCores> = OnceLock::new();
        CORES.get_or_init(|| ComputeCores::new(sys::allowed_cpus()))
    }

    fn new(mut cpus: Vec<usize>) -> Self {
        cpus.sort_unstable_by(|a, b| b.cmp(a));
        cpus.dedup();
        if cpus.len() < 2 {
            // Pinning a compute to the only CPU would keep nothing warm.
            cpus.clear();
        }
        let taken = Mutex::new(vec![false; cpus.len()]);
        Self { cpus, taken }
    }

    /// Whether computes are pinned at all here.
    pub(crate) fn available(&self) -> bool {
        !self.cpus.is_empty()
    }

    /// Pins the calling thread to the highest free CPU until the guard drops, which gives the
    /// thread all the process's CPUs back. `None` (nothing pinned) when every CPU is held.
    pub(crate) fn pin_current_thread(&self) -> Option<PinnedThread<'_>> {
        let index = {
            let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
            let index = taken.iter().position(|held| !held)?;
            taken[index] = true;
            index
        };
        let pinned = PinnedThread { cores: self, index };
        sys::set_current_thread_cpus(&[self.cpus[index]]).ok()?;
        Some(pinned)
    }
}

/// A thread pinned to one compute core; unpins it and frees the core when dropped.
pub(crate) struct PinnedThread<'a> {
    cores: &'a ComputeCores,
    index: usize,
}

impl PinnedThread<'_> {
    /// The CPU the thread runs on.
    #[cfg(test)]
    pub(crate) fn cpu(&self) -> usize {
        self.cores.cpus[self.index]
    }
}

impl Drop for PinnedThread<'_> {
    fn drop(&mut self) {
        // Best effort: a thread left pinned only runs slower, never wrongly.
        let _ = sys::set_current_thread_cpus(&self.cores.cpus);
        let mut taken = self.cores.taken.lock().unwrap_or_else(|p| p.into_inner());
        taken[self.index] = false;
    }
}

/// The CPUs the calling thread may run on now (empty off Linux).
#[cfg(test)]
pub(crate) fn current_thread_cpus() -> Vec<usize> {
    sys::allowed_cpus()
}

#[cfg(target_os = "linux")]
mod sys {
    use std::io;

    /// The CPUs the calling thread may run on (at start-up: the process's, cgroups included).
    pub(super) fn allowed_cpus() -> Vec<usize> {
        // SAFETY: `cpu_set_t` is plain data, zeroed is the empty set; the size passed is its own.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
                .collect()
        }
    }

    /// Restricts the calling thread to `cpus`.
    pub(super) fn set_current_thread_cpus(cpus: &[usize]) -> io::Result<()> {
        // SAFETY: as above; `CPU_SET` ignores numbers beyond the set's size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in cpus {
                libc::CPU_SET(cpu, &mut set);
            }
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    pub(super) fn allowed_cpus() -> Vec<usize> {
        Vec::new()
    }

    pub(super) fn set_current_thread_cpus(_cpus: &[usize]) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cpu_pins_nothing() {
        let cores = ComputeCores::new(vec![0]);
        assert!(!cores.available());
        assert!(cores.pin_current_thread().is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn computes_take_the_highest_free_cpus_and_give_them_back() {
        let allowed = sys::allowed_cpus();
        if allowed.len() < 2 {
            return; // nothing to pin on this machine
        }
        let cores = ComputeCores::new(allowed.clone());
        let highest = *allowed.iter().max().unwrap();
        std::thread::scope(|scope| {
            let first = cores.pin_current_thread().expect("a free CPU");
            assert_eq!(first.cpu(), highest);
            assert_eq!(
                sys::allowed_cpus(),
                [highest],
                "this thread runs on it alone"
            );
            // Another thread meanwhile gets the next CPU down.
            scope
                .spawn(|| {
                    let second = cores.pin_current_thread().expect("a second free CPU");
                    assert!(second.cpu() < highest);
                })
                .join()
                .unwrap();
            drop(first);
        });
        assert_eq!(sys::allowed_cpus(), allowed, "unpinned again");
        let again = cores.pin_current_thread().expect("freed");
        assert_eq!(again.cpu(), highest);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn more_computes_than_cpus_run_unpinned() {
        let allowed = sys::allowed_cpus();
        if allowed.len() < 2 {
            return;
        }
        let cores = ComputeCores::new(allowed.clone());
        for _ in 0..allowed.len() {
            // Each held by a thread that ends pinned, as a compute still running would be.
            std::thread::scope(|scope| {
                scope.spawn(|| std::mem::forget(cores.pin_current_thread().expect("free")));
            });
        }
        assert!(cores.pin_current_thread().is_none(), "every CPU is held");
        assert_eq!(
            sys::allowed_cpus(),
            allowed,
            "and this thread stays unpinned"
        );
    }
}
