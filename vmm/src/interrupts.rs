//! Interrupt delivery for devices through KVM's split irqchip (local APICs in the kernel): MSI and
//! MSI-X vectors as GSI routes with irqfds, the VMM's I/O APIC pins as the MSI routes of GSIs 0-23
//! fired with KVM_IRQ_LINE, the VT-d unit's event interrupts with KVM_SIGNAL_MSI; every route
//! translated by the unit when it remaps interrupts; and device doorbells as ioeventfds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use devices::{IoEvents, MsiVectors};
use iommu::spec::INTERRUPT_RANGE;
use iommu::{
    InterruptCacheListener, InterruptCacheScope, InterruptFault, InterruptSource, MsiMessage,
    MsiSender, RemappingUnit,
};
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
///
/// With interrupt remapping, each route keeps the message its source programmed and KVM gets what
/// the unit translates it to: the routes are the unit's interrupt entry cache. The unit tells the
/// router (its [`InterruptCacheListener`]) when an invalidation or a register change makes
/// translations stale, and the router translates those again before the guest sees the
/// invalidation complete. A route the unit blocks has no KVM entry; when its source fires, the
/// router asks the unit again (the unit caches no faulting entry) and delivers, or has the fault
/// recorded.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    table: Mutex<RouteTable>,
    /// The unit, when it remaps interrupts.
    remapper: OnceLock<RemappingUnit>,
    /// Bit n: the unit blocked GSI n's interrupt at its last translation.
    blocked: Vec<AtomicU64>,
}

struct RouteTable {
    routes: BTreeMap<u32, Route>,
    next_gsi: u32,
}

/// One GSI's route: what its source sends, and what KVM delivers for it.
struct Route {
    source: InterruptSource,
    programmed: MsiMessage,
    delivered: Delivery,
}

/// What becomes of an interrupt of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// KVM delivers this message.
    Message(MsiMessage),
    /// The unit blocks it: firing it records a fault.
    Blocked(InterruptFault),
    /// Not an interrupt request (a write outside the interrupt range): dropped.
    Dropped,
}

impl Delivery {
    /// The route KVM holds for it.
    fn kvm_route(&self) -> Option<MsiMessage> {
        match *self {
            Delivery::Message(msg) => Some(msg),
            _ => None,
        }
    }
}

/// What a source that fires a blocked route should do.
enum Retry {
    /// The route is now installed: fire it.
    Fire,
    /// Record this fault; deliver nothing.
    Fault(InterruptFault),
    /// Deliver nothing.
    Drop,
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
                routes: BTreeMap::new(),
                next_gsi: first_msi_gsi,
            }),
            remapper: OnceLock::new(),
            blocked: (0..MAX_GSI / 64).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Routes are translated by `unit` from now on; it tells the router when they go stale.
    pub fn remap_through(self: &Arc<Self>, unit: &RemappingUnit) {
        if self.remapper.set(unit.clone()).is_ok() {
            let listener: Weak<dyn InterruptCacheListener> = Arc::downgrade(self) as _;
            unit.set_interrupt_cache_listener(listener);
            self.invalidate(InterruptCacheScope::All);
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, RouteTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs the current table in KVM.
    pub fn apply(&self) -> Result<(), kvm_ioctls::Error> {
        self.install(&self.table())
    }

    fn install(&self, table: &RouteTable) -> Result<(), kvm_ioctls::Error> {
        let entries: Vec<_> = table
            .routes
            .iter()
            .filter_map(|(&gsi, route)| match route.delivered {
                Delivery::Message(msg) => Some(msi_entry(gsi, msg)),
                _ => None,
            })
            .collect();
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

    /// What KVM should deliver for `msg` from `source`. A write outside 0xfeex_xxxx (the upper
    /// address dword included) is not an interrupt request: on a real platform it is a DMA write,
    /// which no interrupt route stands for, so it is dropped, and never reaches the unit as an
    /// interrupt it would have to remap.
    fn translate(&self, source: InterruptSource, msg: MsiMessage) -> Delivery {
        if !INTERRUPT_RANGE.contains(&msg.address) {
            return Delivery::Dropped;
        }
        match self.remapper.get().map(|u| u.remap_interrupt(source, msg)) {
            Some(Err(fault)) => Delivery::Blocked(fault),
            Some(Ok(msg)) => Delivery::Message(msg),
            None => Delivery::Message(msg),
        }
    }

    fn set_blocked(&self, gsi: u32, blocked: bool) {
        if let Some(word) = self.blocked.get((gsi / 64) as usize) {
            let bit = 1 << (gsi % 64);
            if blocked {
                word.fetch_or(bit, Ordering::SeqCst);
            } else {
                word.fetch_and(!bit, Ordering::SeqCst);
            }
        }
    }

    /// Whether the unit blocked `gsi`'s interrupt when it last translated it.
    fn is_blocked(&self, gsi: u32) -> bool {
        self.blocked
            .get((gsi / 64) as usize)
            .is_some_and(|w| w.load(Ordering::SeqCst) & (1 << (gsi % 64)) != 0)
    }

    /// Translates `gsi`'s route again; true if what KVM should hold for it changed. A route the
    /// unit now blocks is marked at once (a source that fires it from now on waits for the table
    /// and asks again); the mark comes off in `commit`, once KVM has the route.
    fn refresh(&self, gsi: u32, route: &mut Route) -> bool {
        let before = route.delivered.kvm_route();
        route.delivered = self.translate(route.source, route.programmed);
        if matches!(route.delivered, Delivery::Blocked(_)) {
            self.set_blocked(gsi, true);
        }
        route.delivered.kvm_route() != before
    }

    /// Installs `table` in KVM if `changed`, then unmarks the `touched` routes that are not
    /// blocked. If KVM refuses the table it still holds old routes, so the touched ones stay
    /// marked: their sources ask again when they fire. Returns whether KVM took the table.
    fn commit(&self, table: &RouteTable, touched: &[u32], changed: bool) -> bool {
        if changed && let Err(e) = self.install(table) {
            log::warn!("interrupt routes not installed: {e}");
            for &gsi in touched {
                self.set_blocked(gsi, true);
            }
            return false;
        }
        for &gsi in touched {
            if !matches!(
                table.routes.get(&gsi).map(|r| r.delivered),
                Some(Delivery::Blocked(_))
            ) {
                self.set_blocked(gsi, false);
            }
        }
        true
    }

    /// Points `gsi` at `msg`, sent by `source`.
    fn set_msi(&self, gsi: u32, source: InterruptSource, msg: MsiMessage) {
        let mut table = self.table();
        let route = table.routes.entry(gsi).or_insert(Route {
            source,
            programmed: msg,
            delivered: Delivery::Dropped,
        });
        (route.source, route.programmed) = (source, msg);
        let changed = self.refresh(gsi, route);
        self.commit(&table, &[gsi], changed);
    }

    /// `gsi`'s source fires while its route is marked blocked: translates it again.
    fn retry(&self, gsi: u32) -> Retry {
        let mut table = self.table();
        let Some(route) = table.routes.get_mut(&gsi) else {
            return Retry::Drop;
        };
        let changed = self.refresh(gsi, route);
        let delivered = route.delivered;
        let installed = self.commit(&table, &[gsi], changed);
        match delivered {
            Delivery::Message(_) if installed => Retry::Fire,
            Delivery::Blocked(fault) => Retry::Fault(fault),
            _ => Retry::Drop,
        }
    }

    /// Has the unit record `fault` (called without the table lock: recording takes the unit's
    /// register lock, under which the unit calls the router).
    fn report(&self, fault: &InterruptFault) {
        if let Some(unit) = self.remapper.get() {
            unit.report_interrupt_fault(fault);
        }
    }

    /// Fires `gsi` through `fire`, unless the unit blocks it.
    fn fire(&self, gsi: u32, fire: impl FnOnce()) {
        if self.is_blocked(gsi) {
            match self.retry(gsi) {
                Retry::Fire => {}
                Retry::Fault(fault) => return self.report(&fault),
                Retry::Drop => return,
            }
        }
        fire();
    }
}

impl InterruptCacheListener for GsiRouter {
    fn invalidate(&self, scope: InterruptCacheScope) {
        let mut table = self.table();
        let mut touched = Vec::new();
        let mut changed = false;
        for (&gsi, route) in table.routes.iter_mut() {
            if scope.covers(route.programmed) {
                changed |= self.refresh(gsi, route);
                touched.push(gsi);
            }
        }
        self.commit(&table, &touched, changed);
    }
}

fn msi_entry(gsi: u32, msg: MsiMessage) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
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
    }
}

/// A device's MSI or MSI-X vectors in KVM: a GSI with an MSI route and an irqfd each, so sending a
/// vector is one eventfd write and KVM delivers the message.
#[derive(Debug)]
pub struct KvmMsiVectors {
    router: Arc<GsiRouter>,
    source: InterruptSource,
    gsis: Vec<u32>,
    irqfds: Vec<EventFd>,
}

impl KvmMsiVectors {
    /// `count` vectors of the PCI function `requester_id`, each with a fresh GSI and an irqfd
    /// registered on it.
    pub fn new(
        vm: &VmFd,
        router: Arc<GsiRouter>,
        requester_id: u16,
        count: u16,
    ) -> Result<Self, String> {
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
            source: InterruptSource::Device(requester_id),
            gsis,
            irqfds,
        })
    }
}

impl MsiVectors for KvmMsiVectors {
    fn set_route(&self, vector: u16, msg: MsiMessage) {
        if let Some(&gsi) = self.gsis.get(usize::from(vector)) {
            self.router.set_msi(gsi, self.source, msg);
        }
    }

    fn trigger(&self, vector: u16) {
        let (Some(&gsi), Some(fd)) = (
            self.gsis.get(usize::from(vector)),
            self.irqfds.get(usize::from(vector)),
        ) else {
            return;
        };
        self.router.fire(gsi, || {
            if let Err(e) = fd.write(1) {
                log::debug!("MSI vector {vector} not sent: {e}");
            }
        });
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
/// on GSI n, which sends that route's message to the in-kernel local APICs. With interrupt
/// remapping the route holds the unit's translation, as for any MSI (source: the I/O APIC's id,
/// which the unit does not verify).
#[derive(Debug)]
pub struct KvmIoapicRoutes {
    pub vm: Arc<VmFd>,
    pub router: Arc<GsiRouter>,
    /// The I/O APIC's source-id (the DMAR table's I/O APIC scope).
    pub source_id: u16,
}

impl MsiVectors for KvmIoapicRoutes {
    fn set_route(&self, pin: u16, msg: MsiMessage) {
        let source = InterruptSource::Ioapic(self.source_id);
        self.router.set_msi(u32::from(pin), source, msg);
    }

    fn trigger(&self, pin: u16) {
        self.router.fire(u32::from(pin), || {
            if let Err(e) = self.vm.set_irq_line(u32::from(pin), true) {
                log::debug!("I/O APIC pin {pin} not delivered: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use iommu::spec::{gcmd, reg};
    use iommu::{
        Config, InterruptCacheListener, InterruptSource, MsiMessage, MsiSender, RemappingUnit,
    };
    use kvm_bindings::{KVM_CAP_SPLIT_IRQCHIP, kvm_enable_cap};
    use kvm_ioctls::Kvm;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::GsiRouter;

    struct Discard;
    impl MsiSender for Discard {
        fn send(&self, _: MsiMessage) {}
    }

    const TABLE: u64 = 0x10_000;
    const SOURCE: InterruptSource = InterruptSource::Device(0x08);

    /// The router as the unit's interrupt cache, on a real VM (split irqchip, no vCPUs): a route
    /// to an absent entry is marked blocked and faults when fired; the entry made present and
    /// invalidated, the mark comes off; writes outside the interrupt range never get a route.
    #[test]
    fn routes_follow_the_units_entries_and_invalidations() {
        let kvm = match Kvm::new() {
            Ok(kvm) => kvm,
            Err(e) => {
                let why = format!("/dev/kvm is not usable: {e}");
                return arch::skip(
                    "interrupts::routes_follow_the_units_entries_and_invalidations",
                    &why,
                );
            }
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        let mut split = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            ..Default::default()
        };
        split.args[0] = 24;
        vm.enable_cap(&split).unwrap();
        let mem =
            Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        let unit = RemappingUnit::new(Config::default(), mem.clone(), Arc::new(Discard)).unwrap();
        let w = |off: u64, v: u64| unit.mmio_write(off, &v.to_le_bytes());
        w(reg::IRTA, TABLE | 7);
        unit.mmio_write(reg::GCMD, &gcmd::SIRTP.to_le_bytes());
        unit.mmio_write(reg::GCMD, &gcmd::IRE.to_le_bytes());
        let router = Arc::new(GsiRouter::new(vm, 24));
        router.remap_through(&unit);
        let gsi = router.allocate(1).unwrap()[0];
        let remappable = MsiMessage {
            address: iommu::spec::msi::remappable_address(3, false),
            data: 0,
        };
        router.set_msi(gsi, SOURCE, remappable);
        assert!(router.is_blocked(gsi), "entry 3 is not present");
        let mut fired = false;
        router.fire(gsi, || fired = true);
        assert!(!fired);
        assert_eq!(
            unit.snapshot().faults,
            1,
            "the fault is recorded when it fires"
        );
        // Entry 3 made present (vector 0x40, APIC 0) without an invalidation: the unit caches no
        // faulting entry, so firing asks again and delivers.
        mem.write_obj(1u64 | (0x40 << 16), GuestAddress(TABLE + 3 * 16))
            .unwrap();
        router.fire(gsi, || fired = true);
        assert!(fired && !router.is_blocked(gsi));
        // Not present again: the route stays until an IEC invalidation covers it.
        mem.write_obj(0u64, GuestAddress(TABLE + 3 * 16)).unwrap();
        router.invalidate(iommu::InterruptCacheScope::Entries { first: 4, last: 9 });
        assert!(!router.is_blocked(gsi), "outside the scope");
        router.invalidate(iommu::InterruptCacheScope::Entries { first: 2, last: 3 });
        assert!(router.is_blocked(gsi), "covered");
        // A write outside the interrupt range: no route, nothing to remap, no fault.
        let dma = MsiMessage {
            address: 0x1_fee0_0000,
            data: 0x30,
        };
        router.set_msi(gsi, SOURCE, dma);
        assert!(!router.is_blocked(gsi));
        let mut fired = false;
        router.fire(gsi, || fired = true);
        assert!(
            fired,
            "the irqfd write goes to a GSI without a route: KVM drops it"
        );
        assert!(
            router
                .table()
                .routes
                .get(&gsi)
                .unwrap()
                .delivered
                .kvm_route()
                .is_none()
        );
        assert_eq!(unit.snapshot().faults, 1);
    }
}
