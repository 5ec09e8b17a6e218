//! One thread per vCPU: run it, dispatch its port-I/O and MMIO exits to the buses, and turn fatal
//! exits into the VM's outcome.

use std::fmt::Write as _;
use std::sync::Arc;

use devices::Bus;
use kvm_ioctls::{VcpuExit, VcpuFd};
use log::debug;

use crate::outcome::{ExitLatch, Outcome};

/// What every vCPU thread shares.
#[derive(Clone, Debug)]
pub struct Shared {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Where the VM's ending is recorded; once set, the thread leaves (kicked out of KVM_RUN by a
    /// signal if it is in there).
    pub latch: Arc<ExitLatch>,
}

/// KVM_SYSTEM_EVENT types (linux/kvm.h).
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;

/// What the loop does after an exit, once the exit's borrow of the vCPU has ended.
enum Next {
    Continue,
    Stop(Outcome),
    Crash(String),
}

/// Runs vCPU `index` until the VM stops; returns a one-line description of where it stopped.
pub fn run(index: usize, mut vcpu: VcpuFd, shared: Shared) -> String {
    while !shared.latch.is_stopping() {
        let next = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !shared.pio.read(u64::from(port), data) {
                    debug!("vCPU {index}: unhandled in from port {port:#x}");
                    data.fill(0xff);
                }
                Next::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !shared.pio.write(u64::from(port), data) {
                    debug!("vCPU {index}: unhandled out to port {port:#x}: {data:x?}");
                }
                Next::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !shared.mmio.read(addr, data) {
                    debug!("vCPU {index}: unhandled MMIO read at {addr:#x}");
                    data.fill(0xff);
                }
                Next::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !shared.mmio.write(addr, data) {
                    debug!("vCPU {index}: unhandled MMIO write at {addr:#x}: {data:x?}");
                }
                Next::Continue
            }
            // With the in-kernel LAPIC, KVM handles HLT itself; the interruption of KVM_RUN by our
            // kick signal also lands here.
            Ok(VcpuExit::Hlt | VcpuExit::Intr) => Next::Continue,
            Ok(VcpuExit::Shutdown) => Next::Crash("triple fault".into()),
            Ok(VcpuExit::InternalError) => {
                let suberror = vcpu.get_kvm_run();
                // SAFETY: KVM filled the `internal` member of the union for KVM_EXIT_INTERNAL_ERROR.
                let suberror = unsafe { suberror.__bindgen_anon_1.internal.suberror };
                Next::Crash(format!(
                    "KVM internal error (suberror {suberror}: {})",
                    suberror_name(suberror)
                ))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Next::Crash(format!(
                "VM entry failed (hardware reason {reason:#x}, host CPU {cpu})"
            )),
            Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _)) => {
                Next::Stop(Outcome::PowerOff)
            }
            Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _)) => Next::Stop(Outcome::Reset),
            Ok(other) => Next::Crash(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Continue,
            Err(e) => Next::Stop(Outcome::Error(format!(
                "KVM_RUN failed on vCPU {index}: {e}"
            ))),
        };
        match next {
            Next::Continue => {}
            Next::Stop(outcome) => shared.latch.set(outcome),
            Next::Crash(what) => {
                eprintln!(
                    "vmm: guest crashed: {what} on vCPU {index}\n{}",
                    describe(&vcpu)
                );
                shared.latch.set(Outcome::Crash);
            }
        }
    }
    let regs = vcpu
        .get_regs()
        .map(|r| format!("rip {:#x} rsp {:#x}", r.rip, r.rsp));
    format!(
        "vCPU {index} stopped at {}",
        regs.unwrap_or_else(|e| format!("(registers unreadable: {e})"))
    )
}

fn suberror_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure",
        2 => "simultaneous exceptions",
        3 => "delivery event",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

/// The registers worth reading after a crash.
fn describe(vcpu: &VcpuFd) -> String {
    let mut s = String::new();
    match vcpu.get_regs() {
        Ok(r) => {
            let _ = writeln!(
                s,
                "  rip {:016x} rsp {:016x} rflags {:08x}\n  rax {:016x} rbx {:016x} rcx {:016x} rdx {:016x}\n  rsi {:016x} rdi {:016x} rbp {:016x}",
                r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp
            );
        }
        Err(e) => {
            let _ = writeln!(s, "  registers unreadable: {e}");
        }
    }
    match vcpu.get_sregs() {
        Ok(r) => {
            let _ = write!(
                s,
                "  cr0 {:08x} cr2 {:016x} cr3 {:016x} cr4 {:08x} efer {:x}\n  cs {:04x} (base {:x}, {}) ss {:04x} gdt {:x}+{:x} idt {:x}+{:x}",
                r.cr0,
                r.cr2,
                r.cr3,
                r.cr4,
                r.efer,
                r.cs.selector,
                r.cs.base,
                if r.cs.l == 1 {
                    "64-bit"
                } else if r.cs.db == 1 {
                    "32-bit"
                } else {
                    "16-bit"
                },
                r.ss.selector,
                r.gdt.base,
                r.gdt.limit,
                r.idt.base,
                r.idt.limit
            );
        }
        Err(e) => {
            let _ = write!(s, "  special registers unreadable: {e}");
        }
    }
    s
}
