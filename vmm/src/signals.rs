//! Terminating signals (SIGTERM, SIGINT, SIGHUP) stop the VM in order, like a guest exit: every
//! vCPU thread is stopped and the terminal restored before the VMM exits with 128 + the signal.
//! SIGUSR1 prints the IOMMU's statistics. The handlers only record the signal and write to an event
//! fd, both async-signal-safe; the event loop does the rest.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::signal::register_signal_handler;

use crate::outcome::{ExitLatch, Outcome};

/// The event fd the handler writes to, or -1 while no watcher exists.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// The last terminating signal received.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The event fd the SIGUSR1 handler writes to, or -1 while no stats watcher exists.
static STATS_FD: AtomicI32 = AtomicI32::new(-1);

/// Signals the event fd in `fd`, if any; async-signal-safe.
fn wake(fd: &AtomicI32) {
    let fd = fd.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: errno is thread-local and __errno_location always returns a valid pointer;
        // write(2) is async-signal-safe and the buffer is 8 valid bytes, as an event fd wants. A
        // failed write (the counter cannot overflow here) only loses a wake-up. errno is restored
        // for the interrupted code.
        unsafe {
            let errno = libc::__errno_location();
            let saved = *errno;
            libc::write(fd, one.as_ptr().cast(), one.len());
            *errno = saved;
        }
    }
}

/// Installs the SIGUSR1 handler with no watcher yet, so that an early SIGUSR1 (before the event
/// loop runs, or without --iommu) is ignored instead of killing the VMM.
pub fn catch_usr1() -> io::Result<()> {
    register_signal_handler(libc::SIGUSR1, on_usr1)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))
}

extern "C" fn on_signal(signo: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SIGNAL.store(signo, Ordering::SeqCst);
    wake(&WAKE_FD);
}

extern "C" fn on_usr1(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    wake(&STATS_FD);
}

/// Turns terminating signals into [`Outcome::Signal`] from the event loop.
#[derive(Debug)]
pub struct SignalWatcher {
    wake: EventFd,
    latch: Arc<ExitLatch>,
}

impl SignalWatcher {
    /// Installs the handlers; they report to `latch` while the watcher lives.
    pub fn install(latch: Arc<ExitLatch>) -> io::Result<Self> {
        let wake = EventFd::new(EFD_NONBLOCK)?;
        WAKE_FD.store(wake.as_raw_fd(), Ordering::SeqCst);
        for signo in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            register_signal_handler(signo, on_signal)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        }
        Ok(Self { wake, latch })
    }
}

impl Drop for SignalWatcher {
    fn drop(&mut self) {
        WAKE_FD.store(-1, Ordering::SeqCst);
    }
}

impl MutEventSubscriber for SignalWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.wake.read();
        self.latch
            .set(Outcome::Signal(SIGNAL.load(Ordering::SeqCst)));
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.wake, EventSet::IN)) {
            log::error!("cannot watch for signals: {e:?}");
        }
    }
}

/// Runs `report` from the event loop each time the VMM receives SIGUSR1.
pub struct StatsSignal {
    wake: EventFd,
    report: Box<dyn Fn() + Send>,
}

impl std::fmt::Debug for StatsSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsSignal").finish_non_exhaustive()
    }
}

impl StatsSignal {
    /// Installs the SIGUSR1 handler; it reports while the watcher lives.
    pub fn install(report: Box<dyn Fn() + Send>) -> io::Result<Self> {
        let wake = EventFd::new(EFD_NONBLOCK)?;
        STATS_FD.store(wake.as_raw_fd(), Ordering::SeqCst);
        catch_usr1()?;
        Ok(Self { wake, report })
    }
}

impl Drop for StatsSignal {
    fn drop(&mut self) {
        STATS_FD.store(-1, Ordering::SeqCst);
    }
}

impl MutEventSubscriber for StatsSignal {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Several signals before the loop runs make one report.
        let _ = self.wake.read();
        (self.report)();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.wake, EventSet::IN)) {
            log::error!("cannot watch for SIGUSR1: {e:?}");
        }
    }
}
