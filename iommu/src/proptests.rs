//! Hostile guests: arbitrary register traffic and arbitrary table bytes never panic the unit, and
//! (through vm-memory's bounds-checked accessors) never touch memory outside guest RAM.

use std::sync::Arc;

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, Iommu, Permissions};

use crate::spec::{gcmd, reg};
use crate::{Access, Config, Memory, MsiMessage, MsiSender, RemappingUnit};

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
}
