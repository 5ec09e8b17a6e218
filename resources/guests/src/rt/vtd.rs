//! A VT-d driver as Linux's intel_iommu programs the unit (legacy mode): the DMAR table, root and
//! context tables, second-level page tables of 3 or 4 levels with 4 KiB, 2 MiB or 1 GiB leaves,
//! queued invalidation (with wait descriptors that write a status word) or register-based
//! invalidation, fault recording and the fault event.
//!
//! Tables live in a pool of pages at [`POOL`] (physical = virtual: the runtime maps 0-4 GiB
//! one to one). Bit positions are the VT-d specification's (rev. 4.x, chapters 9 and 11).

use core::ptr::{read_volatile, write_volatile};

use super::acpi;
use super::io::{mmio_read32, mmio_read64, mmio_write32, mmio_write64};
use super::lapic;
use super::multiboot::cmdline_value;
use crate::{fail, println};

/// Registers (offsets into the unit's page).
pub mod reg {
    pub const VER: u64 = 0x00;
    pub const CAP: u64 = 0x08;
    pub const ECAP: u64 = 0x10;
    pub const GCMD: u64 = 0x18;
    pub const GSTS: u64 = 0x1c;
    pub const RTADDR: u64 = 0x20;
    pub const CCMD: u64 = 0x28;
    pub const FSTS: u64 = 0x34;
    pub const FECTL: u64 = 0x38;
    pub const FEDATA: u64 = 0x3c;
    pub const FEADDR: u64 = 0x40;
    pub const FEUADDR: u64 = 0x44;
    pub const IQH: u64 = 0x80;
    pub const IQT: u64 = 0x88;
    pub const IQA: u64 = 0x90;
    pub const ICS: u64 = 0x9c;
    pub const IECTL: u64 = 0xa0;
    pub const IEDATA: u64 = 0xa4;
    pub const IEADDR: u64 = 0xa8;
    pub const IEUADDR: u64 = 0xac;
    pub const IRTA: u64 = 0xb8;
}

/// GCMD/GSTS bits.
pub mod gcmd {
    pub const TE: u32 = 1 << 31;
    pub const SRTP: u32 = 1 << 30;
    pub const QIE: u32 = 1 << 26;
    pub const IRE: u32 = 1 << 25;
    pub const SIRTP: u32 = 1 << 24;
    pub const CFI: u32 = 1 << 23;
    /// The GSTS bits a command writes back: all but the one-shot ones (SRTP, SFL, WBF, SIRTP),
    /// as Linux masks them.
    pub const KEEP: u32 = 0x96ff_ffff;
}

/// FSTS bits.
pub mod fsts {
    pub const PFO: u32 = 1 << 0;
    pub const PPF: u32 = 1 << 1;
    pub const IQE: u32 = 1 << 4;
}

/// Fault reasons (VT-d 7.1.3) the programs check.
pub mod reason {
    pub const ROOT_NOT_PRESENT: u8 = 0x1;
    pub const CONTEXT_INVALID: u8 = 0x3;
    pub const BEYOND_WIDTH: u8 = 0x4;
    pub const WRITE: u8 = 0x5;
    pub const READ: u8 = 0x6;
    pub const PAGING_ENTRY_INACCESSIBLE: u8 = 0x7;
    pub const ROOT_TABLE_INACCESSIBLE: u8 = 0x8;
    pub const CONTEXT_TABLE_INACCESSIBLE: u8 = 0x9;
    pub const ROOT_RESERVED: u8 = 0xa;
    pub const CONTEXT_RESERVED: u8 = 0xb;
    pub const PAGING_ENTRY_RESERVED: u8 = 0xc;
    pub const IRTE_NOT_PRESENT: u8 = 0x22;
    pub const COMPATIBILITY_BLOCKED: u8 = 0x25;
    pub const SOURCE_ID: u8 = 0x26;
}

/// Second-level entry bits.
pub const R: u64 = 1 << 0;
pub const W: u64 = 1 << 1;
const PS: u64 = 1 << 7;

/// The page pool: 1 MiB of RAM at 32 MiB.
pub const POOL: u64 = 0x0200_0000;
const POOL_PAGES: u64 = 256;

/// Interrupt vectors of the unit's events.
pub const FAULT_VECTOR: u8 = 0x60;
pub const WAIT_VECTOR: u8 = 0x61;

fn rd64(addr: u64) -> u64 {
    // SAFETY: RAM of the pool or a table the program built, identity-mapped.
    unsafe { read_volatile(addr as *const u64) }
}

fn wr64(addr: u64, v: u64) {
    // SAFETY: as above.
    unsafe { write_volatile(addr as *mut u64, v) }
}

/// How the program invalidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// The invalidation queue, each batch followed by a wait descriptor with a status write.
    Queued,
    /// The CCMD and IOTLB registers.
    Register,
}

/// IOTLB invalidation granularities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    Global,
    Domain(u16),
    /// Domain, page-aligned address, address mask (log2 of 4 KiB pages).
    Page(u16, u64, u8),
}

/// What the command line asks of the driver: `levels=3|4 page=4k|2m|1g inv=qi|reg` (defaults
/// 4, 4k, qi).
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub levels: u8,
    /// log2 of the leaf size.
    pub shift: u32,
    pub inv: Invalidation,
}

impl Options {
    pub fn from_cmdline() -> Options {
        let levels = match cmdline_value("levels") {
            None | Some("4") => 4,
            Some("3") => 3,
            Some(v) => fail!("levels={}: expected 3 or 4", v),
        };
        let shift = match cmdline_value("page") {
            None | Some("4k") => 12,
            Some("2m") => 21,
            Some("1g") => 30,
            Some(v) => fail!("page={}: expected 4k, 2m or 1g", v),
        };
        let inv = match cmdline_value("inv") {
            None | Some("qi") => Invalidation::Queued,
            Some("reg") => Invalidation::Register,
            Some(v) => fail!("inv={}: expected qi or reg", v),
        };
        Options { levels, shift, inv }
    }
}

/// One recorded fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub address: u64,
    pub source_id: u16,
    pub reason: u8,
    /// A read (true) or a write.
    pub read: bool,
}

/// The unit as the program drives it.
pub struct Vtd {
    pub base: u64,
    pub haw: u8,
    /// The DRHD's flags.
    pub flags: u8,
    pub cap: u64,
    pub ecap: u64,
    pub inv: Invalidation,
    /// Page-table levels of the contexts the program builds (3 or 4).
    pub levels: u8,
    pub root: u64,
    next_page: u64,
    queue: u64,
    tail: u64,
    status: u64,
    status_seq: u32,
}

impl Vtd {
    /// Finds the unit through the DMAR table: its host address width, one DRHD with
    /// INCLUDE_PCI_ALL. None if the firmware has no DMAR table.
    pub fn find() -> Option<(u8, u64, u8)> {
        let body = acpi::find_table(b"DMAR")?.body();
        let haw = body[0] + 1;
        let Some(drhd) = dmar_structures(body).find(|&(kind, s)| kind == 0 && s.len() >= 16) else {
            fail!("DMAR: no DRHD")
        };
        let mut b = [0u8; 8];
        b.copy_from_slice(&drhd.1[8..16]);
        Some((haw, u64::from_le_bytes(b), drhd.1[4]))
    }

    pub fn r32(&self, off: u64) -> u32 {
        // SAFETY: the unit's register page, identity-mapped MMIO.
        unsafe { mmio_read32(self.base + off) }
    }
    pub fn w32(&self, off: u64, v: u32) {
        // SAFETY: as above.
        unsafe { mmio_write32(self.base + off, v) }
    }
    pub fn r64(&self, off: u64) -> u64 {
        // SAFETY: as above.
        unsafe { mmio_read64(self.base + off) }
    }
    pub fn w64(&self, off: u64, v: u64) {
        // SAFETY: as above.
        unsafe { mmio_write64(self.base + off, v) }
    }

    /// The unit the DMAR table describes, as Linux starts it: capabilities checked against
    /// `opts`, the queue on (for queued invalidation), fault and completion events to this CPU.
    /// Prints what it found. None without a DMAR table.
    pub fn start(opts: &Options) -> Option<Vtd> {
        let (haw, base, flags) = Vtd::find()?;
        println!(
            "dmar: host address width {} drhd {:#x} flags {:#x}",
            haw, base, flags
        );
        let mut v = Vtd::new(base, haw, opts.inv, opts.levels);
        v.flags = flags;
        let ver = v.r32(reg::VER);
        println!(
            "vtd: ver {}:{} cap {:#x} ecap {:#x}; {}-level tables, {} KiB leaves, {} invalidation, caching mode {}",
            (ver >> 4) & 0xf,
            ver & 0xf,
            v.cap,
            v.ecap,
            opts.levels,
            (1u64 << opts.shift) >> 10,
            if opts.inv == Invalidation::Queued {
                "queued"
            } else {
                "register"
            },
            if v.caching_mode() { "on" } else { "off" }
        );
        if !v.supports_leaf(opts.shift) {
            fail!("leaves of {} KiB not in SLLPS", (1u64 << opts.shift) >> 10);
        }
        lapic::enable();
        if opts.inv == Invalidation::Queued {
            v.enable_qi();
        }
        v.enable_events();
        Some(v)
    }

    /// Reads the capabilities and sets up the pool; the unit stays as it is.
    pub fn new(base: u64, haw: u8, inv: Invalidation, levels: u8) -> Vtd {
        let mut v = Vtd {
            base,
            haw,
            flags: 0,
            cap: 0,
            ecap: 0,
            inv,
            levels,
            root: 0,
            next_page: POOL,
            queue: 0,
            tail: 0,
            status: 0,
            status_seq: 0,
        };
        v.cap = v.r64(reg::CAP);
        v.ecap = v.r64(reg::ECAP);
        if inv == Invalidation::Queued && !v.has_qi() {
            fail!("queued invalidation asked for, ECAP.QI clear");
        }
        let sagaw = (v.cap >> 8) & 0x1f;
        let bit = if levels == 3 { 1 << 1 } else { 1 << 2 };
        if sagaw & bit == 0 {
            fail!("{}-level tables not in SAGAW {:#x}", levels, sagaw);
        }
        v.root = v.alloc();
        v.status = v.alloc();
        v
    }

    pub fn caching_mode(&self) -> bool {
        self.cap & (1 << 7) != 0
    }
    pub fn has_qi(&self) -> bool {
        self.ecap & (1 << 1) != 0
    }
    pub fn has_pt(&self) -> bool {
        self.ecap & (1 << 6) != 0
    }
    /// SLLPS bit for a leaf at `shift` (21 or 30); 12 always works.
    pub fn supports_leaf(&self, shift: u32) -> bool {
        match shift {
            12 => true,
            21 => self.cap & (1 << 34) != 0,
            30 => self.cap & (1 << 35) != 0,
            _ => false,
        }
    }
    pub fn fault_records(&self) -> u64 {
        ((self.cap >> 40) & 0xff) + 1
    }
    fn fault_record_base(&self) -> u64 {
        ((self.cap >> 24) & 0x3ff) * 16
    }
    fn iotlb_base(&self) -> u64 {
        ((self.ecap >> 8) & 0x3ff) * 16
    }

    /// A zeroed page from the pool.
    pub fn alloc(&mut self) -> u64 {
        if self.next_page >= POOL + POOL_PAGES * 4096 {
            fail!("page pool exhausted");
        }
        let page = self.next_page;
        self.next_page += 4096;
        for i in 0..512 {
            wr64(page + 8 * i, 0);
        }
        page
    }

    /// Sets a GCMD bit the way Linux does (current status without the one-shot bits, plus the bit)
    /// and waits for GSTS to follow.
    pub fn command(&self, bit: u32, on: bool) {
        let status = self.r32(reg::GSTS) & gcmd::KEEP;
        let value = if on { status | bit } else { status & !bit };
        self.w32(reg::GCMD, value);
        for _ in 0..1_000_000 {
            if (self.r32(reg::GSTS) & bit != 0) == on {
                return;
            }
        }
        fail!("GSTS did not follow GCMD bit {:#x}", bit);
    }

    /// The one-shot "set root table pointer".
    pub fn set_root(&self, root: u64) {
        self.w64(reg::RTADDR, root);
        let status = self.r32(reg::GSTS) & gcmd::KEEP;
        self.w32(reg::GCMD, status | gcmd::SRTP);
        for _ in 0..1_000_000 {
            if self.r32(reg::GSTS) & gcmd::SRTP != 0 {
                return;
            }
        }
        fail!("SRTP did not complete");
    }

    /// The invalidation queue: one page (256 descriptors), then QIE.
    pub fn enable_qi(&mut self) {
        if self.queue == 0 {
            self.queue = self.alloc();
        }
        self.tail = 0;
        self.w64(reg::IQT, 0);
        self.w64(reg::IQA, self.queue);
        self.command(gcmd::QIE, true);
    }

    /// Points the fault event and the invalidation-completion event at this CPU and unmasks
    /// them.
    pub fn enable_events(&self) {
        let address = 0xfee0_0000 | (lapic::id() << 12);
        self.w32(reg::FEDATA, u32::from(FAULT_VECTOR));
        self.w32(reg::FEADDR, address);
        self.w32(reg::FEUADDR, 0);
        self.w32(reg::FECTL, 0);
        self.w32(reg::IEDATA, u32::from(WAIT_VECTOR));
        self.w32(reg::IEADDR, address);
        self.w32(reg::IEUADDR, 0);
        self.w32(reg::IECTL, 0);
    }

    /// Writes `descs` to the queue and a wait descriptor with a status write (plus an interrupt
    /// if `interrupt`) after them, moves the tail and spins on the status word, as Linux's
    /// qi_submit_sync does. Returns false if the unit reports an invalidation queue error.
    pub fn submit(&mut self, descs: &[(u64, u64)], interrupt: bool) -> bool {
        self.status_seq += 1;
        let seq = self.status_seq;
        wr64(self.status, 0);
        let wait_lo = 5 | (1 << 5) | if interrupt { 1 << 4 } else { 0 } | (u64::from(seq) << 32);
        for &(lo, hi) in descs.iter().chain(&[(wait_lo, self.status)]) {
            self.push(lo, hi);
        }
        self.w32(reg::IQT, (self.tail << 4) as u32);
        for _ in 0..10_000_000 {
            // SAFETY: the status word in the pool, written by the unit.
            if unsafe { read_volatile(self.status as *const u32) } == seq {
                return true;
            }
            if self.r32(reg::FSTS) & fsts::IQE != 0 {
                return false;
            }
        }
        fail!("invalidation wait {} did not complete", seq)
    }

    /// Writes one descriptor at the tail (without moving IQT).
    pub fn push(&mut self, lo: u64, hi: u64) {
        let at = self.queue + 16 * self.tail;
        wr64(at, lo);
        wr64(at + 8, hi);
        self.tail = (self.tail + 1) % 256;
    }

    /// Where the next descriptor goes, and the queue's base.
    pub fn queue(&self) -> (u64, u64) {
        (self.queue, self.tail)
    }

    /// Sets the software tail (after the program moved IQT itself).
    pub fn set_tail(&mut self, tail: u64) {
        self.tail = tail % 256;
    }

    /// Global context-cache invalidation.
    pub fn flush_contexts(&mut self) {
        match self.inv {
            Invalidation::Queued => {
                if !self.submit(&[(1 | (1 << 4), 0)], false) {
                    fail!("context invalidation: queue error");
                }
            }
            Invalidation::Register => self.ccmd(1 << 61),
        }
    }

    /// Device-selective context-cache invalidation of `sid` in domain `did`.
    pub fn flush_context(&mut self, did: u16, sid: u16) {
        match self.inv {
            Invalidation::Queued => {
                let lo = 1 | (3 << 4) | (u64::from(did) << 16) | (u64::from(sid) << 32);
                if !self.submit(&[(lo, 0)], false) {
                    fail!("context invalidation: queue error");
                }
            }
            Invalidation::Register => {
                self.ccmd((3 << 61) | (u64::from(sid) << 16) | u64::from(did));
            }
        }
    }

    fn ccmd(&self, command: u64) {
        self.w64(reg::CCMD, (1 << 63) | command);
        for _ in 0..1_000_000 {
            let v = self.r64(reg::CCMD);
            if v & (1 << 63) == 0 {
                if (v >> 59) & 3 == 0 {
                    fail!("CCMD {:#x}: CAIG 0", command);
                }
                return;
            }
        }
        fail!("CCMD did not complete");
    }

    /// IOTLB invalidation; returns the granularity the unit reports (register-based: IAIG; queued:
    /// the one asked).
    pub fn flush(&mut self, what: Flush) -> u64 {
        let (gran, did, addr, am) = match what {
            Flush::Global => (1u64, 0u16, 0u64, 0u8),
            Flush::Domain(d) => (2, d, 0, 0),
            Flush::Page(d, a, am) => (3, d, a, am),
        };
        match self.inv {
            Invalidation::Queued => {
                // Drain reads and writes (DR, DW) as Linux asks when the unit supports it.
                let lo = 2 | (gran << 4) | (1 << 6) | (1 << 7) | (u64::from(did) << 16);
                if !self.submit(&[(lo, addr | u64::from(am))], false) {
                    fail!("IOTLB invalidation: queue error");
                }
                gran
            }
            Invalidation::Register => {
                let at = self.iotlb_base();
                if gran == 3 {
                    self.w64(at, addr | u64::from(am));
                }
                self.w64(
                    at + 8,
                    (1 << 63) | (gran << 60) | (1 << 49) | (1 << 48) | (u64::from(did) << 32),
                );
                for _ in 0..1_000_000 {
                    let v = self.r64(at + 8);
                    if v & (1 << 63) == 0 {
                        let done = (v >> 57) & 3;
                        if done == 0 {
                            fail!("IOTLB invalidation {:?}: IAIG 0", what);
                        }
                        return done;
                    }
                }
                fail!("IOTLB invalidation did not complete")
            }
        }
    }

    /// The context table of bus 0, made present in the root table on first use.
    pub fn context_table(&mut self) -> u64 {
        let lo = rd64(self.root);
        if lo & 1 != 0 {
            return lo & !0xfff;
        }
        let table = self.alloc();
        wr64(self.root, table | 1);
        table
    }

    /// A translated context for device `devfn` of bus 0 in domain `did`, with a new page-table
    /// root; returns the root.
    pub fn translated_context(&mut self, devfn: u8, did: u16) -> u64 {
        let table = self.alloc();
        self.set_context(devfn, table, 0, did);
        table
    }

    /// Writes the context entry of `devfn`: `tt` 0 = translated through `table`, 2 =
    /// pass-through.
    pub fn set_context(&mut self, devfn: u8, table: u64, tt: u64, did: u16) {
        let ctx = self.context_table() + 16 * u64::from(devfn);
        let aw = if self.levels == 3 { 1 } else { 2 };
        wr64(ctx + 8, aw | (u64::from(did) << 8));
        wr64(ctx, table | (tt << 2) | 1);
    }

    /// Writes a raw context entry.
    pub fn set_context_raw(&mut self, devfn: u8, lo: u64, hi: u64) {
        let ctx = self.context_table() + 16 * u64::from(devfn);
        wr64(ctx + 8, hi);
        wr64(ctx, lo);
    }

    /// The address of the entry for `iova` at the level whose pages are `1 << shift` bytes,
    /// creating the tables above it.
    pub fn entry(&mut self, table: u64, iova: u64, shift: u32) -> u64 {
        let mut t = table;
        let mut level_shift = 12 + 9 * (u32::from(self.levels) - 1);
        loop {
            let at = t + 8 * ((iova >> level_shift) & 0x1ff);
            if level_shift == shift {
                return at;
            }
            let e = rd64(at);
            t = if e & (R | W) != 0 {
                e & 0x000f_ffff_ffff_f000
            } else {
                let next = self.alloc();
                wr64(at, next | R | W);
                next
            };
            level_shift -= 9;
        }
    }

    /// Maps `[iova, iova + len)` to `[gpa, ...)` with leaves of `1 << shift` bytes (both
    /// aligned to it). With caching mode the unit may cache not-present entries, so the new
    /// mapping is invalidated page-selectively, as Linux does.
    pub fn map(&mut self, table: u64, did: u16, iova: u64, gpa: u64, len: u64, shift: u32) {
        let size = 1u64 << shift;
        let mut off = 0;
        while off < len {
            let at = self.entry(table, iova + off, shift);
            let leaf = if shift > 12 { PS } else { 0 };
            wr64(at, (gpa + off) | leaf | R | W);
            off += size;
        }
        if self.caching_mode() {
            self.flush_range(did, iova, len, shift);
        }
    }

    /// Page-selective invalidation of a range mapped with `1 << shift` leaves: one PSI per leaf
    /// with the leaf's address mask (a unit may do more; the result reports it).
    pub fn flush_range(&mut self, did: u16, iova: u64, len: u64, shift: u32) {
        let size = 1u64 << shift;
        let mut off = 0;
        while off < len {
            self.flush(Flush::Page(did, iova + off, (shift - 12) as u8));
            off += size;
        }
    }

    /// Sets the leaf for `iova` at `shift` to `value` (a new target, or 0 to unmap).
    pub fn set_leaf(&mut self, table: u64, iova: u64, shift: u32, value: u64) {
        let at = self.entry(table, iova, shift);
        wr64(at, value);
    }

    /// Root table in, caches flushed (globally), then translation on: Linux's order.
    pub fn enable_translation(&mut self) {
        self.set_root(self.root);
        self.flush_contexts();
        self.flush(Flush::Global);
        self.command(gcmd::TE, true);
    }

    /// The fault record at FRI if one is pending.
    pub fn pending_fault(&self) -> Option<(u64, Fault)> {
        let status = self.r32(reg::FSTS);
        if status & fsts::PPF == 0 {
            return None;
        }
        let index = u64::from((status >> 8) & 0xff);
        let at = self.fault_record_base() + 16 * index;
        let lo = self.r64(at);
        let hi = self.r64(at + 8);
        if hi & (1 << 63) == 0 {
            return None;
        }
        Some((
            index,
            Fault {
                address: lo & !0xfff,
                source_id: hi as u16,
                reason: (hi >> 32) as u8,
                read: hi & (1 << 62) != 0,
            },
        ))
    }

    /// Clears every fault record and FSTS (PFO, IQE included).
    pub fn clear_faults(&self) {
        for i in 0..self.fault_records() {
            let at = self.fault_record_base() + 16 * i + 12;
            self.w32(at, 1 << 31);
        }
        self.w32(reg::FSTS, fsts::PFO | fsts::IQE);
    }

    /// Clears one fault record.
    pub fn clear_fault(&self, index: u64) {
        self.w32(self.fault_record_base() + 16 * index + 12, 1 << 31);
    }

    /// The register-based global invalidations and the queue off: the state after reset, with
    /// the pool kept.
    pub fn disable(&mut self) {
        self.command(gcmd::TE, false);
        if self.r32(reg::GSTS) & gcmd::QIE != 0 {
            self.command(gcmd::QIE, false);
        }
    }
}

/// Interrupt remapping as Linux sets it up: a 256-entry table (S = 7) in the pool, IRTA with or
/// without extended interrupt mode, SIRTP, a global interrupt-entry-cache invalidation, IRE, and
/// compatibility-format interrupts blocked.
pub struct Irt {
    pub table: u64,
    /// Extended interrupt mode: 32-bit x2APIC destinations.
    pub eime: bool,
}

/// IRTE fields (low quadword).
pub mod irte {
    pub const P: u64 = 1;
    pub const FPD: u64 = 1 << 1;
    pub const TM: u64 = 1 << 4;
    /// High quadword: verify the requester against SID with SQ = 0 (all 16 bits).
    pub const SVT_SID: u64 = 1 << 18;
}

impl Irt {
    /// Entries in the table.
    pub const ENTRIES: u64 = 256;

    /// The low quadword of a present, fixed, physical-destination entry for `vector` on the CPU
    /// whose APIC id is `dest`: bits 63:32 in extended interrupt mode, bits 47:40 otherwise.
    pub fn entry(&self, vector: u8, dest: u32) -> u64 {
        let dest = if self.eime {
            u64::from(dest)
        } else {
            u64::from(dest & 0xff) << 8
        };
        irte::P | (u64::from(vector) << 16) | (dest << 32)
    }

    /// Writes entry `index`: the high quadword (SID, SQ, SVT) first, the low one (P) last.
    pub fn set(&self, index: u16, lo: u64, hi: u64) {
        let at = self.table + 16 * u64::from(index);
        wr64(at + 8, hi);
        wr64(at, lo);
    }

    /// The MSI address and data of a remappable-format interrupt for `handle`, with
    /// `subhandle` in the data when given (SHV).
    pub fn msi(handle: u16, subhandle: Option<u16>) -> (u32, u32) {
        let h = u32::from(handle);
        let mut address = 0xfee0_0000 | ((h & 0x7fff) << 5) | (1 << 4) | ((h >> 15) << 2);
        if subhandle.is_some() {
            address |= 1 << 3;
        }
        (address, subhandle.map_or(0, u32::from))
    }

    /// An I/O APIC redirection entry in remappable format for entry `index`: bit 48, the index in
    /// bits 63:49 and 11, `vector` (Linux puts the pin there, for its explicit EOIs) and `flags`
    /// (trigger mode, mask) in the low half.
    pub fn ioapic_entry(index: u16, vector: u8, flags: u32) -> (u32, u32) {
        let i = u32::from(index);
        let low = u32::from(vector) | flags | ((i >> 15) << 11);
        let high = (1 << 16) | ((i & 0x7fff) << 17);
        (low, high)
    }
}

impl Vtd {
    /// ECAP.IR.
    pub fn has_ir(&self) -> bool {
        self.ecap & (1 << 3) != 0
    }
    /// ECAP.EIM.
    pub fn has_eim(&self) -> bool {
        self.ecap & (1 << 4) != 0
    }

    /// Sets up interrupt remapping as Linux does (the queue must be on).
    pub fn enable_interrupt_remapping(&mut self, eime: bool) -> Irt {
        let table = self.alloc();
        self.w64(reg::IRTA, table | if eime { 1 << 11 } else { 0 } | 7);
        let status = self.r32(reg::GSTS) & gcmd::KEEP;
        self.w32(reg::GCMD, status | gcmd::SIRTP);
        if self.r32(reg::GSTS) & gcmd::SIRTP == 0 {
            fail!("SIRTP did not complete");
        }
        self.flush_iec(None);
        self.command(gcmd::IRE, true);
        if self.r32(reg::GSTS) & gcmd::CFI != 0 {
            self.command(gcmd::CFI, false);
        }
        Irt { table, eime }
    }

    /// Interrupt entry cache invalidation: global, or of the 2^`mask` entries around `index`.
    pub fn flush_iec(&mut self, entries: Option<(u16, u8)>) {
        let lo = match entries {
            None => 4,
            Some((index, mask)) => {
                4 | (1 << 4) | (u64::from(mask) << 27) | (u64::from(index) << 32)
            }
        };
        if !self.submit(&[(lo, 0)], false) {
            fail!("interrupt entry cache invalidation: queue error");
        }
    }
}

/// The remapping structures after the DMAR table's header: (type, bytes). A structure whose length
/// is impossible fails the program.
fn dmar_structures(body: &'static [u8]) -> impl Iterator<Item = (u16, &'static [u8])> {
    let mut at = 12;
    core::iter::from_fn(move || {
        if at + 4 > body.len() {
            return None;
        }
        let kind = u16::from_le_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_le_bytes([body[at + 2], body[at + 3]]));
        if len < 4 || at + len > body.len() {
            fail!("DMAR: bad structure length {} at {}", len, at);
        }
        at += len;
        Some((kind, &body[at - len..at]))
    })
}

/// The DMAR table's flags (bit 0 INTR_REMAP, bit 1 X2APIC_OPT_OUT) and the first I/O APIC
/// device scope of its DRHDs: (enumeration id, source-id).
pub fn dmar_interrupt_info() -> (u8, Option<(u8, u16)>) {
    let Some(dmar) = acpi::find_table(b"DMAR") else {
        fail!("no DMAR table")
    };
    let body = dmar.body();
    for (_, drhd) in dmar_structures(body).filter(|&(kind, _)| kind == 0) {
        let mut at = 16;
        while at + 6 <= drhd.len() {
            let (kind, len) = (drhd[at], usize::from(drhd[at + 1]));
            if len < 8 || at + len > drhd.len() {
                fail!("DMAR: bad device scope length {} at {}", len, at);
            }
            if kind == 3 {
                let (id, bus, dev, func) = (drhd[at + 4], drhd[at + 5], drhd[at + 6], drhd[at + 7]);
                let sid = (u16::from(bus) << 8) | (u16::from(dev) << 3) | u16::from(func);
                return (body[1], Some((id, sid)));
            }
            at += len;
        }
    }
    (body[1], None)
}
