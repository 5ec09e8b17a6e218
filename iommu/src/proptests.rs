//! Hostile guests: arbitrary register traffic and arbitrary table bytes never panic the unit, and
//! (through vm-memory's bounds-checked accessors) never touch memory outside guest RAM.

use std::sync::Arc;

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, Iommu, Permissions};

use crate::spec::{INTERRUPT_RANGE, gcmd, reg};
use crate::{Access, Config, InterruptSource, Memory, MsiMessage, MsiSender, RemappingUnit};

struct Discard;

impl MsiSender for Discard {
    fn send(&self, _msg: MsiMessage) {}
}

/// Large enough for a root table, context tables, page tables and a queue; small enough to fill
/// for every case.
const MEM: u64 = 256 << 10;

/// Guest memory filled from `seed` (xorshift), so that every table the unit reads is garbage.
fn garbage_memory(seed: u64) -> Arc<Memory> {
    let mem = Memory::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let mut x = seed | 1;
    let bytes: Vec<u8> = (0..MEM / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    mem.write_slice(&bytes, GuestAddress(0)).unwrap();
    Arc::new(mem)
}

fn permissions(p: u8) -> Permissions {
    [
        Permissions::Read,
        Permissions::Write,
        Permissions::ReadWrite,
        Permissions::No,
    ][usize::from(p % 4)]
}

#[derive(Debug, Clone)]
enum Op {
    Read {
        offset: u16,
        size: u8,
    },
    Write {
        offset: u16,
        size: u8,
        value: u64,
    },
    Dma {
        sid: u16,
        iova: u64,
        len: u16,
        perm: u8,
    },
    Interrupt {
        ioapic: bool,
        sid: u16,
        address: u64,
        data: u32,
    },
}

/// Interrupt request addresses: remappable or compatibility format in the interrupt range, or
/// anything.
fn msi_address() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..0x10_0000).prop_map(|low| 0xfee0_0000 | low | 0x10),
        (0u64..0x10_0000).prop_map(|low| 0xfee0_0000 | low),
        any::<u64>(),
    ]
}

/// DMA addresses: in guest RAM, anywhere, or at the edges where translation has special cases (the
/// interrupt range and the top of the 64-bit space).
fn iova() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..MEM,
        any::<u64>(),
        0xfed0_0000u64..0xff00_0000,
        (u64::MAX - (2 << 30))..=u64::MAX,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    // Offsets mostly in the registers that do something, sometimes anywhere in the page.
    let offset = prop_oneof![0u16..0x110, 0x200u16..0x280, 0u16..0x1000];
    let size = prop_oneof![Just(4u8), Just(8u8), 0u8..9];
    prop_oneof![
        (offset.clone(), size.clone()).prop_map(|(offset, size)| Op::Read { offset, size }),
        (offset, size, any::<u64>()).prop_map(|(offset, size, value)| Op::Write {
            offset,
            size,
            value
        }),
        (any::<u16>(), iova(), any::<u16>(), any::<u8>()).prop_map(|(sid, iova, len, perm)| {
            Op::Dma {
                sid,
                iova,
                len,
                perm,
            }
        }),
    ]
}

fn run(config: Config, seed: u64, ops: &[Op]) {
    let unit = RemappingUnit::new(config, garbage_memory(seed), Arc::new(Discard)).unwrap();
    let handles: Vec<_> = (0..4u16)
        .map(|i| unit.attach(i.wrapping_mul(0x101)))
        .collect();
    for op in ops {
        match *op {
            Op::Read { offset, size } => {
                let mut buf = vec![0u8; usize::from(size)];
                unit.mmio_read(u64::from(offset), &mut buf);
            }
            Op::Write {
                offset,
                size,
                value,
            } => {
                let bytes = value.to_le_bytes();
                unit.mmio_write(u64::from(offset), &bytes[..usize::from(size).min(8)]);
            }
            Op::Dma {
                sid,
                iova,
                len,
                perm,
            } => {
                let h = &handles[usize::from(sid % 4)];
                let _ = h
                    .translate(GuestAddress(iova), usize::from(len), permissions(perm))
                    .map(|it| it.count());
                // The native path: whatever it returns must stop short of the interrupt range.
                let access = Access {
                    read: perm & 1 != 0,
                    write: perm & 2 != 0,
                };
                if let Ok((_, avail)) = h.translate_one(iova, access) {
                    assert!(avail > 0);
                    if iova < 0xfee0_0000 {
                        assert!(
                            iova.saturating_add(avail) <= 0xfee0_0000,
                            "{iova:#x}+{avail:#x} reaches the interrupt range"
                        );
                    }
                }
            }
            Op::Interrupt {
                ioapic,
                sid,
                address,
                data,
            } => {
                let source = if ioapic {
                    InterruptSource::Ioapic(sid)
                } else {
                    InterruptSource::Device(sid)
                };
                let msg = MsiMessage { address, data };
                match unit.remap_interrupt(source, msg) {
                    Ok(out) if out != msg => {
                        // A remapped interrupt: a compatibility-format message built from an entry.
                        assert!(
                            INTERRUPT_RANGE.contains(&(out.address & 0xffff_ffff)),
                            "{out:x?}"
                        );
                        assert_eq!(out.address & 0x10, 0, "{out:x?}");
                        assert_eq!(out.address & 0xff_0000_0000, 0, "{out:x?}");
                        assert!(out.data <= 0xffff, "{out:x?}");
                        assert!(
                            crate::interrupt_index(msg).is_some(),
                            "only remappable requests change"
                        );
                    }
                    Ok(_) => {}
                    Err(fault) => {
                        assert_eq!(fault.source, source);
                        unit.report_interrupt_fault(&fault);
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any register traffic, with DMA from devices in between, over garbage tables.
    #[test]
    fn arbitrary_register_traffic_never_panics(seed: u64, ops in prop::collection::vec(op(), 1..200)) {
        run(Config::default(), seed, &ops);
        run(Config { caching_mode: true, aw_bits: 39, fault_records: 1, max_address_mask: 0, ..Config::default() }, seed, &ops);
    }

    /// Translation on, root table and invalidation queue somewhere in garbage memory, then DMA and
    /// queue-tail writes: every walk and descriptor reads garbage.
    #[test]
    fn garbage_tables_and_descriptors_never_panic(
        seed: u64,
        root in 0u64..MEM + 0x10_0000,
        iqa in any::<u64>(),
        dmas in prop::collection::vec((any::<u16>(), iova(), 1u16..0x3000, any::<u8>()), 1..64),
        tails in prop::collection::vec(any::<u32>(), 0..8),
    ) {
        let mut ops = vec![
            Op::Write { offset: reg::RTADDR as u16, size: 8, value: root },
            Op::Write { offset: reg::GCMD as u16, size: 4, value: u64::from(gcmd::SRTP) },
            Op::Write { offset: reg::IQA as u16, size: 8, value: iqa & !0x800 },
            Op::Write { offset: reg::GCMD as u16, size: 4, value: u64::from(gcmd::QIE) },
            Op::Write { offset: reg::GCMD as u16, size: 4, value: u64::from(gcmd::QIE | gcmd::TE) },
            Op::Write { offset: reg::FECTL as u16, size: 4, value: 0 },
        ];
        for t in tails {
            ops.push(Op::Write { offset: reg::IQT as u16, size: 4, value: u64::from(t) });
            ops.push(Op::Write { offset: reg::FSTS as u16, size: 4, value: 0xff });
        }
        ops.extend(dmas.into_iter().map(|(sid, iova, len, perm)| Op::Dma { sid, iova, len, perm }));
        run(Config::default(), seed, &ops);
    }

    /// Interrupt remapping on with its table in garbage memory (or beyond it), in either interrupt
    /// mode, with compatibility format allowed or not: every request decodes to an interrupt or a
    /// fault, and faults are recorded, without a panic.
    #[test]
    fn garbage_interrupt_tables_never_panic(
        seed: u64,
        irta in 0u64..MEM + 0x10_0000,
        cfi: bool,
        requests in prop::collection::vec((any::<bool>(), any::<u16>(), msi_address(), any::<u32>()), 1..64),
    ) {
        let gcmd = gcmd::IRE | if cfi { gcmd::CFI } else { 0 };
        let mut ops = vec![
            Op::Write { offset: reg::IRTA as u16, size: 8, value: irta },
            Op::Write { offset: reg::GCMD as u16, size: 4, value: u64::from(gcmd::SIRTP) },
            Op::Write { offset: reg::GCMD as u16, size: 4, value: u64::from(gcmd) },
            Op::Write { offset: reg::FECTL as u16, size: 4, value: 0 },
        ];
        ops.extend(requests.into_iter().map(|(ioapic, sid, address, data)| Op::Interrupt { ioapic, sid, address, data }));
        run(Config::default(), seed, &ops);
    }
}

proptest! {
    /// Any valid entry, in either interrupt mode, reached through any handle/subhandle split of its
    /// index, delivers exactly its vector, destination, modes and trigger.
    #[test]
    fn a_valid_entry_delivers_exactly_what_it_says(
        index in 0u32..512,
        split in any::<u16>(),
        shv: bool,
        vector: u8,
        dest: u32,
        flags in 0u64..8,
        delivery in prop::sample::select(vec![0u64, 1, 2, 4, 5, 7]),
        eime: bool,
    ) {
        let mem = Arc::new(Memory::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap());
        let unit = RemappingUnit::new(Config::default(), mem.clone(), Arc::new(Discard)).unwrap();
        let table = 0x1_0000u64;
        // 512 entries: S = 8.
        let irta = table | if eime { 1 << 11 } else { 0 } | 8;
        unit.mmio_write(reg::IRTA, &irta.to_le_bytes());
        unit.mmio_write(reg::GCMD, &gcmd::SIRTP.to_le_bytes());
        unit.mmio_write(reg::GCMD, &gcmd::IRE.to_le_bytes());
        let dest = if eime { dest } else { dest & 0xff };
        let dest_field = if eime { u64::from(dest) } else { u64::from(dest) << 8 };
        // flags: DM, RH, TM in bits 2..4.
        let lo = 1 | (flags << 2) | (delivery << 5) | (u64::from(vector) << 16) | (dest_field << 32);
        mem.write_obj(lo, GuestAddress(table + u64::from(index) * 16)).unwrap();
        mem.write_obj(0u64, GuestAddress(table + u64::from(index) * 16 + 8)).unwrap();
        let (handle, sub) = if shv {
            let sub = u32::from(split) % (index + 1);
            (index - sub, Some(sub))
        } else {
            (index, None)
        };
        let h = u64::from(handle);
        let address = 0xfee0_0000 | ((h & 0x7fff) << 5) | (1 << 4) | if shv { 1 << 3 } else { 0 };
        let msg = MsiMessage { address, data: sub.unwrap_or(split.into()) };
        let out = unit.remap_interrupt(InterruptSource::Device(0), msg).unwrap();
        prop_assert_eq!(out.data & 0xff, u32::from(vector));
        prop_assert_eq!(u64::from((out.data >> 8) & 7), delivery);
        prop_assert_eq!(out.data >> 15 == 1, flags & 4 != 0, "trigger");
        prop_assert_eq!(out.address & (1 << 2) != 0, flags & 1 != 0, "destination mode");
        prop_assert_eq!(out.address & (1 << 3) != 0, flags & 2 != 0, "redirection hint");
        let got_dest = ((out.address >> 12) & 0xff) as u32 | ((out.address >> 32) as u32 & !0xff);
        prop_assert_eq!(got_dest, dest);
        prop_assert_eq!(out.address >> 32 & 0xff, 0, "KVM rejects upper-address bits 7:0");
    }
}
