//! Timed loops for the benchmark programs. The host times a loop by the arrival of the two lines
//! it prints (`bench: begin NAME`, then `bench: end NAME ops=N tsc=T part_tsc=P`), so no guest
//! clock needs calibrating; the TSC counts only split the loop's time between the whole
//! operation and the part the program times with [`Loop::time`] (e.g. the IOMMU work around a
//! DMA): that part took `P / T` of the host-measured time.
//!
//! Command line: `ops=N` runs exactly N operations (tests); otherwise `seconds=S` (default 2)
//! runs for about S seconds by the TSC's assumed rate (the host measures the real time).

use super::io::rdtsc;
use super::multiboot::cmdline_value;
use super::time::Deadline;
use crate::{fail, println};

pub struct Loop {
    name: &'static str,
    limit: Option<u64>,
    deadline: Option<Deadline>,
    ops: u64,
    start: u64,
    part: u64,
}

fn number(key: &str) -> Option<u64> {
    let v = cmdline_value(key)?;
    match v.parse() {
        Ok(n) if n > 0 => Some(n),
        _ => fail!("{}={}: expected a positive whole number", key, v),
    }
}

impl Loop {
    /// Prints the begin line and starts the clock.
    pub fn start(name: &'static str) -> Loop {
        let limit = number("ops");
        let deadline = match limit {
            Some(_) => None,
            None => Some(Deadline::after_us(
                number("seconds").unwrap_or(2).saturating_mul(1_000_000),
            )),
        };
        println!("bench: begin {}", name);
        Loop {
            name,
            limit,
            deadline,
            ops: 0,
            start: rdtsc(),
            part: 0,
        }
    }

    /// Whether to run another operation; counts it if so. Its index is `ops() - 1`.
    pub fn next_op(&mut self) -> bool {
        let more = match (self.limit, &self.deadline) {
            (Some(n), _) => self.ops < n,
            (None, Some(d)) => !d.expired(),
            (None, None) => false,
        };
        if more {
            self.ops += 1;
        }
        more
    }

    /// Operations started so far.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// Runs `f`, adding its TSC cycles to the timed part.
    pub fn time<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let t = rdtsc();
        let r = f();
        self.part += rdtsc().wrapping_sub(t);
        r
    }

    /// Prints the end line; returns the number of operations.
    pub fn end(self) -> u64 {
        let tsc = rdtsc().wrapping_sub(self.start);
        println!(
            "bench: end {} ops={} tsc={} part_tsc={}",
            self.name, self.ops, tsc, self.part
        );
        self.ops
    }
}
