//! The guest console: serial output to stdout or a file, and standard input to the guest's COM1.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex, PoisonError};

use devices::legacy::Serial;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::terminal::Terminal;

use crate::outcome::{ExitLatch, Outcome};

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
    /// Set when standard input is a terminal in raw mode: Ctrl-A escapes are interpreted.
    escapes: Option<Escapes>,
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
    /// `quit` is set when a terminal user types Ctrl-A x.
    pub fn new(
        serial: Arc<Mutex<Serial>>,
        drained: EventFd,
        quit: Arc<ExitLatch>,
    ) -> io::Result<Self> {
        let stdin = File::from(io::stdin().as_fd().try_clone_to_owned()?);
        let escapes = io::stdin().is_terminal().then(|| Escapes {
            quit,
            after_ctrl_a: false,
        });
        Ok(Self {
            serial,
            escapes,
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
            Ok(n) => {
                let bytes = buf.get(..n).unwrap_or_default();
                match &mut self.escapes {
                    Some(escapes) => escapes.filter(bytes, &mut self.pending),
                    None => self.pending.extend(bytes),
                }
            }
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

/// QEMU's console escapes, for a user at a terminal in raw mode: Ctrl-A x quits, Ctrl-A Ctrl-A sends
/// one Ctrl-A; Ctrl-A followed by anything else sends both.
struct Escapes {
    quit: Arc<ExitLatch>,
    after_ctrl_a: bool,
}

const CTRL_A: u8 = 0x01;

impl Escapes {
    fn filter(&mut self, bytes: &[u8], out: &mut VecDeque<u8>) {
        for &b in bytes {
            if self.after_ctrl_a {
                self.after_ctrl_a = false;
                match b {
                    b'x' => self.quit.set(Outcome::Quit),
                    CTRL_A => out.push_back(CTRL_A),
                    _ => out.extend([CTRL_A, b]),
                }
            } else if b == CTRL_A {
                self.after_ctrl_a = true;
            } else {
                out.push_back(b);
            }
        }
    }
}

/// Puts a terminal on standard input into raw mode (no line editing, echo or signal keys: the
/// guest's shell does all that) for as long as it lives.
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    /// Raw mode if standard input is a terminal; otherwise nothing.
    pub fn new() -> Self {
        let stdin = io::stdin();
        let active = stdin.is_terminal() && stdin.lock().set_raw_mode().is_ok();
        Self { active }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            let _ = io::stdin().lock().set_canon_mode();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_escapes() {
        let latch = Arc::new(ExitLatch::new(EventFd::new(0).unwrap()));
        let mut e = Escapes {
            quit: latch.clone(),
            after_ctrl_a: false,
        };
        let mut out = VecDeque::new();
        e.filter(b"ab\x01\x01c\x01d", &mut out);
        assert_eq!(out.make_contiguous(), b"ab\x01c\x01d");
        assert_eq!(latch.get(), None);
        // An escape split across two reads still works.
        e.filter(b"\x01", &mut out);
        e.filter(b"x", &mut out);
        assert_eq!(latch.get(), Some(Outcome::Quit));
    }
}
