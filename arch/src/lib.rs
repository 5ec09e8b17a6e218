//! The x86_64 platform: where things live in guest-physical memory, how each boot protocol hands
//! control to a kernel, the CPU model every vCPU gets, and the ACPI tables that describe the machine.

#![cfg_attr(test, allow(clippy::indexing_slicing))]

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod regs;

/// Guest memory as the VMM allocates it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Tells the person running the tests that a test could not run here, bypassing libtest's output
/// capture so that the line is seen even when the test passes.
#[cfg(test)]
pub(crate) fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}
