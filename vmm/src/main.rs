//! `vmm`: boots a kernel in a KVM virtual machine and exits with the guest's verdict.

#![cfg_attr(test, allow(clippy::indexing_slicing))]

mod cli;
mod console;
mod interrupts;
mod outcome;
mod signals;
mod vcpu;
mod vm;

use std::io::Write as _;

use clap::Parser;

use crate::outcome::{Outcome, STATUS_ERROR};

/// One line on stderr; never panics, even if stderr is closed or full.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "vmm: {line}");
}

fn main() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,virtio_queue=off"),
    )
    .init();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            // One line naming the problem, not clap's usage block (which follows a blank line).
            let msg = e.render().to_string();
            let problem: Vec<&str> = msg
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            report(problem.join(" ").trim_start_matches("error: "));
            std::process::exit(STATUS_ERROR);
        }
    };
    let timeout = match cli.timeout() {
        Ok(t) => t,
        Err(msg) => {
            report(&msg);
            std::process::exit(STATUS_ERROR);
        }
    };
    let config = vm::VmConfig {
        kernel: cli.kernel,
        initramfs: cli.initramfs,
        cmdline: cli.cmdline,
        cpus: cli.cpus,
        memory: cli.memory,
        serial: cli.serial,
        devices: cli.devices,
        disks: cli.disks,
        iommu: cli.iommu,
        timeout,
    };
    let outcome = match vm::run(&config) {
        Ok(outcome) => outcome,
        Err(e) => {
            report(&e.to_string());
            std::process::exit(STATUS_ERROR);
        }
    };
    match &outcome {
        Outcome::Timeout => report(&format!(
            "the guest did not finish within --timeout {}s",
            config.timeout.map(|t| t.as_secs_f64()).unwrap_or_default()
        )),
        Outcome::Error(msg) => report(msg),
        Outcome::Quit => report("quit from the console (Ctrl-A x)"),
        Outcome::Signal(signo) => report(&format!("stopped by signal {signo}")),
        _ => {}
    }
    std::process::exit(outcome.exit_status());
}
