//! Finding and walking the ACPI tables: RSDP, XSDT/RSDT, any table by
//! signature (checksum checked), MADT entries.

use super::paging::map_identity_above_4g;

/// Minimum size of a table: the standard 36-byte header.
pub const HEADER_LEN: u32 = 36;
/// Tables claiming to be larger than this are treated as corrupt.
pub const MAX_TABLE_LEN: u32 = 1 << 24;

fn rd8(addr: u64) -> u8 {
    // SAFETY: callers only pass identity-mapped addresses (firmware areas
    // below 1 MiB or tables that were mapped first).
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

fn rd16(addr: u64) -> u16 {
    u16::from_le_bytes([rd8(addr), rd8(addr + 1)])
}

fn rd32(addr: u64) -> u32 {
    u32::from_le_bytes([rd8(addr), rd8(addr + 1), rd8(addr + 2), rd8(addr + 3)])
}

fn rd64(addr: u64) -> u64 {
    rd32(addr) as u64 | ((rd32(addr + 4) as u64) << 32)
}

fn checksum_ok(addr: u64, len: u64) -> bool {
    let mut sum = 0u8;
    for i in 0..len {
        sum = sum.wrapping_add(rd8(addr + i));
    }
    sum == 0
}

fn ensure_mapped(addr: u64, len: u64) -> bool {
    map_identity_above_4g(addr.saturating_add(len)).is_ok()
}

/// The Root System Description Pointer.
#[derive(Clone, Copy, Debug)]
pub struct Rsdp {
    /// Where it was found.
    pub address: u64,
    pub revision: u8,
    pub oem_id: [u8; 6],
    pub rsdt: u32,
    /// 0 for revision 0.
    pub xsdt: u64,
}

fn parse_rsdp(addr: u64) -> Option<Rsdp> {
    const SIG: &[u8; 8] = b"RSD PTR ";
    for (i, b) in SIG.iter().enumerate() {
        if rd8(addr + i as u64) != *b {
            return None;
        }
    }
    if !checksum_ok(addr, 20) {
        return None;
    }
    let revision = rd8(addr + 15);
    let mut oem_id = [0; 6];
    for (i, b) in oem_id.iter_mut().enumerate() {
        *b = rd8(addr + 9 + i as u64);
    }
    let rsdt = rd32(addr + 16);
    let mut xsdt = 0;
    if revision >= 2 {
        let len = rd32(addr + 20);
        if !(36..=4096).contains(&len) || !checksum_ok(addr, len as u64) {
            return None;
        }
        xsdt = rd64(addr + 24);
    }
    Some(Rsdp {
        address: addr,
        revision,
        oem_id,
        rsdt,
        xsdt,
    })
}

/// Scans the first KiB of the EBDA and then 0xE0000..0xFFFFF (16-byte
/// steps) for a valid RSDP.
pub fn find_rsdp() -> Option<Rsdp> {
    let ebda = (rd16(0x40e) as u64) << 4;
    if (0x400..0xa0000).contains(&ebda) {
        let mut a = ebda & !15;
        while a < ebda + 1024 {
            if let Some(r) = parse_rsdp(a) {
                return Some(r);
            }
            a += 16;
        }
    }
    let mut a = 0xe0000;
    while a < 0x100000 {
        if let Some(r) = parse_rsdp(a) {
            return Some(r);
        }
        a += 16;
    }
    None
}

/// A system description table in memory (header + body).
#[derive(Clone, Copy, Debug)]
pub struct Table {
    pub address: u64,
    pub length: u32,
}

impl Table {
    /// Validates the table at `address`: sane length and zero checksum.
    pub fn at(address: u64) -> Option<Table> {
        if address == 0 || !ensure_mapped(address, HEADER_LEN as u64) {
            return None;
        }
        let length = rd32(address + 4);
        if !(HEADER_LEN..=MAX_TABLE_LEN).contains(&length) || !ensure_mapped(address, length as u64)
        {
            return None;
        }
        checksum_ok(address, length as u64).then_some(Table { address, length })
    }

    pub fn signature(&self) -> [u8; 4] {
        [
            rd8(self.address),
            rd8(self.address + 1),
            rd8(self.address + 2),
            rd8(self.address + 3),
        ]
    }

    pub fn revision(&self) -> u8 {
        rd8(self.address + 8)
    }

    /// The whole table.
    pub fn bytes(&self) -> &'static [u8] {
        // SAFETY: the table was mapped and validated by `at`; firmware
        // tables are not written by the program.
        unsafe { core::slice::from_raw_parts(self.address as *const u8, self.length as usize) }
    }

    /// The bytes after the 36-byte header.
    pub fn body(&self) -> &'static [u8] {
        &self.bytes()[HEADER_LEN as usize..]
    }
}

/// The root table: the XSDT if the RSDP has one, else the RSDT.
/// Returns the table and the width of its entries (8 or 4).
pub fn root_table(rsdp: &Rsdp) -> Option<(Table, usize)> {
    if rsdp.revision >= 2 && rsdp.xsdt != 0 {
        let t = Table::at(rsdp.xsdt)?;
        (&t.signature() == b"XSDT").then_some((t, 8))
    } else {
        let t = Table::at(rsdp.rsdt as u64)?;
        (&t.signature() == b"RSDT").then_some((t, 4))
    }
}

/// Iterator over the addresses listed by the root table.
#[derive(Clone, Debug)]
pub struct TableAddresses {
    next: u64,
    end: u64,
    width: usize,
}

impl Iterator for TableAddresses {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        if self.next + self.width as u64 > self.end {
            return None;
        }
        let a = if self.width == 8 {
            rd64(self.next)
        } else {
            rd32(self.next) as u64
        };
        self.next += self.width as u64;
        Some(a)
    }
}

/// The table addresses listed in the XSDT (or RSDT).
pub fn table_addresses() -> Option<TableAddresses> {
    let rsdp = find_rsdp()?;
    let (root, width) = root_table(&rsdp)?;
    Some(TableAddresses {
        next: root.address + HEADER_LEN as u64,
        end: root.address + root.length as u64,
        width,
    })
}

/// Finds the first table with signature `sig` whose checksum is correct.
pub fn find_table(sig: &[u8; 4]) -> Option<Table> {
    table_addresses()?
        .filter_map(Table::at)
        .find(|t| &t.signature() == sig)
}

/// The Multiple APIC Description Table ("APIC").
#[derive(Clone, Copy, Debug)]
pub struct Madt {
    pub table: Table,
}

/// One MADT entry: its type and all its bytes (including type and length).
#[derive(Clone, Copy, Debug)]
pub struct MadtEntry {
    pub kind: u8,
    pub bytes: &'static [u8],
}

/// A processor from a type-0 (Local APIC) or type-9 (Local x2APIC) entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Processor {
    pub acpi_id: u32,
    pub apic_id: u32,
    /// Bit 0: enabled; bit 1: online capable.
    pub flags: u32,
}

impl Processor {
    pub fn enabled(&self) -> bool {
        self.flags & 1 != 0
    }
}

impl Madt {
    pub fn find() -> Option<Madt> {
        let table = find_table(b"APIC")?;
        (table.length >= HEADER_LEN + 8).then_some(Madt { table })
    }

    pub fn local_apic_address(&self) -> u32 {
        rd32(self.table.address + 36)
    }

    pub fn flags(&self) -> u32 {
        rd32(self.table.address + 40)
    }

    pub fn entries(&self) -> MadtEntries {
        MadtEntries {
            rest: &self.table.bytes()[HEADER_LEN as usize + 8..],
        }
    }

    /// The ids of the I/O APICs (type-1 entries).
    pub fn ioapic_ids(&self) -> impl Iterator<Item = u8> {
        self.entries()
            .filter(|e| e.kind == 1 && e.bytes.len() >= 12)
            .map(|e| e.bytes[2])
    }

    /// Processors listed by type-0 and type-9 entries (enabled or not).
    pub fn processors(&self) -> impl Iterator<Item = Processor> {
        self.entries().filter_map(|e| {
            let b = e.bytes;
            match (e.kind, b.len()) {
                (0, 8..) => Some(Processor {
                    acpi_id: b[2] as u32,
                    apic_id: b[3] as u32,
                    flags: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                }),
                (9, 16..) => Some(Processor {
                    acpi_id: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
                    apic_id: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                    flags: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
                }),
                _ => None,
            }
        })
    }
}

/// Iterator over MADT entries; stops at the first malformed one.
#[derive(Clone, Debug)]
pub struct MadtEntries {
    rest: &'static [u8],
}

impl Iterator for MadtEntries {
    type Item = MadtEntry;
    fn next(&mut self) -> Option<MadtEntry> {
        if self.rest.len() < 2 {
            return None;
        }
        let len = self.rest[1] as usize;
        if len < 2 || len > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(MadtEntry {
            kind: bytes[0],
            bytes,
        })
    }
}

/// FADT offsets (ACPI 6.5, table 5.9).
mod fadt {
    pub const DSDT: u64 = 40;
    pub const PM1A_CNT_BLK: u64 = 64;
    pub const PM1B_CNT_BLK: u64 = 68;
    pub const FLAGS: u64 = 112;
    pub const X_DSDT: u64 = 140;
    pub const SLEEP_CONTROL_REG: u64 = 244;
    /// FLAGS bit 20.
    pub const HW_REDUCED_ACPI: u32 = 1 << 20;
}

/// Generic Address Structure address space of system I/O.
const GAS_SYSTEM_IO: u8 = 1;

/// The SLP_TYPa value of S5: the first element of the DSDT's `\_S5_` package
/// (NameOp "_S5_" PackageOp PkgLength NumElements, then a ZeroOp, OneOp or
/// BytePrefix constant).
fn s5_sleep_type(dsdt: &Table) -> Option<u8> {
    let b = dsdt.body();
    let at = b.windows(5).position(|w| w == b"_S5_\x12")? + 5;
    // PkgLength: bits 7:6 of the lead byte count the bytes that follow it.
    let pkg_len_bytes = 1 + (*b.get(at)? >> 6) as usize;
    let first = at + pkg_len_bytes + 1;
    match *b.get(first)? {
        0x00 => Some(0),
        0x01 => Some(1),
        0x0a => b.get(first + 1).copied(),
        _ => None,
    }
}

/// Enters ACPI S5 (soft off) the way an OS does: the FADT says where the
/// sleep control register is (the hardware-reduced SLEEP_CONTROL_REG, or the
/// PM1 control blocks), and the DSDT which SLP_TYP value means S5. Returns
/// why it could not, or (if the platform ignored the write) nothing useful:
/// the caller should treat a return as failure.
pub fn poweroff() -> &'static str {
    let Some(facp) = find_table(b"FACP") else {
        return "no FADT";
    };
    let fadt = facp.address;
    // FADT revision 1 ends after the PM blocks' fields; X_DSDT came with revision 2.
    if facp.length < fadt::FLAGS as u32 + 4 {
        return "FADT too short";
    }
    let x_dsdt = if facp.length >= fadt::X_DSDT as u32 + 8 {
        rd64(fadt + fadt::X_DSDT)
    } else {
        0
    };
    let dsdt_addr = if x_dsdt != 0 {
        x_dsdt
    } else {
        rd32(fadt + fadt::DSDT) as u64
    };
    let Some(dsdt) = Table::at(dsdt_addr).filter(|t| &t.signature() == b"DSDT") else {
        return "no valid DSDT";
    };
    let Some(slp_typ) = s5_sleep_type(&dsdt) else {
        return "no \\_S5_ package in the DSDT";
    };
    if rd32(fadt + fadt::FLAGS) & fadt::HW_REDUCED_ACPI != 0 {
        // ACPI 6.5, 4.8.3.7: SLP_TYPx in bits 4:2, SLP_EN bit 5.
        let gas = fadt + fadt::SLEEP_CONTROL_REG;
        if facp.length < fadt::SLEEP_CONTROL_REG as u32 + 12 || rd8(gas) != GAS_SYSTEM_IO {
            return "hardware-reduced FADT without an I/O sleep control register";
        }
        super::outb(rd64(gas + 4) as u16, ((slp_typ & 7) << 2) | (1 << 5));
    } else {
        // ACPI 6.5, 4.8.3.2.1: SLP_TYPx in bits 12:10, SLP_EN bit 13.
        let value = ((slp_typ as u16 & 7) << 10) | (1 << 13);
        for reg in [fadt::PM1A_CNT_BLK, fadt::PM1B_CNT_BLK] {
            let port = rd32(fadt + reg);
            if port != 0 {
                super::outw(port as u16, value);
            }
        }
    }
    // The platform may act after the write returns (QEMU's main loop does): give it a second.
    super::time::delay_us(1_000_000);
    "the platform ignored the S5 request"
}
