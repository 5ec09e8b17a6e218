//! Link settings for the guest binaries.
//!
//! The guests are bare-metal multiboot kernels built with the host target
//! (x86_64-unknown-linux-gnu), so everything that turns a normal Linux
//! executable into a kernel image comes from here: the linker script, no C
//! runtime, a static non-PIE image and no build-id note.

use std::env;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let script = dir.join("link.ld");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", script.display());

    for arg in [
        format!("-T{}", script.display()),
        "-nostartfiles".to_string(),
        "-nostdlib".to_string(),
        "-static".to_string(),
        "-no-pie".to_string(),
        "-Wl,--build-id=none".to_string(),
        "-Wl,-z,max-page-size=4096".to_string(),
        "-Wl,-z,norelro".to_string(),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
