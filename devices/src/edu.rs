//! A DMA test device with the register interface of QEMU's `edu` device (PCI 1234:11e8), so that
//! guest programs written for it run unchanged: identification, liveness check, factorial,
//! interrupt raise/acknowledge, and DMA between guest memory and a 4 KiB device buffer, through the
//! device's DMA handle. Transfers complete at once (guests poll the command register's bit 0).

use std::sync::Arc;

use iommu::MsiMessage;

use crate::dma::DmaHandle;
use crate::pci::config::{command, offset};
use crate::pci::{BarKind, ConfigSpace, PciDevice};
use crate::{InterruptLine, MsiVectors};

/// Register offsets in BAR0.
mod reg {
    pub const ID: u64 = 0x00;
    pub const LIVENESS: u64 = 0x04;
    pub const FACTORIAL: u64 = 0x08;
    pub const STATUS: u64 = 0x20;
    pub const IRQ_STATUS: u64 = 0x24;
    pub const IRQ_RAISE: u64 = 0x60;
    pub const IRQ_ACK: u64 = 0x64;
    pub const DMA_SRC: u64 = 0x80;
    pub const DMA_DST: u64 = 0x88;
    pub const DMA_COUNT: u64 = 0x90;
    pub const DMA_CMD: u64 = 0x98;
}

/// Identification: major 1, minor 0, 0xed.
const ID: u32 = 0x0100_00ed;
/// Status: factorial computing (never seen: it completes at once), raise an interrupt when done.
const STATUS_COMPUTING: u32 = 0x01;
const STATUS_IRQ_ON_FACTORIAL: u32 = 0x80;
/// DMA command bits: start, direction (1: buffer to RAM), raise interrupt 0x100 when done.
const DMA_START: u64 = 1;
const DMA_TO_RAM: u64 = 2;
const DMA_IRQ: u64 = 4;
/// The buffer's addresses on the device side of a transfer.
const BUFFER_BASE: u64 = 0x40000;
const BUFFER_SIZE: usize = 4096;
/// Interrupt status bits the device raises itself.
const IRQ_FACTORIAL: u32 = 0x001;
const IRQ_DMA: u32 = 0x100;

/// MSI capability (PCI 3.0, 6.8.1): 64-bit address, one vector.
const MSI_CAP_ID: u8 = 0x05;
const MSI_ENABLE: u16 = 1;
const MSI_64BIT: u16 = 1 << 7;

/// The edu device.
pub struct Edu {
    config: ConfigSpace,
    msi_cap: usize,
    dma: DmaHandle,
    msi: Arc<dyn MsiVectors>,
    /// The message last routed to the MSI vector.
    routed: Option<MsiMessage>,
    intx: Arc<dyn InterruptLine>,
    intx_asserted: bool,
    liveness: u32,
    factorial: u32,
    status: u32,
    irq_status: u32,
    dma_src: u64,
    dma_dst: u64,
    dma_count: u64,
    dma_cmd: u64,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for Edu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edu")
            .field("irq_status", &self.irq_status)
            .finish_non_exhaustive()
    }
}

impl Edu {
    /// An edu device doing its DMA through `dma`, signalling through its one MSI vector (`msi`)
    /// or `intx`.
    pub fn new(dma: DmaHandle, msi: Arc<dyn MsiVectors>, intx: Arc<dyn InterruptLine>) -> Self {
        let mut config = ConfigSpace::new(0x1234, 0x11e8, 0x00_ff00, 0x10);
        config.set_u8(offset::INTERRUPT_PIN, 1);
        config.add_bar(0, BarKind::Memory32, 1 << 20);
        let ctrl = MSI_64BIT.to_le_bytes();
        let body = [ctrl[0], ctrl[1], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        // Writable: enable and multiple-message enable; address bits 63:2; 16 data bits.
        let writable = [
            0x71, 0, 0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        let msi_cap = config.add_capability(MSI_CAP_ID, &body, &writable);
        Self {
            config,
            msi_cap,
            dma,
            msi,
            routed: None,
            intx,
            intx_asserted: false,
            liveness: 0,
            factorial: 0,
            status: 0,
            irq_status: 0,
            dma_src: 0,
            dma_dst: 0,
            dma_count: 0,
            dma_cmd: 0,
            buffer: vec![0; BUFFER_SIZE],
        }
    }

    fn msi_message(&self) -> Option<MsiMessage> {
        let c = &self.config;
        let at = self.msi_cap;
        if c.u16_at(at + 2) & MSI_ENABLE == 0 {
            return None;
        }
        let address = u64::from(c.u32_at(at + 4)) | (u64::from(c.u32_at(at + 8)) << 32);
        Some(MsiMessage {
            address,
            data: u32::from(c.u16_at(at + 12)),
        })
    }

    /// The INTx level follows the interrupt status, unless MSI is on or INTx is disabled.
    fn update_intx(&mut self) {
        let level = self.irq_status != 0
            && self.msi_message().is_none()
            && self.config.command() & command::INTX_DISABLE == 0;
        if level != self.intx_asserted {
            self.intx_asserted = level;
            self.intx.set_level(level);
        }
    }

    fn raise(&mut self, bits: u32) {
        self.irq_status |= bits;
        match self.msi_message() {
            // MSI is edge-triggered: one message per raise.
            Some(_) if bits != 0 => self.msi.trigger(0),
            _ => self.update_intx(),
        }
    }

    fn lower(&mut self, bits: u32) {
        self.irq_status &= !bits;
        self.update_intx();
    }

    /// The buffer slice a transfer addresses on the device side, if it lies inside the buffer.
    fn buffer_range(addr: u64, count: u64) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(addr.checked_sub(BUFFER_BASE)?).ok()?;
        let end = start.checked_add(usize::try_from(count).ok()?)?;
        (end <= BUFFER_SIZE).then_some(start..end)
    }

    /// Runs the transfer the DMA registers describe. A transfer outside the buffer, or without bus
    /// mastering enabled, does not happen; a DMA fault stops it (the unit records the fault).
    fn run_dma(&mut self) {
        if self.config.command() & command::BUS_MASTER == 0 {
            log::debug!("edu: DMA without bus mastering enabled");
            return;
        }
        let to_ram = self.dma_cmd & DMA_TO_RAM != 0;
        let (device_addr, ram_addr) = if to_ram {
            (self.dma_src, self.dma_dst)
        } else {
            (self.dma_dst, self.dma_src)
        };
        let Some(range) = Self::buffer_range(device_addr, self.dma_count) else {
            log::debug!("edu: DMA outside the device buffer");
            return;
        };
        let Some(buf) = self.buffer.get_mut(range) else {
            return;
        };
        let result = if to_ram {
            self.dma.write(ram_addr, buf)
        } else {
            self.dma.read(ram_addr, buf)
        };
        if let Err(e) = result {
            log::debug!("edu: DMA failed: {e}");
        }
    }

    fn read_register(&mut self, off: u64) -> u64 {
        match off {
            reg::ID => u64::from(ID),
            reg::LIVENESS => u64::from(!self.liveness),
            reg::FACTORIAL => u64::from(self.factorial),
            reg::STATUS => u64::from(self.status),
            reg::IRQ_STATUS => u64::from(self.irq_status),
            reg::DMA_SRC => self.dma_src,
            reg::DMA_DST => self.dma_dst,
            reg::DMA_COUNT => self.dma_count,
            reg::DMA_CMD => self.dma_cmd,
            _ => 0,
        }
    }

    fn write_register(&mut self, off: u64, v: u64) {
        let v32 = v as u32;
        match off {
            reg::LIVENESS => self.liveness = v32,
            reg::FACTORIAL => {
                // Modulo 2^32, as QEMU's device computes it; from 34! on there are at least 32
                // factors of two, so the result is 0 (and a guest cannot make the vCPU loop for
                // billions of steps).
                self.factorial = if v32 >= 34 {
                    0
                } else {
                    (1..=v32).fold(1u32, |acc, k| acc.wrapping_mul(k))
                };
                self.status &= !STATUS_COMPUTING;
                if self.status & STATUS_IRQ_ON_FACTORIAL != 0 {
                    self.raise(IRQ_FACTORIAL);
                }
            }
            reg::STATUS => {
                self.status = (self.status & STATUS_COMPUTING) | (v32 & STATUS_IRQ_ON_FACTORIAL)
            }
            reg::IRQ_RAISE => self.raise(v32),
            reg::IRQ_ACK => self.lower(v32),
            reg::DMA_SRC => self.dma_src = v,
            reg::DMA_DST => self.dma_dst = v,
            reg::DMA_COUNT => self.dma_count = v,
            reg::DMA_CMD if v & DMA_START != 0 && self.dma_cmd & DMA_START == 0 => {
                self.dma_cmd = v;
                self.run_dma();
                self.dma_cmd &= !DMA_START;
                if v & DMA_IRQ != 0 {
                    self.raise(IRQ_DMA);
                }
            }
            _ => {}
        }
    }
}

/// 32-bit accesses everywhere in BAR0; 64-bit ones from 0x80, where the registers are 64-bit.
fn access_ok(bar: usize, off: u64, len: usize) -> bool {
    bar == 0
        && (len == 4 && off.is_multiple_of(4) || len == 8 && off >= 0x80 && off.is_multiple_of(8))
}

impl PciDevice for Edu {
    fn config(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_written(&mut self) {
        // The MSI message goes to the vector's route when the guest changes it; MSI enable and
        // INTx disable change where the interrupt goes.
        if let Some(msg) = self.msi_message()
            && self.routed != Some(msg)
        {
            self.msi.set_route(0, msg);
            self.routed = Some(msg);
        }
        self.update_intx();
    }

    fn bar_read(&mut self, bar: usize, off: u64, data: &mut [u8]) {
        data.fill(0xff);
        let ok = access_ok(bar, off, data.len());
        if !ok {
            return;
        }
        // From 0x80 the registers are 64-bit: a 32-bit access reads the half it addresses.
        let value = if off >= 0x80 {
            self.read_register(off & !7) >> (8 * (off & 4))
        } else {
            self.read_register(off)
        };
        for (d, s) in data.iter_mut().zip(value.to_le_bytes()) {
            *d = s;
        }
    }

    fn bar_write(&mut self, bar: usize, off: u64, data: &[u8]) {
        let ok = access_ok(bar, off, data.len());
        if !ok {
            return;
        }
        let mut b = [0u8; 8];
        for (d, s) in b.iter_mut().zip(data) {
            *d = *s;
        }
        let v = u64::from_le_bytes(b);
        if off >= 0x80 && data.len() == 4 {
            // Halves of the 64-bit DMA registers.
            let base = off & !7;
            let old = self.read_register(base);
            let merged = if off & 4 != 0 {
                (old & 0xffff_ffff) | (v << 32)
            } else {
                (old & !0xffff_ffff) | v
            };
            self.write_register(base, merged);
        } else {
            self.write_register(off, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use vm_memory::{Bytes, GuestAddress};

    use crate::dma::GuestMemory;

    /// Routes set and vectors triggered.
    #[derive(Default)]
    struct Msis(Mutex<Vec<MsiMessage>>, Mutex<Vec<u16>>);
    impl MsiVectors for Msis {
        fn set_route(&self, vector: u16, msg: MsiMessage) {
            assert_eq!(vector, 0);
            self.0.lock().unwrap().push(msg);
        }
        fn trigger(&self, vector: u16) {
            self.1.lock().unwrap().push(vector);
        }
    }

    #[derive(Default)]
    struct Line(AtomicBool);
    impl InterruptLine for Line {
        fn set_level(&self, asserted: bool) {
            self.0.store(asserted, Ordering::SeqCst);
        }
    }

    fn edu(dma: DmaHandle) -> (Edu, Arc<Msis>, Arc<Line>) {
        let (msis, line) = (Arc::new(Msis::default()), Arc::new(Line::default()));
        let mut e = Edu::new(dma, msis.clone(), line.clone());
        let cmd = command::MEMORY | command::BUS_MASTER;
        e.config().write(offset::COMMAND, &cmd.to_le_bytes());
        (e, msis, line)
    }

    fn memory() -> Arc<GuestMemory> {
        Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap())
    }

    fn r32(e: &mut Edu, off: u64) -> u32 {
        let mut b = [0u8; 4];
        e.bar_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w32(e: &mut Edu, off: u64, v: u32) {
        e.bar_write(0, off, &v.to_le_bytes());
    }

    fn w64(e: &mut Edu, off: u64, v: u64) {
        e.bar_write(0, off, &v.to_le_bytes());
    }

    fn dma(e: &mut Edu, src: u64, dst: u64, count: u64, cmd: u64) {
        w64(e, reg::DMA_SRC, src);
        w64(e, reg::DMA_DST, dst);
        w64(e, reg::DMA_COUNT, count);
        w64(e, reg::DMA_CMD, cmd | DMA_START);
        assert_eq!(r32(e, reg::DMA_CMD) & 1, 0, "transfer done");
    }

    #[test]
    fn registers_behave_as_the_edu_spec_says() {
        let (mut e, _, _) = edu(DmaHandle::Direct(memory()));
        assert_eq!(r32(&mut e, reg::ID), 0x0100_00ed);
        w32(&mut e, reg::LIVENESS, 0x1234_5678);
        assert_eq!(r32(&mut e, reg::LIVENESS), !0x1234_5678);
        w32(&mut e, reg::FACTORIAL, 10);
        assert_eq!(r32(&mut e, reg::FACTORIAL), 3_628_800);
        w32(&mut e, reg::FACTORIAL, 33);
        assert_eq!(
            r32(&mut e, reg::FACTORIAL),
            (1..=33u32).fold(1u32, |a, k| a.wrapping_mul(k))
        );
        w32(&mut e, reg::FACTORIAL, u32::MAX);
        assert_eq!(
            r32(&mut e, reg::FACTORIAL),
            0,
            "at once, not after 2^32 multiplications"
        );
        assert_eq!(r32(&mut e, reg::STATUS) & STATUS_COMPUTING, 0);
        let mut odd = [0u8; 2];
        e.bar_read(0, 0, &mut odd);
        assert_eq!(odd, [0xff; 2], "16-bit accesses are not supported");
        let mut wide = [0u8; 8];
        e.bar_read(0, 0x80, &mut wide);
        assert_ne!(wide, [0xff; 8], "64-bit accesses work from 0x80");
        e.bar_read(0, 0x08, &mut wide);
        assert_eq!(wide, [0xff; 8], "64-bit only from 0x80");
    }

    #[test]
    fn dma_both_ways_through_guest_memory() {
        let mem = memory();
        let (mut e, _, _) = edu(DmaHandle::Direct(mem.clone()));
        let data: Vec<u8> = (0..=255).cycle().take(4096).collect();
        mem.write_slice(&data, GuestAddress(0x1_0000)).unwrap();
        dma(&mut e, 0x1_0000, BUFFER_BASE, 4096, 0);
        dma(&mut e, BUFFER_BASE + 16, 0x2_0000, 100, DMA_TO_RAM);
        let mut back = vec![0u8; 100];
        mem.read_slice(&mut back, GuestAddress(0x2_0000)).unwrap();
        assert_eq!(back, data[16..116]);
        // Outside the buffer, or without bus mastering: nothing moves.
        dma(&mut e, BUFFER_BASE + 4000, 0x3_0000, 200, DMA_TO_RAM);
        e.config()
            .write(offset::COMMAND, &command::MEMORY.to_le_bytes());
        dma(&mut e, BUFFER_BASE, 0x3_0000, 16, DMA_TO_RAM);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x3_0000)).unwrap(), 0);
    }

    #[test]
    fn intx_follows_status_and_msi_replaces_it() {
        let (mut e, msis, line) = edu(DmaHandle::Direct(memory()));
        w32(&mut e, reg::IRQ_RAISE, 0x4);
        assert!(line.0.load(Ordering::SeqCst));
        assert_eq!(r32(&mut e, reg::IRQ_STATUS), 0x4);
        w32(&mut e, reg::IRQ_ACK, 0x4);
        assert!(!line.0.load(Ordering::SeqCst));
        // MSI: address 0xfee00000, data 0x45, enabled.
        let cap = e.msi_cap;
        e.config().write(cap + 4, &0xfee0_0000u32.to_le_bytes());
        e.config().write(cap + 12, &0x45u16.to_le_bytes());
        e.config().write(cap + 2, &MSI_ENABLE.to_le_bytes());
        e.config_written();
        e.config_written();
        dma(&mut e, 0, BUFFER_BASE, 8, DMA_IRQ);
        assert_eq!(
            *msis.0.lock().unwrap(),
            vec![MsiMessage {
                address: 0xfee0_0000,
                data: 0x45
            }],
            "routed once"
        );
        assert_eq!(*msis.1.lock().unwrap(), vec![0], "one MSI per raise");
        assert!(!line.0.load(Ordering::SeqCst), "INTx stays low with MSI on");
        assert_eq!(r32(&mut e, reg::IRQ_STATUS), IRQ_DMA);
    }

    #[test]
    fn remapped_dma_to_an_unmapped_iova_faults_and_leaves_memory_untouched() {
        let mem = memory();
        struct NoMsi;
        impl iommu::MsiSender for NoMsi {
            fn send(&self, _: MsiMessage) {}
        }
        let unit =
            iommu::RemappingUnit::new(iommu::Config::default(), mem.clone(), Arc::new(NoMsi))
                .unwrap();
        // Translation on with an empty root table: every DMA faults (root entry not present).
        unit.mmio_write(iommu::spec::reg::RTADDR, &0x8_0000u64.to_le_bytes());
        unit.mmio_write(
            iommu::spec::reg::GCMD,
            &iommu::spec::gcmd::SRTP.to_le_bytes(),
        );
        unit.mmio_write(iommu::spec::reg::GCMD, &iommu::spec::gcmd::TE.to_le_bytes());
        let handle = Arc::new(unit.attach(0x18));
        let (mut e, _, _) = edu(DmaHandle::Remapped {
            mem: mem.clone(),
            iommu: handle,
        });
        // Memory holds a pattern the (zeroed) device buffer would overwrite if the DMA got through.
        mem.write_obj(0xa5a5_a5a5_a5a5_a5a5u64, GuestAddress(0x4000))
            .unwrap();
        dma(&mut e, BUFFER_BASE, 0x4000, 64, DMA_TO_RAM);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(0x4000)).unwrap(),
            0xa5a5_a5a5_a5a5_a5a5
        );
        // The same transfer straight to memory does overwrite it: the check above can fail.
        let (mut direct, _, _) = edu(DmaHandle::Direct(mem.clone()));
        dma(&mut direct, BUFFER_BASE, 0x4000, 64, DMA_TO_RAM);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x4000)).unwrap(), 0);
        let mut fsts = [0u8; 4];
        unit.mmio_read(iommu::spec::reg::FSTS, &mut fsts);
        assert_ne!(
            u32::from_le_bytes(fsts) & iommu::spec::fsts::PPF,
            0,
            "fault recorded"
        );
    }
}
