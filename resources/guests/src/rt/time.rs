//! Rough delays and timeouts from the TSC (readable at CPL3).
//!
//! The TSC rate is not measured; it is assumed to be about
//! [`ASSUMED_TSC_MHZ`] (typical x86 hosts run the TSC at 2-4 GHz), so
//! delays are approximate. Use them for "wait at least about this long"
//! and for generous timeouts, never for measurements.

use super::io::rdtsc;

pub const ASSUMED_TSC_MHZ: u64 = 3000;

/// Spins for roughly `us` microseconds.
pub fn delay_us(us: u64) {
    let start = rdtsc();
    let cycles = us.saturating_mul(ASSUMED_TSC_MHZ);
    while rdtsc().wrapping_sub(start) < cycles {
        core::hint::spin_loop();
    }
}

/// A deadline roughly `us` microseconds from now.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    start: u64,
    cycles: u64,
}

impl Deadline {
    pub fn after_us(us: u64) -> Self {
        Deadline {
            start: rdtsc(),
            cycles: us.saturating_mul(ASSUMED_TSC_MHZ),
        }
    }
    pub fn expired(&self) -> bool {
        rdtsc().wrapping_sub(self.start) >= self.cycles
    }
}
