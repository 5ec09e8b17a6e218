//! The modern virtio PCI transport (virtio 1.2, 4.1): one 64-bit memory BAR holding the common,
//! ISR, device-specific and notification structures and the MSI-X table, each described by a
//! vendor-specific capability. Legacy (0.9.5) I/O-port interfaces are not offered.
//!
//! The transport and the device's worker share the device model and its queues under one lock: a
//! vCPU touching the common configuration and the worker serving a queue never interleave, and a
//! reset waits for a request in flight.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{Interrupts, NO_VECTOR, VirtioDevice, feature, status};
use crate::dma::{DmaHandle, MemoryUser};
use crate::pci::msix::Msix;
use crate::pci::{BarKind, ConfigSpace, PciDevice, config::offset};
use crate::{InterruptLine, IoEvents, MsiVectors};

/// PCI vendor id of virtio devices; modern device ids are 0x1040 + the virtio device type.
pub const VIRTIO_VENDOR_ID: u16 = 0x1af4;
const MODERN_DEVICE_ID_BASE: u16 = 0x1040;

/// Vendor-specific capability id, and the virtio structure types (virtio 1.2, 4.1.4).
const CAP_VENDOR: u8 = 0x09;
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;

/// Layout of BAR0.
pub mod layout {
    /// The common configuration structure.
    pub const COMMON: u64 = 0x0000;
    /// Its length.
    pub const COMMON_LEN: u64 = 0x38;
    /// The ISR status byte.
    pub const ISR: u64 = 0x1000;
    /// The device-specific configuration.
    pub const DEVICE: u64 = 0x2000;
    /// Queue notification addresses: queue n at NOTIFY + n * NOTIFY_MULTIPLIER.
    pub const NOTIFY: u64 = 0x3000;
    /// notify_off_multiplier: each queue has its own doorbell, so each gets its own ioeventfd.
    pub const NOTIFY_MULTIPLIER: u32 = 4;
    /// The MSI-X table.
    pub const MSIX_TABLE: u32 = 0x4000;
    /// The MSI-X pending-bit array.
    pub const MSIX_PBA: u32 = 0x6000;
    /// BAR0's size.
    pub const SIZE: u64 = 0x8000;
}

/// Common configuration registers (virtio 1.2, 4.1.4.3).
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// What the transport and the worker share.
struct State<D> {
    device: D,
    dma: DmaHandle,
    queues: Vec<Queue>,
    queue_vectors: Vec<u16>,
    config_vector: u16,
    /// Features offered: the device's plus the transport's.
    offered: u64,
    driver_features: u64,
    status: u8,
    /// DRIVER_OK accepted: the worker may serve the queues.
    live: bool,
}

impl<D: VirtioDevice> State<D> {
    fn reset(&mut self, interrupts: &Interrupts) {
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_vectors.fill(NO_VECTOR);
        self.config_vector = NO_VECTOR;
        self.driver_features = 0;
        self.status = 0;
        self.live = false;
        self.device.reset();
        interrupts.reset();
    }

    /// The driver may keep only features offered; a modern driver must take VERSION_1, and behind
    /// an IOMMU it must take ACCESS_PLATFORM (a driver that would bypass the IOMMU is refused).
    fn features_acceptable(&self) -> bool {
        let must = feature::VERSION_1 | (self.offered & feature::ACCESS_PLATFORM);
        self.driver_features & !self.offered == 0 && self.driver_features & must == must
    }

    fn write_status(&mut self, value: u8, interrupts: &Interrupts) {
        if value == 0 {
            self.reset(interrupts);
            return;
        }
        let old = self.status;
        // A driver never clears a status bit (virtio 1.2, 2.1.1) short of a reset; one that tries
        // keeps what it had.
        let mut new = value | old;
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            if self.features_acceptable() {
                self.device.negotiated(self.driver_features);
            } else {
                log::debug!(
                    "virtio: driver features {:#x} refused (offered {:#x})",
                    self.driver_features,
                    self.offered
                );
                new &= !status::FEATURES_OK;
            }
        }
        self.status = new;
        let ready_to_go = new & (status::DRIVER_OK | status::FEATURES_OK)
            == status::DRIVER_OK | status::FEATURES_OK;
        if ready_to_go && !self.live && new & status::DEVICE_NEEDS_RESET == 0 {
            if self.dma.access(QueuesValid(&self.queues)) {
                self.live = true;
            } else {
                log::debug!("virtio: a queue lies outside the device's memory; needs reset");
                self.status |= status::DEVICE_NEEDS_RESET;
                interrupts.signal_config(self.config_vector);
            }
        }
    }
}

/// Every enabled queue's rings are reachable through the device's address space.
struct QueuesValid<'a>(&'a [Queue]);

impl MemoryUser for QueuesValid<'_> {
    type Output = bool;
    fn run<M: vm_memory::GuestMemory>(self, mem: &M) -> bool {
        self.0.iter().filter(|q| q.ready()).all(|q| q.is_valid(mem))
    }
}

/// A virtio device on the PCI bus.
pub struct VirtioPci<D> {
    config: ConfigSpace,
    state: Arc<Mutex<State<D>>>,
    interrupts: Arc<Interrupts>,
    /// One doorbell event per queue, served by the worker.
    events: Vec<EventFd>,
    io_events: Arc<dyn IoEvents>,
    /// Where the doorbells are registered now (BAR0's address).
    notify_base: Option<u64>,
    device_feature_select: u32,
    driver_feature_select: u32,
    queue_select: u16,
}

impl<D> std::fmt::Debug for VirtioPci<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPci")
            .field("notify_base", &self.notify_base)
            .finish_non_exhaustive()
    }
}

/// The worker side of a virtio device: serves its queues when their doorbells ring. It is an
/// event-manager subscriber; [`VirtioWorker::serve`] does the same work directly.
pub struct VirtioWorker<D> {
    state: Arc<Mutex<State<D>>>,
    interrupts: Arc<Interrupts>,
    events: Vec<EventFd>,
}

impl<D> std::fmt::Debug for VirtioWorker<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioWorker")
            .field("queues", &self.events.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// PCI class code for a virtio device type: block devices are mass storage (other), the rest
/// "unclassified".
fn class_of(device_type: u16) -> u32 {
    match device_type {
        1 => 0x02_0000,
        2 => 0x01_8000,
        _ => 0xff_0000,
    }
}

impl<D: VirtioDevice> VirtioPci<D> {
    /// The MSI-X vectors a function for `device` has (and its `vectors` must provide): one for
    /// configuration changes and one per queue.
    pub fn vectors_for(device: &D) -> u16 {
        Self::queues_for(device).count() as u16 + 1
    }

    /// The device's queues (a size that is not a power of two up to 32768 is a device bug; such a
    /// queue is left out).
    fn queues_for(device: &D) -> impl Iterator<Item = Queue> + '_ {
        device
            .queue_max_sizes()
            .iter()
            .filter_map(|&max| Queue::new(max).ok())
    }

    /// A virtio PCI function for `device`, reaching memory through `dma`, interrupting through
    /// MSI-X `vectors` (one for configuration changes, one per queue) or `intx`, with queue
    /// doorbells registered with `io_events` wherever BAR0 is placed. Returns the function and its
    /// worker.
    pub fn new(
        device: D,
        dma: DmaHandle,
        vectors: Arc<dyn MsiVectors>,
        intx: Arc<dyn InterruptLine>,
        io_events: Arc<dyn IoEvents>,
    ) -> std::io::Result<(Self, VirtioWorker<D>)> {
        let device_type = device.device_type();
        let mut config = ConfigSpace::new(
            VIRTIO_VENDOR_ID,
            MODERN_DEVICE_ID_BASE + device_type,
            class_of(device_type),
            1,
        );
        config.set_u16(offset::SUBSYSTEM_VENDOR_ID, VIRTIO_VENDOR_ID);
        config.set_u16(offset::SUBSYSTEM_ID, 0x1100);
        config.set_u8(offset::INTERRUPT_PIN, 1);
        config.add_bar(0, BarKind::Memory64, layout::SIZE);

        let queues: Vec<Queue> = Self::queues_for(&device).collect();
        let n = queues.len();
        let structures = [
            (CAP_COMMON, layout::COMMON, layout::COMMON_LEN),
            (CAP_ISR, layout::ISR, 1),
            (
                CAP_DEVICE,
                layout::DEVICE,
                device.config().len().max(1) as u64,
            ),
            (
                CAP_NOTIFY,
                layout::NOTIFY,
                u64::from(layout::NOTIFY_MULTIPLIER) * n.max(1) as u64,
            ),
        ];
        for (cfg_type, at, len) in structures {
            let mut body = vec![if cfg_type == CAP_NOTIFY { 20 } else { 16 }, cfg_type, 0];
            body.extend_from_slice(&[0, 0, 0]); // id, padding
            body.extend_from_slice(&(at as u32).to_le_bytes());
            body.extend_from_slice(&(len as u32).to_le_bytes());
            if cfg_type == CAP_NOTIFY {
                body.extend_from_slice(&layout::NOTIFY_MULTIPLIER.to_le_bytes());
            }
            config.add_capability(CAP_VENDOR, &body, &[]);
        }
        let msix = Msix::new(
            &mut config,
            Self::vectors_for(&device),
            0,
            layout::MSIX_TABLE,
            layout::MSIX_PBA,
        );

        let events = (0..n)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        let worker_events = events
            .iter()
            .map(EventFd::try_clone)
            .collect::<std::io::Result<Vec<_>>>()?;
        let offered = device.features()
            | feature::VERSION_1
            | if dma.is_remapped() {
                feature::ACCESS_PLATFORM
            } else {
                0
            };
        let state = Arc::new(Mutex::new(State {
            device,
            dma,
            queue_vectors: vec![NO_VECTOR; n],
            queues,
            config_vector: NO_VECTOR,
            offered,
            driver_features: 0,
            status: 0,
            live: false,
        }));
        let interrupts = Arc::new(Interrupts::new(msix, vectors, intx));
        let worker = VirtioWorker {
            state: state.clone(),
            interrupts: interrupts.clone(),
            events: worker_events,
        };
        Ok((
            Self {
                config,
                state,
                interrupts,
                events,
                io_events,
                notify_base: None,
                device_feature_select: 0,
                driver_feature_select: 0,
                queue_select: 0,
            },
            worker,
        ))
    }

    fn common_read(&self, offset: u64, data: &mut [u8]) {
        let st = lock(&self.state);
        let mut image = [0u8; layout::COMMON_LEN as usize];
        let mut put = |at: u64, bytes: &[u8]| {
            if let Some(dst) = image.get_mut(at as usize..at as usize + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        };
        let feature_half = |features: u64, select: u32| match select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        put(
            common::DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        put(
            common::DEVICE_FEATURE,
            &feature_half(st.offered, self.device_feature_select).to_le_bytes(),
        );
        put(
            common::DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        put(
            common::DRIVER_FEATURE,
            &feature_half(st.driver_features, self.driver_feature_select).to_le_bytes(),
        );
        put(common::CONFIG_MSIX_VECTOR, &st.config_vector.to_le_bytes());
        put(common::NUM_QUEUES, &(st.queues.len() as u16).to_le_bytes());
        put(common::DEVICE_STATUS, &[st.status]);
        put(common::CONFIG_GENERATION, &[0]);
        put(common::QUEUE_SELECT, &self.queue_select.to_le_bytes());
        let q = usize::from(self.queue_select);
        if let Some(queue) = st.queues.get(q) {
            put(common::QUEUE_SIZE, &queue.size().to_le_bytes());
            let vector = st.queue_vectors.get(q).copied().unwrap_or(NO_VECTOR);
            put(common::QUEUE_MSIX_VECTOR, &vector.to_le_bytes());
            put(
                common::QUEUE_ENABLE,
                &u16::from(queue.ready()).to_le_bytes(),
            );
            put(common::QUEUE_NOTIFY_OFF, &self.queue_select.to_le_bytes());
            put(common::QUEUE_DESC, &queue.desc_table().to_le_bytes());
            put(common::QUEUE_DRIVER, &queue.avail_ring().to_le_bytes());
            put(common::QUEUE_DEVICE, &queue.used_ring().to_le_bytes());
        } else {
            // A queue that does not exist reads as size 0, unavailable.
            put(common::QUEUE_MSIX_VECTOR, &NO_VECTOR.to_le_bytes());
        }
        data.fill(0);
        if let Some(src) = image.get(offset as usize..offset as usize + data.len()) {
            data.copy_from_slice(src);
        }
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 8];
        for (d, s) in bytes.iter_mut().zip(data) {
            *d = *s;
        }
        let value = u64::from_le_bytes(bytes);
        let (v16, v32) = (value as u16, value as u32);
        // The MSI-X table has one vector for configuration changes and one per queue.
        let vectors = self.events.len() as u16 + 1;
        let mut st = lock(&self.state);
        let st = &mut *st;
        let q = usize::from(self.queue_select);
        let features_locked = st.status & status::FEATURES_OK != 0;
        match (offset, data.len()) {
            (common::DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v32,
            (common::DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v32,
            (common::DRIVER_FEATURE, 4) if !features_locked => {
                let f = &mut st.driver_features;
                match self.driver_feature_select {
                    0 => *f = (*f & !0xffff_ffff) | u64::from(v32),
                    1 => *f = (*f & 0xffff_ffff) | (u64::from(v32) << 32),
                    _ => {}
                }
            }
            (common::CONFIG_MSIX_VECTOR, 2) => {
                // A vector the table does not have reads back as NO_VECTOR (4.1.5.1.2).
                st.config_vector = if v16 < vectors { v16 } else { NO_VECTOR };
            }
            (common::DEVICE_STATUS, 1) => st.write_status(v16 as u8, &self.interrupts),
            (common::QUEUE_SELECT, 2) => self.queue_select = v16,
            (common::QUEUE_MSIX_VECTOR, 2) => {
                if let Some(v) = st.queue_vectors.get_mut(q) {
                    *v = if v16 < vectors { v16 } else { NO_VECTOR };
                }
            }
            _ => {
                // Queue setup: only before DRIVER_OK (when the rings are checked) and while the
                // queue is not enabled.
                if st.status & status::DRIVER_OK != 0 {
                    return;
                }
                let Some(queue) = st.queues.get_mut(q).filter(|queue| !queue.ready()) else {
                    return;
                };
                let half = |at: u64| match (offset.checked_sub(at), data.len()) {
                    (Some(0), 4) => Some((Some(v32), None)),
                    (Some(4), 4) => Some((None, Some(v32))),
                    (Some(0), 8) => Some((Some(v32), Some((value >> 32) as u32))),
                    _ => None,
                };
                match (offset, data.len()) {
                    (common::QUEUE_SIZE, 2) => queue.set_size(v16),
                    (common::QUEUE_ENABLE, 2) if v16 == 1 => queue.set_ready(true),
                    _ => {
                        if let Some((lo, hi)) = half(common::QUEUE_DESC) {
                            queue.set_desc_table_address(lo, hi);
                        } else if let Some((lo, hi)) = half(common::QUEUE_DRIVER) {
                            queue.set_avail_ring_address(lo, hi);
                        } else if let Some((lo, hi)) = half(common::QUEUE_DEVICE) {
                            queue.set_used_ring_address(lo, hi);
                        }
                    }
                }
            }
        }
    }

    /// Moves the queue doorbells' ioeventfds to BAR0's new address.
    fn move_doorbells(&mut self, base: Option<u64>) {
        let addr = |base: u64, q: usize| {
            base + layout::NOTIFY + u64::from(layout::NOTIFY_MULTIPLIER) * q as u64
        };
        if let Some(old) = self.notify_base.take() {
            for (q, e) in self.events.iter().enumerate() {
                self.io_events.unregister(addr(old, q), e);
            }
        }
        if let Some(new) = base {
            for (q, e) in self.events.iter().enumerate() {
                self.io_events.register(addr(new, q), e);
            }
        }
        self.notify_base = base;
    }
}

impl<D: VirtioDevice> PciDevice for VirtioPci<D> {
    fn config(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_written(&mut self) {
        self.interrupts.control_written(&self.config);
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        match offset {
            o if o < layout::COMMON_LEN => self.common_read(o, data),
            layout::ISR => {
                if let Some(b) = data.first_mut() {
                    *b = self.interrupts.read_isr();
                }
            }
            o if (layout::DEVICE..layout::NOTIFY).contains(&o) => {
                let st = lock(&self.state);
                let at = (o - layout::DEVICE) as usize;
                if let Some(src) = st.device.config().get(at..at + data.len()) {
                    data.copy_from_slice(src);
                }
            }
            o if self.interrupts.owns(o) => self.interrupts.table_read(o, data),
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        match offset {
            o if o < layout::COMMON_LEN => self.common_write(o, data),
            o if (layout::NOTIFY..layout::MSIX_TABLE.into()).contains(&o) => {
                // A doorbell that reached us rather than an ioeventfd (none registered, or a write
                // KVM did not match): ring the queue's event all the same.
                let q = (o - layout::NOTIFY) / u64::from(layout::NOTIFY_MULTIPLIER);
                if let Some(e) = self.events.get(q as usize) {
                    let _ = e.write(1);
                }
            }
            o if self.interrupts.owns(o) => self.interrupts.table_write(o, data),
            // The device-specific configuration is read-only for the devices we have.
            _ => {}
        }
    }

    fn bar_moved(&mut self, bar: usize, addr: Option<u64>) {
        if bar == 0 {
            self.move_doorbells(addr);
        }
    }
}

/// One pass over a queue: the device serves it, and says whether the driver wants an interrupt
/// and whether buffers are left for another pass.
struct ServeQueue<'a, D> {
    device: &'a mut D,
    index: usize,
    queue: &'a mut Queue,
}

impl<D: VirtioDevice> MemoryUser for ServeQueue<'_, D> {
    type Output = (bool, bool);
    fn run<M: vm_memory::GuestMemory>(self, mem: &M) -> (bool, bool) {
        let served = self.device.serve(self.index, self.queue, mem);
        let notify = served.used && self.queue.needs_notification(mem).unwrap_or(true);
        (notify, served.more)
    }
}

impl<D: VirtioDevice> VirtioWorker<D> {
    /// Serves queue `index` once: what the driver made available, then an interrupt if the driver
    /// wants one. If the pass stopped at its bound with buffers left, the queue's event is rung
    /// again, so the event loop serves others in between.
    pub fn serve(&self, index: usize) {
        let mut st = lock(&self.state);
        if !st.live {
            return;
        }
        let State {
            device,
            dma,
            queues,
            queue_vectors,
            ..
        } = &mut *st;
        let Some(queue) = queues.get_mut(index).filter(|q| q.ready()) else {
            return;
        };
        let (notify, more) = dma.access(ServeQueue {
            device,
            index,
            queue,
        });
        if notify {
            let vector = queue_vectors.get(index).copied().unwrap_or(NO_VECTOR);
            self.interrupts.signal_queue(vector);
        }
        if more && let Some(e) = self.events.get(index) {
            let _ = e.write(1);
        }
    }
}

#[cfg(test)]
impl<D> VirtioWorker<D> {
    /// How often queue `index`'s event was rung since last asked.
    pub(crate) fn pending(&self, index: usize) -> u64 {
        self.events
            .get(index)
            .and_then(|e| e.read().ok())
            .unwrap_or(0)
    }
}

impl<D: VirtioDevice> MutEventSubscriber for VirtioWorker<D> {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, e) in self.events.iter().enumerate() {
            if let Err(err) = ops.add(Events::with_data(e, index as u32, EventSet::IN)) {
                log::warn!("virtio: queue {index} will not be served: {err:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let index = events.data() as usize;
        if let Some(e) = self.events.get(index) {
            let _ = e.read();
        }
        self.serve(index);
    }
}
