//! One thread per vCPU: run it, dispatch its port-I/O and MMIO exits to the buses, and turn fatal
//! exits into the VM's outcome.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, PoisonError};

use devices::Bus;
use devices::ioapic::SharedIoapic;
use kvm_bindings::KVM_EXIT_IO_IN;
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
    /// The I/O APIC, for the EOIs of its level-triggered vectors.
    pub ioapic: SharedIoapic,
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
    PortIo,
    Stop(Outcome),
    Crash(String),
}

/// Ends the VM with an error if the vCPU thread unwinds, so that a bug in a device can never leave
/// the VMM waiting for a vCPU that is gone.
struct UnwindGuard<'a> {
    index: usize,
    latch: &'a ExitLatch,
}

impl Drop for UnwindGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.latch.set(Outcome::Error(format!(
                "vCPU {} thread panicked",
                self.index
            )));
        }
    }
}

/// Runs vCPU `index` until the VM stops; returns a one-line description of where it stopped.
pub fn run(index: usize, mut vcpu: VcpuFd, shared: Shared) -> String {
    let _guard = UnwindGuard {
        index,
        latch: &shared.latch,
    };
    while !shared.latch.is_stopping() {
        let next = match vcpu.run() {
            // Port I/O is dispatched once the exit's borrow of the vCPU has ended, because string
            // instructions (`rep insb` ...) need the element size that VcpuExit does not carry.
            Ok(VcpuExit::IoIn(..) | VcpuExit::IoOut(..)) => Next::PortIo,
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
            // A local APIC's EOI of a vector that KVM saw among the I/O APIC's level-triggered
            // routes (split irqchip).
            Ok(VcpuExit::IoapicEoi(vector)) => {
                shared
                    .ioapic
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .end_of_interrupt(vector);
                Next::Continue
            }
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
            Next::PortIo => port_io(index, &mut vcpu, &shared.pio),
            Next::Stop(outcome) => shared.latch.set(outcome),
            Next::Crash(what) => {
                // The outcome first: whatever happens to the report, the VM stops.
                shared.latch.set(Outcome::Crash);
                let report = format!(
                    "vmm: guest crashed: {what} on vCPU {index}\n{}\n",
                    describe(&vcpu)
                );
                let _ = std::io::stderr().write_all(report.as_bytes());
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

/// Dispatches the port I/O of the last exit (KVM_EXIT_IO) to the bus, one access per element of a
/// string instruction. Ports no device claims read as all ones; writes to them are dropped.
fn port_io(index: usize, vcpu: &mut VcpuFd, pio: &Bus) {
    let run = vcpu.get_kvm_run();
    // SAFETY: the last exit was KVM_EXIT_IO, for which KVM fills the `io` member of the union.
    let io = unsafe { run.__bindgen_anon_1.io };
    let size = usize::from(io.size).max(1);
    let len = size.saturating_mul(io.count as usize);
    let base = std::ptr::from_mut(run).cast::<u8>();
    // SAFETY: as in kvm-ioctls' own decoding of KVM_EXIT_IO: KVM places size * count bytes of data at
    // data_offset into the kvm_run area, which is mapped for as long as the vCPU fd lives, and
    // nothing else refers to those bytes until the next KVM_RUN.
    let data = unsafe { std::slice::from_raw_parts_mut(base.add(io.data_offset as usize), len) };
    let port = u64::from(io.port);
    for element in data.chunks_mut(size) {
        if u32::from(io.direction) == KVM_EXIT_IO_IN {
            if !pio.read(port, element) {
                debug!("vCPU {index}: unhandled in from port {port:#x}");
                element.fill(0xff);
            }
        } else if !pio.write(port, element) {
            debug!("vCPU {index}: unhandled out to port {port:#x}: {element:x?}");
        }
    }
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
