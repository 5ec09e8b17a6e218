//! virtio-blk (virtio 1.2, 5.2) over a raw image file: read, write, flush and get-id; capacity,
//! seg_max, size_max and read-only in its configuration.
//!
//! Requests are guest data: a chain that is malformed (a loop, readable and writable parts out of
//! order, too many or too large segments, a header that does not fit, buffers outside the device's
//! memory) completes with VIRTIO_BLK_S_IOERR written to the last byte of its last device-writable
//! descriptor, and the device goes on with the next request. A chain without any writable byte
//! cannot carry a status; it is returned with a used length of 0.

use std::fs::File;
use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use std::sync::atomic::Ordering;

use super::{Served, VirtioDevice};

/// virtio device type of a block device.
pub const DEVICE_TYPE: u16 = 2;
/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// The request queue's size.
pub const QUEUE_SIZE: u16 = 256;
/// Largest data segment (size_max).
pub const SIZE_MAX: u32 = 1 << 20;
/// Most data segments per request (seg_max): a full queue less the header and the status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Bytes one pass over the queue may move before it yields to the event loop.
const BYTES_PER_PASS: u64 = 8 << 20;
/// Request header: type, reserved, sector.
const HEADER_LEN: u64 = 16;
/// The configuration space we present (virtio_blk_config up to max_secure_erase_sectors).
const CONFIG_LEN: usize = 64;

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image's size could not be read.
    #[error("cannot read the size of the disk image: {0}")]
    Size(std::io::Error),
}

/// One descriptor of a request chain.
#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: u64,
    len: u64,
    writable: bool,
}

/// A virtio block device.
#[derive(Debug)]
pub struct Block {
    file: File,
    readonly: bool,
    /// Capacity in sectors.
    capacity: u64,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    config: [u8; CONFIG_LEN],
    /// VIRTIO_BLK_F_FLUSH negotiated: writes may stay in the host's cache until a flush.
    writeback: bool,
    /// Reused per request.
    segments: Vec<Segment>,
    bounce: Vec<u8>,
}

/// What a request did: its status, and how many bytes it wrote into the driver's buffers.
struct Completion {
    status: u8,
    written: u32,
}

impl Completion {
    fn error() -> Self {
        Self {
            status: VIRTIO_BLK_S_IOERR as u8,
            written: 0,
        }
    }
}

impl Block {
    /// A disk backed by `file` (its size, rounded down to sectors, is the capacity), identified to
    /// the guest by `id` (up to 20 bytes are kept).
    pub fn new(file: File, readonly: bool, id: &str) -> Result<Self, BlockError> {
        let size = file.metadata().map_err(BlockError::Size)?.len();
        let capacity = size / SECTOR_SIZE;
        let mut config = [0u8; CONFIG_LEN];
        let fields: [(usize, &[u8]); 4] = [
            (0, &capacity.to_le_bytes()),
            (8, &SIZE_MAX.to_le_bytes()),
            (12, &SEG_MAX.to_le_bytes()),
            // num_queues (used only with VIRTIO_BLK_F_MQ, which is not offered).
            (34, &1u16.to_le_bytes()),
        ];
        for (at, bytes) in fields {
            if let Some(dst) = config.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        }
        let mut ident = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        for (d, s) in ident.iter_mut().zip(id.bytes()) {
            *d = s;
        }
        Ok(Self {
            file,
            readonly,
            capacity,
            id: ident,
            config,
            writeback: false,
            segments: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            bounce: Vec::new(),
        })
    }

    /// The data pieces of a request: the bytes of the readable (`writable` false) or writable
    /// segments, skipping the first `skip` bytes and leaving out the last `keep_back` bytes.
    fn pieces(
        &self,
        writable: bool,
        skip: u64,
        keep_back: u64,
    ) -> impl Iterator<Item = (u64, u64)> + '_ {
        let end = self.bytes(writable).saturating_sub(keep_back);
        let mut at = 0u64;
        self.segments
            .iter()
            .filter(move |s| s.writable == writable)
            .filter_map(move |s| {
                let seg_start = at;
                at += s.len;
                let (start, stop) = (seg_start.max(skip), at.min(end));
                (start < stop).then(|| (s.addr.wrapping_add(start - seg_start), stop - start))
            })
    }

    fn bytes(&self, writable: bool) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.writable == writable)
            .map(|s| s.len)
            .sum()
    }

    /// Serves the request whose well-formed chain is in `self.segments`.
    fn execute<M: vm_memory::GuestMemory>(&mut self, mem: &M) -> Completion {
        let readable = self.bytes(false);
        let writable = self.bytes(true);
        let mut header = [0u8; HEADER_LEN as usize];
        let mut got = 0usize;
        for (addr, len) in self.pieces(false, 0, readable.saturating_sub(HEADER_LEN)) {
            let Some(dst) = header.get_mut(got..got + len as usize) else {
                return Completion::error();
            };
            if mem.read_slice(dst, GuestAddress(addr)).is_err() {
                return Completion::error();
            }
            got += len as usize;
        }
        if got != header.len() {
            return Completion::error();
        }
        let [t0, t1, t2, t3, _, _, _, _, s @ ..] = header;
        let kind = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes(s);
        // Data from the driver (after the header), or room for data to the driver (before the
        // status byte).
        let (out_len, in_len) = (readable - HEADER_LEN, writable - 1);
        match kind {
            VIRTIO_BLK_T_IN if out_len == 0 => self.transfer(mem, sector, true, in_len),
            VIRTIO_BLK_T_OUT if in_len == 0 && !self.readonly => {
                self.transfer(mem, sector, false, out_len)
            }
            VIRTIO_BLK_T_FLUSH if out_len == 0 && in_len == 0 => match self.file.sync_data() {
                Ok(()) => Completion {
                    status: VIRTIO_BLK_S_OK as u8,
                    written: 0,
                },
                Err(e) => {
                    log::debug!("virtio-blk: flush failed: {e}");
                    Completion::error()
                }
            },
            VIRTIO_BLK_T_GET_ID if out_len == 0 => {
                let mut done = 0usize;
                for (addr, len) in self.pieces(true, 0, 1) {
                    let Some(src) = self.id.get(done..(done + len as usize).min(self.id.len()))
                    else {
                        break;
                    };
                    if mem.write_slice(src, GuestAddress(addr)).is_err() {
                        return Completion::error();
                    }
                    done += src.len();
                }
                Completion {
                    status: VIRTIO_BLK_S_OK as u8,
                    written: done as u32,
                }
            }
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_FLUSH | VIRTIO_BLK_T_GET_ID => {
                // Buffers in the wrong direction for the request, or a write to a read-only disk.
                Completion::error()
            }
            _ => Completion {
                status: VIRTIO_BLK_S_UNSUPP as u8,
                written: 0,
            },
        }
    }

    /// Reads (`to_guest`) or writes `len` bytes at `sector`, segment by segment.
    fn transfer<M: vm_memory::GuestMemory>(
        &mut self,
        mem: &M,
        sector: u64,
        to_guest: bool,
        len: u64,
    ) -> Completion {
        let end = sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(len));
        if !len.is_multiple_of(SECTOR_SIZE)
            || end.is_none_or(|end| end > self.capacity * SECTOR_SIZE)
        {
            log::debug!("virtio-blk: {len} bytes at sector {sector}: outside the disk");
            return Completion::error();
        }
        // Data follows the header (to the disk) or precedes the status byte (to the guest).
        let (skip, keep_back) = if to_guest { (0, 1) } else { (HEADER_LEN, 0) };
        let (count, largest) = self
            .pieces(to_guest, skip, keep_back)
            .fold((0u32, 0u64), |(n, m), (_, l)| (n + 1, m.max(l)));
        if count > SEG_MAX || largest > u64::from(SIZE_MAX) {
            log::debug!("virtio-blk: {count} segments, largest {largest}: over seg_max/size_max");
            return Completion::error();
        }
        let mut bounce = std::mem::take(&mut self.bounce);
        let mut pos = sector * SECTOR_SIZE;
        let mut result = Ok(());
        for (addr, n) in self.pieces(to_guest, skip, keep_back) {
            bounce.resize(n as usize, 0);
            result = if to_guest {
                self.file
                    .read_exact_at(&mut bounce, pos)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        mem.write_slice(&bounce, GuestAddress(addr))
                            .map_err(|e| e.to_string())
                    })
            } else {
                mem.read_slice(&mut bounce, GuestAddress(addr))
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        self.file
                            .write_all_at(&bounce, pos)
                            .map_err(|e| e.to_string())
                    })
            };
            if result.is_err() {
                break;
            }
            pos += n;
        }
        if result.is_ok() && !to_guest && !self.writeback {
            result = self.file.sync_data().map_err(|e| e.to_string());
        }
        self.bounce = bounce;
        match result {
            Ok(()) => Completion {
                status: VIRTIO_BLK_S_OK as u8,
                written: if to_guest { len as u32 } else { 0 },
            },
            Err(e) => {
                log::debug!("virtio-blk: request at sector {sector} failed: {e}");
                Completion::error()
            }
        }
    }

    /// Serves one chain; returns the used length to report.
    fn request<M: vm_memory::GuestMemory>(
        &mut self,
        chain: virtio_queue::DescriptorChain<&M>,
        mem: &M,
    ) -> u32 {
        self.segments.clear();
        let mut open_ended = false;
        for d in chain {
            // Longer than any well-formed request (an indirect table can hold 65535 entries).
            if self.segments.len() > SEG_MAX as usize + 2 {
                open_ended = true;
                break;
            }
            open_ended = d.has_next();
            self.segments.push(Segment {
                addr: d.addr().0,
                len: u64::from(d.len()),
                writable: d.is_write_only(),
            });
        }
        // The status byte: the last byte of the last device-writable descriptor.
        let Some(status_seg) = self.segments.iter().rposition(|s| s.writable && s.len > 0) else {
            log::debug!("virtio-blk: a request without a writable byte; no status possible");
            return 0;
        };
        let in_order = self
            .segments
            .iter()
            .zip(self.segments.iter().skip(1))
            .all(|(a, b)| !a.writable || b.writable);
        let well_formed = !open_ended && in_order && status_seg + 1 == self.segments.len();
        let done = if well_formed {
            self.execute(mem)
        } else {
            log::debug!("virtio-blk: malformed chain (loop, too long, or wrong direction)");
            Completion::error()
        };
        let Some(seg) = self.segments.get(status_seg).copied() else {
            return 0;
        };
        let status_addr = seg.addr.wrapping_add(seg.len - 1);
        match mem.write_obj(done.status, GuestAddress(status_addr)) {
            Ok(()) => done.written.saturating_add(1),
            Err(_) => 0,
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let ro = if self.readonly {
            1 << VIRTIO_BLK_F_RO
        } else {
            0
        };
        (1 << VIRTIO_BLK_F_SIZE_MAX) | (1 << VIRTIO_BLK_F_SEG_MAX) | (1 << VIRTIO_BLK_F_FLUSH) | ro
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn negotiated(&mut self, features: u64) {
        self.writeback = features & (1 << VIRTIO_BLK_F_FLUSH) != 0;
    }

    fn serve<M: vm_memory::GuestMemory>(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &M,
    ) -> Served {
        let mut served = Served::default();
        let mut moved = 0u64;
        for _ in 0..queue.size() {
            if moved >= BYTES_PER_PASS {
                served.more = true;
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                return served;
            };
            let head = chain.head_index();
            let len = self.request(chain, mem);
            moved += self.segments.iter().map(|s| s.len).sum::<u64>();
            match queue.add_used(mem, head, len) {
                Ok(()) => served.used = true,
                Err(e) => log::debug!("virtio-blk: cannot return descriptor {head}: {e}"),
            }
        }
        // A full queue's worth served: there may be more (a bogus available index leaves nothing
        // to pop, and ends the pass above without asking for another).
        served.more = served.more
            || queue
                .avail_idx(mem, Ordering::Acquire)
                .is_ok_and(|i| i.0 != queue.next_avail());
        served
    }

    fn reset(&mut self) {
        self.writeback = false;
    }
}
