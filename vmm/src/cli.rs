//! The command line.

use std::path::PathBuf;

use clap::Parser;

/// Exit statuses, documented in --help and the README.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0      the guest powered off (ACPI S5) or reset (i8042, ACPI reset register)
  odd    the guest wrote v to the exit port 0xf4: status (v << 1) | 1, so v = 0 gives 1 (PASS)
  2      VMM error: bad option, unreadable or unrecognised kernel, no usable /dev/kvm
  4      the guest crashed: triple fault, KVM internal error or failed entry (registers on stderr)
  124    --timeout expired before the guest finished
  128+N  the VMM received terminating signal N (SIGTERM, SIGINT, SIGHUP) and stopped the guest

Console: with --serial stdout, standard input is the guest's serial input; a terminal is put in
raw mode, and Ctrl-A x quits (status 0), Ctrl-A Ctrl-A sends a Ctrl-A.";

/// A minimal KVM virtual machine monitor whose headline feature is an emulated Intel VT-d IOMMU.
#[derive(Debug, Parser)]
#[command(name = "vmm", version, after_help = EXIT_STATUS_HELP)]
pub struct Cli {
    /// Kernel to boot: a Linux bzImage, an ELF with a PVH entry note (e.g. vmlinux), or a multiboot
    /// v1 kernel (e.g. a kernel unit-test binary). The format is detected from the file.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

    /// Initramfs for Linux; for a multiboot kernel, its first module.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,

    /// Kernel command line.
    #[arg(long, value_name = "STRING", default_value = "")]
    pub cmdline: String,

    /// Number of vCPUs (1-254).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,

    /// Guest RAM, with an optional K, M or G suffix (bytes without one). RAM beyond 3 GiB is placed
    /// above 4 GiB, after the 32-bit MMIO hole.
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
    pub memory: u64,

    /// Where the guest's COM1 output goes: stdout, file=PATH, or off. With stdout, standard input is
    /// the guest's serial input.
    #[arg(long, value_name = "WHERE", default_value = "stdout", value_parser = parse_serial)]
    pub serial: SerialOutput,

    /// Attach a PCI device; repeatable. `edu`: the DMA test device with QEMU's edu register
    /// interface (1234:11e8), doing its DMA through its own DMA handle.
    #[arg(long = "device", value_name = "DEVICE", value_parser = parse_device)]
    pub devices: Vec<DeviceKind>,

    /// Attach a virtio-blk disk backed by a raw image file; repeatable. `readonly=on` opens the
    /// file read-only and offers the disk to the guest as read-only. The capacity is the file's
    /// size in 512-byte sectors; the disk's serial (GET_ID) is the file name's first 20 bytes.
    #[arg(long = "disk", value_name = "path=FILE[,readonly=on]", value_parser = parse_disk)]
    pub disks: Vec<DiskConfig>,

    /// Put an Intel VT-d remapping unit at 0xfed90000 (described by an ACPI DMAR table) in front
    /// of every PCI device and the I/O APIC. Options, comma-separated, defaults first:
    /// aw-bits=48|39 (guest address width: 48 walks 3- and 4-level tables, 39 only 3-level);
    /// caching-mode=off|on (CAP.CM: the guest must invalidate after every map, as for vfio);
    /// qi=on|off (queued invalidation; off leaves register-based only, and interrupt remapping
    /// off unless asked for);
    /// intremap=on|off (interrupt remapping of MSIs and I/O APIC pins; needs qi=on);
    /// eim=on|off (x2APIC destinations in interrupt remapping; needs intremap=on, and is off by
    /// default when intremap is off);
    /// pt=on|off (pass-through contexts, for iommu=pt);
    /// superpages=on|2m|off (2 MiB and 1 GiB, 2 MiB only, or no large pages);
    /// fault-records=8 (fault recording registers, 1-128).
    /// At exit and on SIGUSR1 the VMM prints one line of the unit's statistics on stderr.
    #[arg(long, value_name = "OPTIONS", num_args = 0..=1, default_missing_value = "", value_parser = parse_iommu)]
    pub iommu: Option<iommu::Config>,

    /// Stop the guest after this many seconds and exit with status 124.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
}

/// A PCI device the command line can attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// The edu DMA test device.
    Edu,
}

fn parse_device(s: &str) -> Result<DeviceKind, String> {
    match s {
        "edu" => Ok(DeviceKind::Edu),
        _ => Err("expected edu".into()),
    }
}

/// A disk as the command line describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw image.
    pub path: PathBuf,
    /// Read-only for the guest (and opened read-only).
    pub readonly: bool,
}

fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let mut path = None;
    let mut readonly = false;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("path", p)) if !p.is_empty() => path = Some(PathBuf::from(p)),
            Some(("readonly", "on")) => readonly = true,
            Some(("readonly", "off")) => readonly = false,
            Some(("readonly", v)) => return Err(format!("readonly={v}: expected on or off")),
            _ => return Err(format!("'{part}': expected path=FILE or readonly=on|off")),
        }
    }
    let path = path.ok_or("missing path=FILE")?;
    Ok(DiskConfig { path, readonly })
}

fn on_off(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{key}={value}: expected on or off")),
    }
}

/// Parses the `--iommu` options into the unit's configuration. Interrupt remapping follows
/// queued invalidation, and EIM follows interrupt remapping, unless the options name them.
pub fn parse_iommu(s: &str) -> Result<iommu::Config, String> {
    let mut config = iommu::Config::default();
    let (mut intremap, mut eim) = (None, None);
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}': expected OPTION=VALUE"))?;
        match key {
            "aw-bits" => {
                config.aw_bits = match value {
                    "39" => 39,
                    "48" => 48,
                    _ => return Err(format!("aw-bits={value}: expected 39 or 48")),
                }
            }
            "caching-mode" => config.caching_mode = on_off(key, value)?,
            "qi" => config.queued_invalidation = on_off(key, value)?,
            "intremap" => intremap = Some(on_off(key, value)?),
            "eim" => eim = Some(on_off(key, value)?),
            "pt" => config.pass_through = on_off(key, value)?,
            "superpages" => {
                (config.superpages_2m, config.superpages_1g) = match value {
                    "on" => (true, true),
                    "2m" => (true, false),
                    "off" => (false, false),
                    _ => return Err(format!("superpages={value}: expected on, 2m or off")),
                }
            }
            "fault-records" => {
                config.fault_records = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=128).contains(n))
                    .ok_or_else(|| format!("fault-records={value}: expected 1 to 128"))?
            }
            _ => {
                return Err(format!(
                    "unknown option '{key}' (aw-bits, caching-mode, qi, intremap, eim, pt, \
                     superpages, fault-records)"
                ));
            }
        }
    }
    config.interrupt_remapping = intremap.unwrap_or(config.queued_invalidation);
    config.extended_interrupt_mode = eim.unwrap_or(config.interrupt_remapping);
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Destination of the guest's serial output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialOutput {
    /// The VMM's standard output (and standard input as the serial input).
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
    /// Discarded.
    Off,
}

fn parse_serial(s: &str) -> Result<SerialOutput, String> {
    match s {
        "stdout" => Ok(SerialOutput::Stdout),
        "off" => Ok(SerialOutput::Off),
        _ => match s.strip_prefix("file=") {
            Some(path) if !path.is_empty() => Ok(SerialOutput::File(path.into())),
            _ => Err("expected stdout, off or file=PATH".into()),
        },
    }
}

/// Parses a size such as 4096, 64K, 512M or 6G (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 10),
        Some((i, 'm' | 'M')) => (&s[..i], 20),
        Some((i, 'g' | 'G')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size such as 512M or 6G"))?;
    let bytes = value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))?;
    if bytes < arch::layout::MIN_MEMORY {
        return Err(format!("'{s}' is too small: the guest needs at least 2M"));
    }
    if bytes % 4096 != 0 {
        return Err(format!("'{s}' is not a multiple of 4K"));
    }
    Ok(bytes)
}

impl Cli {
    /// The timeout as a duration, refusing negative or absurd values.
    pub fn timeout(&self) -> Result<Option<std::time::Duration>, String> {
        self.timeout
            .map(|t| {
                std::time::Duration::try_from_secs_f64(t).map_err(|_| {
                    format!("--timeout {t}: expected a non-negative number of seconds")
                })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("6G"), Ok(6 << 30));
        assert_eq!(parse_size("4096k"), Ok(4 << 20));
        assert_eq!(parse_size("4194304"), Ok(4 << 20));
        for bad in ["", "M", "12X", "-1G", "1M", "99999999999999G", "4097K"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serial_options() {
        assert_eq!(parse_serial("stdout"), Ok(SerialOutput::Stdout));
        assert_eq!(parse_serial("off"), Ok(SerialOutput::Off));
        assert_eq!(
            parse_serial("file=/tmp/x"),
            Ok(SerialOutput::File("/tmp/x".into()))
        );
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("tty").is_err());
    }

    #[test]
    fn iommu_options() {
        let c =
            parse_iommu("aw-bits=39,caching-mode=on,qi=off,pt=off,superpages=2m,fault-records=128")
                .unwrap();
        assert_eq!(
            c,
            iommu::Config {
                aw_bits: 39,
                caching_mode: true,
                queued_invalidation: false,
                interrupt_remapping: false,
                extended_interrupt_mode: false,
                pass_through: false,
                superpages_2m: true,
                superpages_1g: false,
                fault_records: 128,
                ..iommu::Config::default()
            }
        );
        let xapic = parse_iommu("eim=off").unwrap();
        assert!(xapic.interrupt_remapping && !xapic.extended_interrupt_mode);
        let no_ir = parse_iommu("intremap=off").unwrap();
        assert!(!no_ir.interrupt_remapping && !no_ir.extended_interrupt_mode);
        assert_eq!(parse_iommu(""), Ok(iommu::Config::default()));
        let off = parse_iommu("superpages=off").unwrap();
        assert!(!off.superpages_2m && !off.superpages_1g);
        for (bad, says) in [
            ("aw-bits=57", "aw-bits=57: expected 39 or 48"),
            ("caching-mode=yes", "caching-mode=yes: expected on or off"),
            ("fault-records=0", "fault-records=0: expected 1 to 128"),
            ("fault-records=x", "fault-records=x: expected 1 to 128"),
            ("superpages=1g", "superpages=1g: expected on, 2m or off"),
            ("qi", "'qi': expected OPTION=VALUE"),
            ("ir=on", "unknown option 'ir'"),
            ("intremap=1", "intremap=1: expected on or off"),
            (
                "qi=off,intremap=on",
                "interrupt remapping needs queued invalidation",
            ),
            (
                "intremap=off,eim=on",
                "x2APIC destinations (eim) need interrupt remapping",
            ),
        ] {
            let err = parse_iommu(bad).unwrap_err();
            assert!(err.starts_with(says), "{bad}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn command_line_parses_and_rejects() {
        let cli =
            Cli::try_parse_from(["vmm", "--kernel", "k", "--cpus", "4", "--memory", "6G"]).unwrap();
        assert_eq!((cli.cpus, cli.memory), (4, 6 << 30));
        assert!(Cli::try_parse_from(["vmm", "--kernel", "k", "--cpus", "0"]).is_err());
        assert!(Cli::try_parse_from(["vmm", "--kernel", "k", "--cpus", "255"]).is_err());
        assert!(Cli::try_parse_from(["vmm"]).is_err());
        let two =
            Cli::try_parse_from(["vmm", "--kernel", "k", "--device", "edu", "--device", "edu"])
                .unwrap();
        assert_eq!(two.devices, vec![DeviceKind::Edu, DeviceKind::Edu]);
        assert!(Cli::try_parse_from(["vmm", "--kernel", "k", "--device", "gpu"]).is_err());
        let disks = Cli::try_parse_from([
            "vmm",
            "--kernel",
            "k",
            "--disk",
            "path=a.img",
            "--disk",
            "readonly=on,path=/b",
        ])
        .unwrap()
        .disks;
        assert_eq!(
            disks,
            vec![
                DiskConfig {
                    path: "a.img".into(),
                    readonly: false
                },
                DiskConfig {
                    path: "/b".into(),
                    readonly: true
                }
            ]
        );
        for bad in [
            "a.img",
            "path=",
            "path=x,readonly=yes",
            "path=x,cache=none",
            "",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad}");
        }
        let neg = Cli::try_parse_from(["vmm", "--kernel", "k", "--timeout=-1"]).unwrap();
        assert!(neg.iommu.is_none());
        let plain = Cli::try_parse_from(["vmm", "--iommu", "--kernel", "k"]).unwrap();
        assert_eq!(plain.iommu, Some(iommu::Config::default()));
        let set = Cli::try_parse_from(["vmm", "--kernel", "k", "--iommu", "aw-bits=39,qi=off"])
            .unwrap()
            .iommu
            .unwrap();
        assert_eq!((set.aw_bits, set.queued_invalidation), (39, false));
        assert!(Cli::try_parse_from(["vmm", "--kernel", "k", "--iommu", "aw-bits=57"]).is_err());
        assert!(neg.timeout().is_err());
    }
}
