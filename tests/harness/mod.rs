//! What the integration tests share: building guest programs, running the real `vmm` binary with a
//! hard time limit, and saying so when a test cannot run on this host.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmm/ has a parent")
        .to_path_buf()
}

/// Tells the person running the tests that `test` could not run here. Written straight to stderr,
/// past libtest's capture, so the line shows even though the test then passes. With
/// VMM_TEST_REQUIRE_ALL=1 (set by .ci/run, whose machines have every tool and /dev/kvm) a skip is a
/// failure instead, so CI cannot go green without running the tests.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("VMM_TEST_REQUIRE_ALL").is_some_and(|v| v == "1") {
        panic!("{test} cannot run here ({why}) and VMM_TEST_REQUIRE_ALL=1");
    }
    skip_here(test, why);
}

/// A skip that is right even in CI: the test needs a machine of another kind (hardware KVM).
pub fn skip_here(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}

/// Whether /dev/kvm can be opened; if not, reports the skip for `test`.
pub fn kvm_or_skip(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            skip(test, &format!("/dev/kvm is not usable: {e}"));
            false
        }
    }
}

fn run_build(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the {what} build: {e}"));
    assert!(
        out.status.success(),
        "{what} build failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Rust guest programs (resources/guests), built once per test process into
/// target/guests/elf/NAME.elf. A separate target directory keeps the nested cargo off the lock
/// of the build that runs these tests.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let out = root().join("target/guests/elf");
        let mut cmd = Command::new("bash");
        cmd.arg(root().join("resources/guests/build.sh")).arg(&out);
        // The guests are built for the host target by their own rules; nothing from this cargo run
        // may leak into that build.
        for var in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "CARGO_TARGET_DIR",
            "RUSTC_WRAPPER",
        ] {
            cmd.env_remove(var);
        }
        run_build(&mut cmd, "guest programs");
        out
    });
    let path = dir.join(format!("{name}.elf"));
    assert!(
        path.exists(),
        "guest program {} was not built",
        path.display()
    );
    path
}

/// A test kernel from tests/data/NAME.S, assembled with binutils, i.e. built without any of this
/// project's guest tooling: `multiboot-asm` (ELF32 multiboot), `pvh-asm` (ELF64 with a PVH note) or
/// `bzimage-asm` (a bzImage). Built once per test process; the file appears whole (renamed into
/// place), so a test in another process never boots a half-written kernel.
pub fn asm_kernel(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, path)) = built.iter().find(|(n, _)| n == name) {
        return path.clone();
    }
    let dir = root().join("target/test-guests");
    std::fs::create_dir_all(&dir).expect("create target/test-guests");
    let data = root().join("tests/data");
    let tmp = dir.join(format!("{name}.{}", std::process::id()));
    let obj = tmp.with_extension("o");
    let out = dir.join(format!("{name}.img"));
    let bits = if name == "multiboot-asm" {
        "--32"
    } else {
        "--64"
    };
    run_build(
        Command::new("as")
            .arg(bits)
            .arg("-I")
            .arg(&data)
            .arg(data.join(format!("{name}.S")))
            .arg("-o")
            .arg(&obj),
        &format!("{name} (as)"),
    );
    let mut link = Command::new(if name == "bzimage-asm" {
        "objcopy"
    } else {
        "ld"
    });
    match name {
        "multiboot-asm" => link
            .args(["-m", "elf_i386", "-Ttext=0x200000"])
            .arg(&obj)
            .arg("-o")
            .arg(&tmp),
        "pvh-asm" => link
            .args(["-m", "elf_x86_64", "-Ttext=0x200000"])
            .arg(&obj)
            .arg("-o")
            .arg(&tmp),
        _ => link
            .args(["-O", "binary", "-j", ".text"])
            .arg(&obj)
            .arg(&tmp),
    };
    run_build(&mut link, &format!("{name} (link)"));
    std::fs::rename(&tmp, &out).expect("move the test kernel into place");
    let _ = std::fs::remove_file(&obj);
    built.push((name.to_owned(), out.clone()));
    out
}

/// A scratch file holding `contents`, unique to this test process and `name`.
pub fn scratch_file(name: &str, contents: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("vmm-test-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("write scratch file");
    path
}

/// One finished run of the VMM.
#[derive(Debug)]
pub struct Run {
    /// Exit status (-1 if killed by a signal).
    pub status: i32,
    /// Everything on stdout (the guest's serial output).
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl Run {
    /// Asserts the exit status, showing the output when it differs.
    pub fn expect_status(&self, status: i32) -> &Self {
        assert_eq!(
            self.status, status,
            "unexpected exit status; run: {self:#?}"
        );
        self
    }

    /// Asserts that stdout has `line` as a whole line.
    pub fn expect_line(&self, line: &str) -> &Self {
        assert!(
            self.stdout.lines().any(|l| l.trim_end() == line),
            "no line {line:?} in: {self:#?}"
        );
        self
    }
}

/// A hard limit on any one VMM run, far above what a test needs, so that a VMM bug cannot hang the
/// suite; tests that need a shorter limit pass --timeout themselves.
const HARD_LIMIT: Duration = Duration::from_secs(120);

/// Runs the VMM with `args` until it exits, `limit` passes, or `done` says the lines seen so far
/// are enough; then kills it. The returned status is -1 when the VMM was stopped early.
pub fn vmm_until(args: &[&str], limit: Duration, done: impl Fn(&[String]) -> bool) -> Run {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmm");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if tx
                .send(
                    String::from_utf8_lossy(&line)
                        .trim_end_matches('\r')
                        .to_owned(),
                )
                .is_err()
            {
                break;
            }
        }
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let mut lines = Vec::new();
    let mut stopped = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                lines.push(line);
                if done(&lines) {
                    stopped = true;
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            stopped = true;
            break;
        }
    }
    if stopped {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait for vmm");
    let _ = reader.join();
    Run {
        status: if stopped {
            -1
        } else {
            status.code().unwrap_or(-1)
        },
        stdout: lines.join("\n"),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs the VMM with `args`, standard input closed, and waits for it.
pub fn vmm(args: &[&str]) -> Run {
    vmm_with_input(args, None)
}

/// Runs the VMM with `args` and `input` (if any) on its standard input, and waits for it.
pub fn vmm_with_input(args: &[&str], input: Option<&[u8]>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmm");
    if let (Some(input), Some(mut stdin)) = (input.map(<[u8]>::to_vec), child.stdin.take()) {
        // From a thread: the VMM takes input only as fast as the guest reads it.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for vmm") {
            break status;
        }
        if start.elapsed() > HARD_LIMIT {
            let _ = child.kill();
            break child.wait().expect("wait for killed vmm");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        status: status.code().unwrap_or(-1),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A note for the person running the tests (how far a partial boot got), past libtest's capture.
pub fn note(test: &str, what: &str) {
    let _ = writeln!(std::io::stderr().lock(), "NOTE {test}: {what}");
}

/// The CI kernel's cache directory (resources/linux/ci-kernel.sh: bzImage, vmlinux, modules,
/// busybox), fetched once per test process; None, with the skip reported, on a host without apt.
pub fn ci_kernel(test: &str) -> Option<PathBuf> {
    if Command::new("apt-get").arg("--version").output().is_err() {
        skip(
            test,
            "the CI kernel is fetched with apt-get, which this host lacks",
        );
        return None;
    }
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    Some(
        DIR.get_or_init(|| {
            let out = Command::new("bash")
                .arg(root().join("resources/linux/ci-kernel.sh"))
                .output()
                .expect("run ci-kernel.sh");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "ci-kernel.sh failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(
                stdout
                    .lines()
                    .last()
                    .expect("ci-kernel.sh prints the cache directory"),
            )
        })
        .clone(),
    )
}

/// The CI initramfs (resources/linux/mkinitramfs.py) for the kernel in `cache`, built once per
/// test process into target/linux/.
pub fn ci_initramfs(cache: &Path) -> PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = root().join("target/linux");
        std::fs::create_dir_all(&dir).expect("create target/linux");
        let out = dir.join(format!("initramfs.{}.cpio", std::process::id()));
        run_build(
            Command::new("python3")
                .arg(root().join("resources/linux/mkinitramfs.py"))
                .arg(cache)
                .arg(&out),
            "CI initramfs",
        );
        out
    })
    .clone()
}

/// Whether KVM here is hardware-assisted (VT-x or AMD-V), where a Linux guest boots in full.
pub fn hardware_kvm() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")))
    })
}
