//! Interrupt delivery for devices through KVM's split irqchip (local APICs in the kernel): MSI and
//! MSI-X vectors as GSI routes with irqfds, the VMM's I/O APIC pins as the MSI routes of GSIs 0-23
//! fired with KVM_IRQ_LINE, the VT-d unit's event interrupts with KVM_SIGNAL_MSI; and device
//! doorbells as ioeventfds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use devices::{IoEvents, MsiVectors};
use iommu::{MsiMessage, MsiSender};
use kvm_bindings::{
    KVM_IRQ_ROUTING_MSI, KvmIrqRouting, kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1,
    kvm_irq_routing_msi, kvm_msi,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Sends the remapping unit's fault-event and invalidation-event MSIs into the in-kernel local
/// APICs. They are rare and their address and data change with each register write, so each is
/// signalled directly rather than through a GSI route.
#[derive(Debug)]
pub struct KvmMsi {
    /// The VM.
    pub vm: Arc<VmFd>,
}

impl MsiSender for KvmMsi {
    fn send(&self, msg: MsiMessage) {
        let msi = kvm_msi {
            address_lo: msg.address as u32,
            address_hi: (msg.address >> 32) as u32,
            data: msg.data,
            ..Default::default()
        };
        if let Err(e) = self.vm.signal_msi(msi) {
            log::warn!("VT-d event interrupt {msg:x?} not delivered: {e}");
        }
    }
}

/// The VM's GSI routing table, all MSI routes: GSIs 0-23 for the I/O APIC's pins (set as the guest
/// programs their entries) and one per device vector from `first_msi_gsi`. KVM replaces the whole
/// table on each update, so the table is kept here and rewritten whenever a route changes.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    table: Mutex<RouteTable>,
}

struct RouteTable {
    msi: BTreeMap<u32, kvm_irq_routing_entry>,
    next_gsi: u32,
}

impl std::fmt::Debug for GsiRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GsiRouter").finish_non_exhaustive()
    }
}

/// KVM's limit on GSIs (KVM_MAX_IRQ_ROUTES).
const MAX_GSI: u32 = 4096;

impl GsiRouter {
    /// An empty table; device vectors get GSIs from `first_msi_gsi`.
    pub fn new(vm: Arc<VmFd>, first_msi_gsi: u32) -> Self {
        Self {
            vm,
            table: Mutex::new(RouteTable {
                msi: BTreeMap::new(),
                next_gsi: first_msi_gsi,
            }),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, RouteTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs the current table in KVM.
    pub fn apply(&self) -> Result<(), kvm_ioctls::Error> {
        let table = self.table();
        let entries: Vec<_> = table.msi.values().copied().collect();
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        self.vm.set_gsi_routing(&routing)
    }

    /// `count` fresh GSIs for MSI vectors, or None when KVM's GSI space is used up.
    pub fn allocate(&self, count: u32) -> Option<Vec<u32>> {
        let mut table = self.table();
        let first = table.next_gsi;
        let end = first.checked_add(count).filter(|&e| e <= MAX_GSI)?;
        table.next_gsi = end;
        Some((first..end).collect())
    }

    /// Points `gsi` at `msg`.
    fn set_msi(&self, gsi: u32, msg: MsiMessage) {
        let entry = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            u: kvm_irq_routing_entry__bindgen_ty_1 {
                msi: kvm_irq_routing_msi {
                    address_lo: msg.address as u32,
                    address_hi: (msg.address >> 32) as u32,
                    data: msg.data,
                    ..Default::default()
                },
            },
            ..Default::default()
        };
        self.table().msi.insert(gsi, entry);
        if let Err(e) = self.apply() {
            log::warn!("GSI {gsi}: MSI route {msg:x?} not installed: {e}");
        }
    }
}

/// A device's MSI or MSI-X vectors in KVM: a GSI with an MSI route and an irqfd each, so sending a
/// vector is one eventfd write and KVM delivers the message.
#[derive(Debug)]
pub struct KvmMsiVectors {
    router: Arc<GsiRouter>,
    gsis: Vec<u32>,
    irqfds: Vec<EventFd>,
}

impl KvmMsiVectors {
    /// `count` vectors, each with a fresh GSI and an irqfd registered on it.
    pub fn new(vm: &VmFd, router: Arc<GsiRouter>, count: u16) -> Result<Self, String> {
        let gsis = router
            .allocate(u32::from(count))
            .ok_or("no GSIs left for MSI vectors")?;
        let mut irqfds = Vec::with_capacity(gsis.len());
        for &gsi in &gsis {
            let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("event fd: {e}"))?;
            vm.register_irqfd(&fd, gsi)
                .map_err(|e| format!("irqfd for GSI {gsi}: {e}"))?;
            irqfds.push(fd);
        }
        Ok(Self {
            router,
            gsis,
            irqfds,
        })
    }
}

impl MsiVectors for KvmMsiVectors {
    fn set_route(&self, vector: u16, msg: MsiMessage) {
        if let Some(&gsi) = self.gsis.get(usize::from(vector)) {
            self.router.set_msi(gsi, msg);
        }
    }

    fn trigger(&self, vector: u16) {
        if let Some(fd) = self.irqfds.get(usize::from(vector))
            && let Err(e) = fd.write(1)
        {
            log::debug!("MSI vector {vector} not sent: {e}");
        }
    }
}

/// Doorbells as KVM ioeventfds on MMIO addresses (any access size).
#[derive(Debug)]
pub struct KvmIoEvents {
    pub vm: Arc<VmFd>,
}

impl IoEvents for KvmIoEvents {
    fn register(&self, addr: u64, event: &EventFd) {
        if let Err(e) = self
            .vm
            .register_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
        {
            // The doorbell write then exits to the VMM, which rings the event itself.
            log::debug!("ioeventfd at {addr:#x} not registered: {e}");
        }
    }

    fn unregister(&self, addr: u64, event: &EventFd) {
        if let Err(e) = self
            .vm
            .unregister_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
        {
            log::debug!("ioeventfd at {addr:#x} not unregistered: {e}");
        }
    }
}

/// The I/O APIC's pins in KVM's split irqchip: pin n's redirection entry is mirrored as the MSI
/// route of GSI n (KVM reads the level-triggered vectors of GSIs below 24 from the routing table
/// to know which EOIs to report: KVM_EXIT_IOAPIC_EOI), and an interrupt on pin n is KVM_IRQ_LINE
/// on GSI n, which sends that route's message to the in-kernel local APICs.
#[derive(Debug)]
pub struct KvmIoapicRoutes {
    pub vm: Arc<VmFd>,
    pub router: Arc<GsiRouter>,
}

impl MsiVectors for KvmIoapicRoutes {
    fn set_route(&self, pin: u16, msg: MsiMessage) {
        self.router.set_msi(u32::from(pin), msg);
    }

    fn trigger(&self, pin: u16) {
        if let Err(e) = self.vm.set_irq_line(u32::from(pin), true) {
            log::debug!("I/O APIC pin {pin} not delivered: {e}");
        }
    }
}
