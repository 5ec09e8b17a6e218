//! The GDT that every boot protocol enters with, and its descriptors as KVM segment registers.

use kvm_bindings::kvm_segment;

/// Selector of the flat 32-bit code segment (PVH and multiboot entries).
pub const CODE32_SELECTOR: u16 = 0x08;
/// Selector of the 64-bit code segment; Linux's 64-bit boot protocol requires __BOOT_CS = 0x10.
pub const CODE64_SELECTOR: u16 = 0x10;
/// Selector of the flat data segment; Linux requires __BOOT_DS = 0x18.
pub const DATA_SELECTOR: u16 = 0x18;

/// Builds a segment descriptor from flags (G, D/B, L, AVL in bits 15:12 of `flags`, access byte in
/// bits 7:0), base and limit.
const fn descriptor(flags: u64, base: u64, limit: u64) -> u64 {
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0xf_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// Null, flat code32, code64, flat data.
pub const GDT: [u64; 4] = [
    0,
    descriptor(0xc09b, 0, 0xfffff),
    descriptor(0xa09b, 0, 0xfffff),
    descriptor(0xc093, 0, 0xfffff),
];

/// The KVM segment register for the descriptor `selector` refers to in [`GDT`].
pub fn segment(selector: u16) -> kvm_segment {
    let entry = GDT.get(usize::from(selector >> 3)).copied().unwrap_or(0);
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = (entry & 0xffff) | ((entry >> 32) & 0xf_0000);
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        // KVM wants the limit in bytes.
        limit: if g == 1 {
            ((limit << 12) | 0xfff) as u32
        } else {
            limit as u32
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_decode_as_flat_segments() {
        let c32 = segment(CODE32_SELECTOR);
        assert_eq!(
            (c32.base, c32.limit, c32.db, c32.l, c32.type_),
            (0, 0xffff_ffff, 1, 0, 0xb)
        );
        let c64 = segment(CODE64_SELECTOR);
        assert_eq!((c64.db, c64.l, c64.present, c64.s), (0, 1, 1, 1));
        let d = segment(DATA_SELECTOR);
        assert_eq!((d.type_, d.db, d.limit), (0x3, 1, 0xffff_ffff));
        assert_eq!(GDT[1], 0x00cf_9b00_0000_ffff);
        assert_eq!(GDT[2], 0x00af_9b00_0000_ffff);
        assert_eq!(GDT[3], 0x00cf_9300_0000_ffff);
    }
}
