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
/// With VMM_TEST_REQUIRE_ALL=1 (set by .ci/run) the skip is a failure instead. For the unit tests
/// of this crate and of the VMM.
#[doc(hidden)]
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    if std::env::var_os("VMM_TEST_REQUIRE_ALL").is_some_and(|v| v == "1") {
        panic!("{test} cannot run here ({why}) and VMM_TEST_REQUIRE_ALL=1");
    }
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}
