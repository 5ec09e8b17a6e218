//! The guest console: serial output to stdout or a file, and standard input to the guest's COM1.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError};

use devices::legacy::Serial;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use crate::cli::SerialOutput;

/// Standard output, flushed after every write so the console shows each character as the guest
/// sends it.
struct FlushingStdout;

impl Write for FlushingStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

/// Opens the serial output the command line asked for.
pub fn serial_output(choice: &SerialOutput) -> io::Result<Box<dyn Write + Send>> {
    Ok(match choice {
        SerialOutput::Stdout => Box::new(FlushingStdout),
        SerialOutput::File(path) => Box::new(File::create(path)?),
        SerialOutput::Off => Box::new(io::sink()),
    })
}

/// Feeds standard input to COM1 from the event loop.
pub struct StdinInput {
    serial: Arc<Mutex<Serial>>,
}

impl std::fmt::Debug for StdinInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdinInput").finish_non_exhaustive()
    }
}

impl StdinInput {
    /// Input for `serial`.
    pub fn new(serial: Arc<Mutex<Serial>>) -> Self {
        Self { serial }
    }
}

impl MutEventSubscriber for StdinInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let n = if events.event_set().contains(EventSet::IN) {
            io::stdin().lock().read(&mut buf).unwrap_or(0)
        } else {
            0
        };
        if n == 0 {
            // End of input or hang-up: stop watching, or epoll would report it forever.
            let _ = ops.remove(events);
            return;
        }
        let mut serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        let taken = serial.enqueue_input(buf.get(..n).unwrap_or_default());
        if taken < n {
            log::debug!("serial input FIFO full: dropped {} bytes", n - taken);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&io::stdin().as_raw_fd(), EventSet::IN)) {
            // Standard input that epoll cannot watch (a regular file, /dev/null) gives no input.
            log::debug!("not reading standard input: {e:?}");
        }
    }
}

/// Wakes the event loop when the VM's outcome is set.
#[derive(Debug)]
pub struct ExitWatcher {
    wake: vmm_sys_util::eventfd::EventFd,
}

impl ExitWatcher {
    /// Watches `wake`.
    pub fn new(wake: vmm_sys_util::eventfd::EventFd) -> Self {
        Self { wake }
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.wake.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.wake, EventSet::IN)) {
            log::error!("cannot watch the exit event: {e:?}");
        }
    }
}
