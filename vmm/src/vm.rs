//! Assembling and running the VM: KVM, memory, boot, devices and vCPUs in one readable place.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arch::GuestMemoryMmap;
use arch::layout::{self, MemoryLayout};
use devices::Bus;
use devices::dma::DmaHandle;
use devices::edu::Edu;
use devices::ioapic::{Ioapic, IoapicLine, IoapicPin, SharedIoapic};
use devices::legacy::{
    ACPI_PM_LEN, AcpiPm, CMOS_PORT, CMOS_PORT_LEN, Cmos, EXIT_PORT, EXIT_PORT_LEN, ExitPort, I8042,
    I8042_DATA_PORT, IrqTrigger, RxDrained, Serial, system_clock,
};
use devices::pci::{ConfigAddressPort, EcamWindow, PciRoot, SharedPciDevice};
use devices::virtio::block::Block;
use devices::virtio::pci::VirtioPci;
use devices::vtd::IommuRegisters;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use iommu::RemappingUnit;
use kvm_bindings::{
    KVM_CAP_SPLIT_IRQCHIP, KVM_CAP_X2APIC_API, KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK,
    KVM_X2APIC_API_USE_32BIT_IDS, kvm_enable_cap, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::cli::{DeviceKind, DiskConfig, SerialOutput};
use crate::console::{ExitWatcher, RawTerminal, StdinInput, serial_output};
use crate::interrupts::{GsiRouter, KvmIoEvents, KvmIoapicRoutes, KvmMsi, KvmMsiVectors};
use crate::outcome::{ExitLatch, Outcome};
use crate::signals::{SignalWatcher, StatsSignal};
use crate::vcpu;

/// What to run.
#[derive(Debug)]
pub struct VmConfig {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs or first multiboot module.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPU count.
    pub cpus: u8,
    /// RAM in bytes.
    pub memory: u64,
    /// Serial output.
    pub serial: SerialOutput,
    /// PCI devices to attach.
    pub devices: Vec<DeviceKind>,
    /// virtio-blk disks to attach.
    pub disks: Vec<DiskConfig>,
    /// The VT-d unit in front of the PCI devices, if any.
    pub iommu: Option<iommu::Config>,
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
}

/// Errors that stop the VM from being built; each is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    /// /dev/kvm speaks another API.
    #[error("/dev/kvm reports KVM API version {0}, expected 12")]
    NotKvm(i32),
    /// KVM lacks something we rely on.
    #[error("KVM lacks a required capability: {0:?}")]
    MissingCap(Cap),
    /// Too many vCPUs for this host.
    #[error("--cpus {asked}: this host's KVM supports at most {max}")]
    TooManyCpus {
        /// Requested.
        asked: u8,
        /// KVM's limit.
        max: usize,
    },
    /// A KVM ioctl failed while building the VM.
    #[error("cannot {what}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// Guest RAM could not be allocated.
    #[error("cannot allocate {size} bytes of guest memory: {reason}")]
    Memory {
        /// Requested size.
        size: u64,
        /// Why not.
        reason: String,
    },
    /// A file named on the command line could not be opened.
    #[error("cannot open {what} '{path}': {source}")]
    Open {
        /// Its role.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel could not be loaded.
    #[error("{path}: {source}")]
    Boot {
        /// Kernel path.
        path: PathBuf,
        /// Why.
        source: arch::boot::Error,
    },
    /// ACPI tables could not be built.
    #[error(transparent)]
    Acpi(#[from] arch::acpi::Error),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Vcpu(#[from] arch::regs::Error),
    /// A PCI device could not be attached.
    #[error("cannot attach a PCI device: {0}")]
    Pci(#[from] devices::pci::PciError),
    /// A disk image could not be used.
    #[error("disk '{path}': {source}")]
    Disk {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: devices::virtio::block::BlockError,
    },
    /// A device's interrupts could not be wired.
    #[error("cannot wire a device's interrupts: {0}")]
    Interrupts(String),
    /// The remapping unit could not be built.
    #[error("--iommu: {0}")]
    Iommu(#[from] iommu::ConfigError),
    /// A device could not be placed on a bus.
    #[error("cannot register a device: {0}")]
    Bus(#[from] devices::BusError),
    /// Something else at the host level.
    #[error("{what}: {source}")]
    Host {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

fn host_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Host { what, source }
}

/// The only stable KVM API version (KVM_GET_API_VERSION).
const KVM_API_VERSION: i32 = 12;

/// What every VM needs; the VT-d unit's event interrupts add SignalMsi (`add_iommu`) and its
/// x2APIC destinations X2ApicApi (`set_up_platform`).
const REQUIRED_CAPS: [Cap; 6] = [
    Cap::SplitIrqchip,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::ExtCpuid,
    Cap::IrqRouting,
    Cap::Irqfd,
];

/// Configuration mechanism #1: CONFIG_ADDRESS and CONFIG_DATA.
const PCI_CONFIG_PORT: u64 = 0xcf8;
/// I/O BARs go here (base, size): above the legacy ports.
const PCI_IO_WINDOW: (u64, u64) = (0xc000, 0x4000);
/// The I/O APIC's pins, which are GSIs 0-23; MSI and MSI-X vectors get GSIs above them.
const IOAPIC_PINS: u32 = devices::ioapic::PINS as u32;
const FIRST_MSI_GSI: u32 = IOAPIC_PINS;

/// COM1's port range and ISA IRQ.
const COM1_PORT: u64 = 0x3f8;
const COM1_IRQ: u32 = 4;

/// Builds the VM described by `config`, runs it to its end and returns how it ended.
pub fn run(config: &VmConfig) -> Result<Outcome, Error> {
    // The user's files first: their errors are the likeliest and need no KVM to report.
    let mut files = open_boot_files(config)?;
    let kvm = Kvm::new().map_err(Error::OpenKvm)?;
    if kvm.get_api_version() != KVM_API_VERSION {
        return Err(Error::NotKvm(kvm.get_api_version()));
    }
    if let Some(cap) = REQUIRED_CAPS.iter().find(|c| !kvm.check_extension(**c)) {
        return Err(Error::MissingCap(*cap));
    }
    let max_cpus = kvm.get_max_vcpus();
    if usize::from(config.cpus) > max_cpus {
        return Err(Error::TooManyCpus {
            asked: config.cpus,
            max: max_cpus,
        });
    }

    let mut layout = MemoryLayout::new(config.memory);
    layout.iommu = config.iommu.is_some();
    let ranges: Vec<_> = layout
        .ram_ranges()
        .into_iter()
        .map(|(base, size)| (vm_memory::GuestAddress(base), size as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::Memory {
        size: config.memory,
        reason: e.to_string(),
    })?;

    let mem = Arc::new(mem);
    let vm = Arc::new(kvm.create_vm().map_err(kvm_err("create the VM"))?);
    let x2apic_ids = config
        .iommu
        .as_ref()
        .is_some_and(|c| c.extended_interrupt_mode);
    let router = set_up_platform(&vm, &mem, x2apic_ids)?;

    let dmar: Vec<Vec<u8>> = config
        .iommu
        .iter()
        .map(|c| arch::acpi::dmar(c.aw_bits, layout::IOMMU_BASE, c.interrupt_remapping))
        .collect();
    let tables = arch::acpi::Tables::build(usize::from(config.cpus), &layout, &dmar)?;
    let rsdp = tables.write(&mem)?;
    let entry = load_kernel(config, &mut files, &mem, &layout, rsdp)?;

    let wake = EventFd::new(EFD_NONBLOCK).map_err(host_err("create an event fd"))?;
    let latch = Arc::new(ExitLatch::new(
        wake.try_clone().map_err(host_err("clone an event fd"))?,
    ));
    let pio = Arc::new(Bus::new());
    let mmio = Arc::new(Bus::new());
    let ioapic = add_ioapic(&vm, &router, &mmio)?;
    let (serial, rx_drained) = add_legacy_devices(&ioapic, &pio, &latch, &config.serial)?;
    let unit = config
        .iommu
        .clone()
        .map(|c| add_iommu(c, &vm, &mem, &mmio))
        .transpose()?;
    if let Some(unit) = unit.as_ref().filter(|u| u.config().interrupt_remapping) {
        router.remap_through(unit);
    }
    let disks = std::mem::take(&mut files.disks)
        .into_iter()
        .zip(&config.disks)
        .collect();
    let dma = DmaSource {
        mem: mem.clone(),
        unit: unit.clone(),
    };
    let workers = add_pci(
        &vm,
        (&router, &ioapic),
        &dma,
        (&pio, &mmio),
        &config.devices,
        disks,
    )?;

    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("read the supported CPUID"))?;
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    let mut vcpus = Vec::with_capacity(usize::from(config.cpus));
    for index in 0..config.cpus {
        let vcpu = vm
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("create a vCPU"))?;
        let cpuid = arch::cpuid::vcpu_cpuid(&supported, index, config.cpus, tsc_deadline);
        vcpu.set_cpuid2(&cpuid)
            .map_err(kvm_err("set the CPU model"))?;
        arch::regs::set_power_on_state(&vcpu)?;
        if index == 0 {
            arch::regs::set_boot_entry(&vcpu, &entry)?;
        }
        vcpus.push(vcpu);
    }

    crate::signals::catch_usr1().map_err(host_err("install the SIGUSR1 handler"))?;
    // Before the terminal goes raw and any vCPU runs: a SIGTERM, SIGINT or SIGHUP from here on
    // stops the VM in order (its event fd keeps it until the event loop looks), never with the
    // default action that would leave the terminal raw.
    let signals = SignalWatcher::install(latch.clone())
        .map_err(host_err("install the terminating-signal handlers"))?;
    // The kick signal only needs to interrupt KVM_RUN; its handler does nothing.
    extern "C" fn kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    register_signal_handler(SIGRTMIN(), kick)
        .map_err(|e| host_err("install the vCPU kick signal handler")(e.into()))?;

    // The terminal goes raw before any vCPU runs, so nothing the user types meets a cooked tty;
    // it is restored when this function returns, before the VMM prints its outcome or exits.
    let _raw = (config.serial == SerialOutput::Stdout).then(RawTerminal::new);
    let shared = vcpu::Shared {
        pio,
        mmio,
        ioapic,
        latch: latch.clone(),
    };
    let mut threads = Vec::with_capacity(vcpus.len());
    for (index, fd) in vcpus.into_iter().enumerate() {
        let shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || vcpu::run(index, fd, shared))
            .map_err(host_err("start a vCPU thread"));
        match thread {
            Ok(t) => threads.push(t),
            Err(e) => {
                latch.set(Outcome::Error(e.to_string()));
                if !stop_vcpus(threads).1 {
                    std::mem::forget(vm);
                    std::mem::forget(mem);
                }
                return Err(e);
            }
        }
    }

    let outcome = wait_for_end(
        &latch,
        (wake, signals),
        (serial, rx_drained),
        workers,
        unit.clone(),
        &config.serial,
        config.timeout,
    );
    let (positions, all_stopped) = stop_vcpus(threads);
    if let Some(unit) = &unit {
        report_iommu_stats(unit);
    }
    if outcome == Outcome::Timeout {
        let report: String = positions.iter().map(|p| format!("vmm:   {p}\n")).collect();
        let _ = std::io::stderr().write_all(report.as_bytes());
    }
    if !all_stopped {
        // A vCPU thread that would not stop still holds the VM, which still maps guest memory:
        // unmapping it now would pull memory from under a running vCPU. The process is about to
        // exit, which releases both in the right order.
        std::mem::forget(vm);
        std::mem::forget(mem);
    }
    Ok(outcome)
}

/// Memory slots and KVM's split irqchip: local APICs in the kernel, the I/O APIC ours (no 8259
/// PIC and no 8254 PIT, as in Cloud Hypervisor: Linux on KVM needs neither, and KVM offers its
/// PIT only with its own PIC); with `x2apic_ids`, KVM's 32-bit destination ids (for interrupt
/// remapping's x2APIC destinations); then the GSI router that the I/O APIC's and devices' MSI
/// routes join.
fn set_up_platform(
    vm: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
    x2apic_ids: bool,
) -> Result<Arc<GsiRouter>, Error> {
    for (slot, region) in mem.iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM: `run` declares
        // `mem` before `vm`, so the VM is closed first.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("register guest memory"))?;
    }
    vm.set_tss_address(layout::KVM_TSS_ADDR as usize)
        .map_err(kvm_err("set the TSS address"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
        .map_err(kvm_err("set the identity map address"))?;
    // The argument reserves GSIs 0-23 for the I/O APIC's routes.
    let mut split = kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    split.args[0] = u64::from(IOAPIC_PINS);
    vm.enable_cap(&split)
        .map_err(kvm_err("enable the split irqchip"))?;
    if x2apic_ids {
        if !vm.check_extension(Cap::X2ApicApi) {
            return Err(Error::MissingCap(Cap::X2ApicApi));
        }
        // 32-bit destinations in MSI routes (upper address bits 31:8), and 0xff a real id in
        // x2APIC mode rather than a broadcast, as QEMU sets it for EIM.
        let mut x2apic = kvm_enable_cap {
            cap: KVM_CAP_X2APIC_API,
            ..Default::default()
        };
        x2apic.args[0] =
            u64::from(KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK);
        vm.enable_cap(&x2apic)
            .map_err(kvm_err("enable 32-bit x2APIC ids"))?;
    }
    let router = Arc::new(GsiRouter::new(vm.clone(), FIRST_MSI_GSI));
    router.apply().map_err(kvm_err("set interrupt routing"))?;
    Ok(router)
}

/// The I/O APIC on the MMIO bus where the MADT says it is, its pins mirrored into KVM's routes.
fn add_ioapic(vm: &Arc<VmFd>, router: &Arc<GsiRouter>, mmio: &Bus) -> Result<SharedIoapic, Error> {
    let routes = Arc::new(KvmIoapicRoutes {
        vm: vm.clone(),
        router: router.clone(),
        source_id: arch::acpi::IOAPIC_SOURCE_ID,
    });
    let ioapic = Arc::new(Mutex::new(Ioapic::new(arch::acpi::IOAPIC_ID, routes)));
    mmio.insert(layout::IOAPIC_ADDR, devices::ioapic::SIZE, ioapic.clone())?;
    Ok(ioapic)
}

/// The kernel and initramfs, opened, with the kernel's format checked.
struct BootFiles {
    kernel: File,
    initramfs: Option<File>,
    /// The disks, opened read-write unless read-only.
    disks: Vec<File>,
}

fn open_boot_files(config: &VmConfig) -> Result<BootFiles, Error> {
    let open = |what, path: &Path| {
        File::open(path).map_err(|source| Error::Open {
            what,
            path: path.to_owned(),
            source,
        })
    };
    let mut kernel = open("kernel", &config.kernel)?;
    arch::boot::detect(&mut kernel).map_err(|source| Error::Boot {
        path: config.kernel.clone(),
        source,
    })?;
    let initramfs = config
        .initramfs
        .as_deref()
        .map(|p| open("initramfs", p))
        .transpose()?;
    let disks = config
        .disks
        .iter()
        .map(|d| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(!d.readonly)
                .open(&d.path)
                .map_err(|source| Error::Open {
                    what: "disk",
                    path: d.path.clone(),
                    source,
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(BootFiles {
        kernel,
        initramfs,
        disks,
    })
}

fn load_kernel(
    config: &VmConfig,
    files: &mut BootFiles,
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    rsdp: u64,
) -> Result<arch::boot::BootEntry, Error> {
    let name = config
        .initramfs
        .as_deref()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("initramfs");
    let image = arch::boot::KernelImage {
        kernel: &mut files.kernel,
        initramfs: files.initramfs.as_mut().map(|f| (f, name)),
        cmdline: &config.cmdline,
    };
    arch::boot::load(mem, layout, image, rsdp).map_err(|source| Error::Boot {
        path: config.kernel.clone(),
        source,
    })
}

/// COM1, the CMOS RTC, the i8042, the exit port and the ACPI sleep/reset registers, on the port-I/O
/// bus.
fn add_legacy_devices(
    ioapic: &SharedIoapic,
    pio: &Bus,
    latch: &Arc<ExitLatch>,
    serial_out: &SerialOutput,
) -> Result<(Arc<Mutex<Serial>>, EventFd), Error> {
    let irq = IrqTrigger(IoapicPin::new(ioapic.clone(), COM1_IRQ as usize));
    let drained = EventFd::new(EFD_NONBLOCK).map_err(host_err("create an event fd"))?;
    let rx_drained = RxDrained(drained.try_clone().map_err(host_err("clone an event fd"))?);
    let out = serial_output(serial_out).map_err(|source| match serial_out {
        SerialOutput::File(path) => Error::Open {
            what: "serial output",
            path: path.clone(),
            source,
        },
        _ => Error::Host {
            what: "open the serial output",
            source,
        },
    })?;
    let serial = Arc::new(Mutex::new(Serial::new(irq, rx_drained, out)));
    pio.insert(COM1_PORT, 8, serial.clone())?;

    pio.insert(
        CMOS_PORT,
        CMOS_PORT_LEN,
        Arc::new(Mutex::new(Cmos::new(system_clock()))),
    )?;

    let exit: Arc<dyn devices::ExitSink> = latch.clone();
    let i8042 = Arc::new(Mutex::new(I8042::new(exit.clone())));
    pio.insert(I8042_DATA_PORT, 1, i8042.clone())?;
    pio.insert(I8042_DATA_PORT + 4, 1, i8042)?;
    pio.insert(
        EXIT_PORT,
        EXIT_PORT_LEN,
        Arc::new(Mutex::new(ExitPort::new(exit.clone()))),
    )?;
    pio.insert(
        u64::from(arch::acpi::ACPI_PM_PORT),
        ACPI_PM_LEN,
        Arc::new(Mutex::new(AcpiPm::new(exit))),
    )?;
    Ok((serial, drained))
}

/// The VT-d unit over guest memory, its event interrupts sent through KVM, its register page on
/// the MMIO bus.
fn add_iommu(
    config: iommu::Config,
    vm: &Arc<VmFd>,
    mem: &Arc<GuestMemoryMmap>,
    mmio: &Bus,
) -> Result<RemappingUnit, Error> {
    if !vm.check_extension(Cap::SignalMsi) {
        return Err(Error::MissingCap(Cap::SignalMsi));
    }
    let unit = RemappingUnit::new(config, mem.clone(), Arc::new(KvmMsi { vm: vm.clone() }))?;
    mmio.insert(
        layout::IOMMU_BASE,
        layout::IOMMU_SIZE,
        Arc::new(Mutex::new(IommuRegisters(unit.clone()))),
    )?;
    Ok(unit)
}

/// The unit's statistics line, on stderr.
fn report_iommu_stats(unit: &RemappingUnit) {
    let _ = writeln!(std::io::stderr(), "vmm: iommu: {}", unit.snapshot());
}

/// Where devices' DMA handles come from: guest memory, or the remapping unit in front of it.
struct DmaSource {
    mem: Arc<GuestMemoryMmap>,
    unit: Option<RemappingUnit>,
}

impl DmaSource {
    /// The handle of the function at `requester_id`, resolved once for the device's lifetime.
    fn handle(&self, requester_id: u16) -> DmaHandle {
        match &self.unit {
            None => DmaHandle::Direct(self.mem.clone()),
            Some(unit) => DmaHandle::Remapped {
                mem: self.mem.clone(),
                iommu: Arc::new(unit.attach(requester_id)),
            },
        }
    }
}

/// What serves devices' queues on the event loop.
type Worker = Box<dyn MutEventSubscriber + Send>;

/// The PCI root complex: the host bridge, the devices the command line asks for (edu devices, then
/// disks; BARs placed in the 32-bit window, INTx on the IOAPIC pins the _PRT names, MSI/MSI-X vectors as GSI
/// routes with irqfds, each device with the DMA handle of its requester id), configuration
/// mechanism #1 at 0xcf8 and the ECAM window that the MCFG table describes. Returns the devices'
/// workers.
fn add_pci(
    vm: &Arc<VmFd>,
    (router, ioapic): (&Arc<GsiRouter>, &SharedIoapic),
    dma: &DmaSource,
    (pio, mmio): (&Arc<Bus>, &Arc<Bus>),
    kinds: &[DeviceKind],
    disks: Vec<(File, &DiskConfig)>,
) -> Result<Vec<Worker>, Error> {
    let mmio_window = (
        layout::PCI_MMIO32_START,
        layout::ECAM_BASE - layout::PCI_MMIO32_START,
    );
    let mut root = PciRoot::new(mmio.clone(), pio.clone(), mmio_window, PCI_IO_WINDOW);
    let io_events: Arc<dyn devices::IoEvents> = Arc::new(KvmIoEvents { vm: vm.clone() });
    // One count per IOAPIC pin: devices sharing a pin keep it asserted while any of them does.
    let pins: Vec<Arc<Mutex<u32>>> = (0..layout::PCI_INTX_GSIS).map(|_| Arc::default()).collect();
    // For the device about to take the next slot (function 0 of bus 0): its INTA on the pin the
    // DSDT's _PRT names, and its DMA handle.
    let next = |root: &PciRoot| -> Result<_, Error> {
        let slot = root.next_slot().ok_or(devices::pci::PciError::BusFull)?;
        let gsi = layout::pci_intx_gsi(slot, 0);
        let index = (gsi - layout::PCI_INTX_FIRST_GSI) as usize;
        let pin = pins.get(index).cloned().unwrap_or_default();
        let line = Arc::new(IoapicLine::new(
            IoapicPin::new(ioapic.clone(), gsi as usize),
            pin,
        ));
        let requester_id = u16::from(slot) << 3;
        Ok((gsi, line, requester_id, dma.handle(requester_id)))
    };
    let vectors = |requester_id: u16, count: u16| -> Result<Arc<KvmMsiVectors>, Error> {
        Ok(Arc::new(
            KvmMsiVectors::new(vm, router.clone(), requester_id, count)
                .map_err(Error::Interrupts)?,
        ))
    };
    let mut workers: Vec<Worker> = Vec::new();
    for kind in kinds {
        let (gsi, line, rid, dma) = next(&root)?;
        let device: SharedPciDevice = match kind {
            DeviceKind::Edu => Arc::new(Mutex::new(Edu::new(dma, vectors(rid, 1)?, line))),
        };
        root.add(device, Some(gsi as u8))?;
    }
    for (file, disk) in disks {
        let (gsi, line, rid, dma) = next(&root)?;
        let id = disk
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let block = Block::new(file, disk.readonly, &id).map_err(|source| Error::Disk {
            path: disk.path.clone(),
            source,
        })?;
        let count = VirtioPci::vectors_for(&block);
        let (device, worker) =
            VirtioPci::new(block, dma, vectors(rid, count)?, line, io_events.clone())
                .map_err(host_err("create a virtio device"))?;
        root.add(Arc::new(Mutex::new(device)), Some(gsi as u8))?;
        workers.push(Box::new(worker));
    }
    let root = Arc::new(root);
    pio.insert(
        PCI_CONFIG_PORT,
        8,
        Arc::new(Mutex::new(ConfigAddressPort::new(root.clone()))),
    )?;
    mmio.insert(
        layout::ECAM_BASE,
        layout::ECAM_SIZE,
        Arc::new(Mutex::new(EcamWindow::new(root))),
    )?;
    Ok(workers)
}

/// Runs the event loop (console input, terminating signals, the exit event) until the VM's outcome
/// is set or the timeout expires.
fn wait_for_end(
    latch: &Arc<ExitLatch>,
    (wake, signals): (EventFd, SignalWatcher),
    (serial, rx_drained): (Arc<Mutex<Serial>>, EventFd),
    workers: Vec<Worker>,
    unit: Option<RemappingUnit>,
    serial_out: &SerialOutput,
    timeout: Option<Duration>,
) -> Outcome {
    // A timeout too large to represent is no timeout.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut events = match EventManager::<Box<dyn MutEventSubscriber + Send>>::new() {
        Ok(em) => em,
        Err(e) => return Outcome::Error(format!("cannot create the event loop: {e:?}")),
    };
    events.add_subscriber(Box::new(ExitWatcher::new(wake)));
    for worker in workers {
        events.add_subscriber(worker);
    }
    events.add_subscriber(Box::new(signals));
    if let Some(unit) = unit {
        match StatsSignal::install(Box::new(move || report_iommu_stats(&unit))) {
            Ok(watcher) => {
                events.add_subscriber(Box::new(watcher));
            }
            Err(e) => log::warn!("SIGUSR1 will not print the IOMMU statistics: {e}"),
        }
    }
    if *serial_out == SerialOutput::Stdout {
        match StdinInput::new(serial, rx_drained, latch.clone()) {
            Ok(input) => {
                events.add_subscriber(Box::new(input));
            }
            Err(e) => log::debug!("no serial input: {e}"),
        }
    }
    loop {
        if let Some(outcome) = latch.get() {
            return outcome;
        }
        let wait_ms = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    latch.set(Outcome::Timeout);
                    continue;
                }
                i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX)
            }
            None => -1,
        };
        if let Err(e) = events.run_with_timeout(wait_ms) {
            latch.set(Outcome::Error(format!("event loop failed: {e:?}")));
        }
    }
}

/// Stops every vCPU thread once the outcome is set: signals each thread until it leaves KVM_RUN (a
/// signal that lands just before KVM_RUN is entered is lost, hence the repetition), for up to 10
/// seconds. Returns where each vCPU stopped, and whether they all did.
fn stop_vcpus(threads: Vec<JoinHandle<String>>) -> (Vec<String>, bool) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < give_up {
        for t in threads.iter().filter(|t| !t.is_finished()) {
            let _ = t.kill(SIGRTMIN());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let all_stopped = threads.iter().all(JoinHandle::is_finished);
    let positions = threads
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if t.is_finished() {
                t.join()
                    .unwrap_or_else(|_| format!("vCPU {i} thread panicked"))
            } else {
                format!("vCPU {i} did not stop")
            }
        })
        .collect();
    (positions, all_stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FADT and DSDT (arch) promise what the ACPI power-management device (devices) does.
    #[test]
    fn acpi_tables_describe_the_pm_device() {
        use devices::legacy as dev;
        assert_eq!(
            u64::from(arch::acpi::SLEEP_CONTROL_OFFSET),
            dev::SLEEP_CONTROL
        );
        assert_eq!(
            u64::from(arch::acpi::SLEEP_STATUS_OFFSET),
            dev::SLEEP_STATUS
        );
        assert_eq!(u64::from(arch::acpi::RESET_OFFSET), dev::RESET_REGISTER);
        assert_eq!(arch::acpi::RESET_VALUE, dev::RESET_VALUE);
        assert_eq!(arch::acpi::S5_SLEEP_TYPE, dev::S5_SLEEP_TYPE);
        assert!(u64::from(arch::acpi::RESET_OFFSET) < ACPI_PM_LEN);
        assert_eq!(u64::from(arch::acpi::CMOS_PORT), dev::CMOS_PORT);
    }
}
