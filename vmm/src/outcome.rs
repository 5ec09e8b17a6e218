//! How a VM run ends, and the exit status each ending maps to.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use devices::{ExitSink, GuestExit};
use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// ACPI power off.
    PowerOff,
    /// A guest-initiated reset; the VMM does not reboot, it stops.
    Reset,
    /// The value the guest wrote to the exit port.
    Verdict(u32),
    /// A triple fault, KVM internal error or failed entry; the description is printed already.
    Crash,
    /// `--timeout` expired.
    Timeout,
    /// The user quit from the console (Ctrl-A x).
    Quit,
    /// The VMM received this terminating signal (SIGTERM, SIGINT, SIGHUP) and stopped the VM.
    Signal(i32),
    /// The VMM itself failed while the guest ran.
    Error(String),
}

/// Exit status of a VMM error (also what clap uses for a bad command line).
pub const STATUS_ERROR: i32 = 2;
/// Exit status of a guest crash.
pub const STATUS_CRASH: i32 = 4;
/// Exit status of a timeout (as timeout(1) reports it).
pub const STATUS_TIMEOUT: i32 = 124;

impl Outcome {
    /// The process exit status. Verdicts are odd, the VMM's own statuses even, so a test harness
    /// can always tell them apart; like QEMU's isa-debug-exit, the status keeps the low 8 bits.
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::PowerOff | Outcome::Reset | Outcome::Quit => 0,
            // As a shell reports a process killed by the signal.
            Outcome::Signal(signo) => 128 + signo,
            Outcome::Verdict(v) => ((v << 1) | 1) as i32 & 0xff,
            Outcome::Crash => STATUS_CRASH,
            Outcome::Timeout => STATUS_TIMEOUT,
            Outcome::Error(_) => STATUS_ERROR,
        }
    }
}

/// The first ending reported wins. Setting it raises the stop flag that every vCPU checks before
/// re-entering the guest, and wakes the main thread through an event fd.
#[derive(Debug)]
pub struct ExitLatch {
    outcome: Mutex<Option<Outcome>>,
    stopping: AtomicBool,
    wake: EventFd,
}

impl ExitLatch {
    /// A latch that signals `wake` when set.
    pub fn new(wake: EventFd) -> Self {
        Self {
            outcome: Mutex::new(None),
            stopping: AtomicBool::new(false),
            wake,
        }
    }

    /// Records `outcome` unless one is recorded already.
    pub fn set(&self, outcome: Outcome) {
        let mut slot = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            log::debug!("VM stops: {outcome:?}");
            *slot = Some(outcome);
            self.stopping.store(true, Ordering::Release);
            // The event fd's counter cannot overflow from one write per run.
            let _ = self.wake.write(1);
        }
    }

    /// Whether the VM is stopping: vCPUs must not enter the guest again.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The recorded outcome, if any.
    pub fn get(&self) -> Option<Outcome> {
        self.outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ExitSink for ExitLatch {
    fn guest_exit(&self, exit: GuestExit) {
        self.set(match exit {
            GuestExit::PowerOff => Outcome::PowerOff,
            GuestExit::Reset => Outcome::Reset,
            GuestExit::Verdict(v) => Outcome::Verdict(v),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_documented_convention() {
        assert_eq!(Outcome::Verdict(0).exit_status(), 1);
        assert_eq!(Outcome::Verdict(1).exit_status(), 3);
        assert_eq!(Outcome::Verdict(0x80).exit_status(), 1);
        assert_eq!(Outcome::PowerOff.exit_status(), 0);
        assert_eq!(Outcome::Reset.exit_status(), 0);
        assert_eq!(Outcome::Signal(15).exit_status(), 143);
        for s in [STATUS_ERROR, STATUS_CRASH, STATUS_TIMEOUT] {
            assert_eq!(
                s % 2,
                0,
                "VMM statuses are even so they never look like a verdict"
            );
        }
    }

    #[test]
    fn first_outcome_wins_and_wakes() {
        let latch = ExitLatch::new(EventFd::new(0).unwrap());
        latch.guest_exit(GuestExit::Verdict(5));
        latch.set(Outcome::Crash);
        assert_eq!(latch.get(), Some(Outcome::Verdict(5)));
        assert!(latch.is_stopping());
        assert_eq!(latch.wake.read().unwrap(), 1);
    }
}
