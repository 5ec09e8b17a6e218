//! The guest console: serial output to stdout or a file, and standard input to the guest's COM1.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex, PoisonError};

use devices::legacy::Serial;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

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

/// Feeds standard input to COM1 from the event loop. Input is read from the raw descriptor (std's
/// buffered `Stdin` would keep bytes that epoll then never reports), kept in `pending` while the
/// guest's receive FIFO is full, and offered again each time the guest drains the FIFO. While a
/// backlog is pending, standard input is not watched, so a fast producer waits for the guest.
pub struct StdinInput {
    serial: Arc<Mutex<Serial>>,
    stdin: File,
    drained: EventFd,
    pending: VecDeque<u8>,
    watching: bool,
    ended: bool,
}

impl std::fmt::Debug for StdinInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdinInput")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// Stop reading standard input while this much is waiting for the guest.
const BACKLOG: usize = 4096;

impl StdinInput {
    /// Input for `serial`, which signals `drained` when the guest empties its receive FIFO.
    pub fn new(serial: Arc<Mutex<Serial>>, drained: EventFd) -> io::Result<Self> {
        let stdin = File::from(io::stdin().as_fd().try_clone_to_owned()?);
        Ok(Self {
            serial,
            stdin,
            drained,
            pending: VecDeque::new(),
            watching: false,
            ended: false,
        })
    }

    fn read_stdin(&mut self) {
        let mut buf = [0u8; BACKLOG];
        match self.stdin.read(&mut buf) {
            Ok(0) => self.ended = true,
            Ok(n) => self.pending.extend(buf.iter().take(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => {
                log::debug!("standard input: {e}");
                self.ended = true;
            }
        }
    }

    /// Moves what fits into the FIFO, then watches standard input only if there is room for more.
    fn feed(&mut self, ops: &mut EventOps) {
        if !self.pending.is_empty() {
            let taken = self
                .serial
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .enqueue_input(self.pending.make_contiguous());
            self.pending.drain(..taken);
        }
        let want = !self.ended && self.pending.len() < BACKLOG;
        if want != self.watching {
            let events = Events::new(&self.stdin, EventSet::IN);
            let changed = if want {
                ops.add(events)
            } else {
                ops.remove(events)
            };
            if let Err(e) = changed {
                // Standard input that epoll cannot watch (a regular file, /dev/null) gives no input.
                log::debug!("standard input not watched: {e:?}");
                self.ended = true;
            } else {
                self.watching = want;
            }
        }
    }
}

impl MutEventSubscriber for StdinInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.drained.as_raw_fd() {
            let _ = self.drained.read();
        } else if events.event_set().contains(EventSet::IN) {
            self.read_stdin();
        } else {
            // Hang-up or error without data.
            self.ended = true;
        }
        self.feed(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.drained, EventSet::IN)) {
            log::error!("cannot watch the serial receive FIFO: {e:?}");
        }
        self.feed(ops);
    }
}

/// Wakes the event loop when the VM's outcome is set.
#[derive(Debug)]
pub struct ExitWatcher {
    wake: EventFd,
}

impl ExitWatcher {
    /// Watches `wake`.
    pub fn new(wake: EventFd) -> Self {
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
