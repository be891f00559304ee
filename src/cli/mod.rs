//! Subcommands of the `darts` tool.

pub mod audit;
pub mod compare;
pub mod gradients;
pub mod gradients_rnn;
pub mod init;
pub mod inputs;
pub mod provenance;
pub mod report;
pub mod search;
pub mod search_rnn;
pub mod step;
pub mod train;
pub mod train_rnn;

/// A run stopped by Ctrl-C after writing its checkpoint: the tool exits with status 130, as
/// shells report a command ended by SIGINT, so a script can tell it from a finished run.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// The ranges of the optimiser flags `gradients` and `step` share: each of `flags` finite
/// and positive ([`Sign::Positive`]) or not negative ([`Sign::NonNegative`]), and
/// `--momentum` in [0, 1). The error names the flag and the allowed range.
pub fn check_flags(flags: &[(&str, f64, Sign)], momentum: f64) -> anyhow::Result<()> {
    for &(flag, v, sign) in flags {
        let ok = v.is_finite()
            && match sign {
                Sign::Positive => v > 0.0,
                Sign::NonNegative => v >= 0.0,
            };
        if !ok {
            let range = match sign {
                Sign::Positive => "> 0",
                Sign::NonNegative => ">= 0",
            };
            anyhow::bail!("{flag} {v}: must be finite and {range}");
        }
    }
    if !(0.0..1.0).contains(&momentum) {
        anyhow::bail!("--momentum {momentum}: must lie in [0, 1)");
    }
    Ok(())
}

/// The flag a long run polls to stop cleanly: the first Ctrl-C sets it (the run finishes its
/// step and writes a checkpoint), a second one exits at once with status 130.
pub fn stop_on_ctrl_c() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing the current step, then writing a checkpoint");
    });
    stop
}

/// Which values a flag allows (see [`check_flags`]).
#[derive(Clone, Copy, Debug)]
pub enum Sign {
    Positive,
    NonNegative,
}

/// The host's available memory (MemAvailable of /proc/meminfo), in bytes, where known.
fn mem_available() -> Option<u128> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses, before any allocation, a network whose step needs at least `need` bytes when the
/// host has less available; `flags` names the settings that size it.
pub fn check_memory(need: u128, flags: &str) -> anyhow::Result<()> {
    if let Some(avail) = mem_available() {
        if need > avail {
            anyhow::bail!(
                "{flags}: one step needs at least {:.1} GB, and this host has {:.1} GB \
                 available (MemAvailable); use a smaller network or pass --no-memory-check to \
                 try anyway",
                need as f64 / 1e9,
                avail as f64 / 1e9
            );
        }
    }
    Ok(())
}
