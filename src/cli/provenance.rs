//! The inputs a dump was computed from, recorded in the dump itself: `darts gradients` and
//! `darts step` copy every array of their state and batch files under `input/state/` and
//! `input/batch/`, and their numeric settings under `input/settings/<flag>`, so that
//! `darts compare` can rebuild the same graph at the same point and derive its tolerances
//! from it, with no other file needed. Another implementation's dump need not carry them.

use anyhow::{Context, Result};
use darts::darts::params::read_npz;
use ndarray::{ArrayD, IxDyn};
use std::collections::BTreeMap;
use std::path::Path;

pub const STATE: &str = "input/state/";
pub const BATCH: &str = "input/batch/";
pub const SETTINGS: &str = "input/settings/";

/// Adds the arrays of `state` and `batch` and the `settings` to `out` under [`STATE`],
/// [`BATCH`] and [`SETTINGS`].
pub fn record(
    out: &mut BTreeMap<String, ArrayD<f64>>,
    state: &Path,
    batch: &Path,
    settings: &[(&str, f64)],
) -> Result<()> {
    for (prefix, path) in [(STATE, state), (BATCH, batch)] {
        let arrays = read_npz(path).with_context(|| format!("recording {}", path.display()))?;
        for (k, v) in arrays {
            out.insert(format!("{prefix}{k}"), v);
        }
    }
    for &(name, v) in settings {
        out.insert(
            format!("{SETTINGS}{name}"),
            ArrayD::from_elem(IxDyn(&[]), v),
        );
    }
    Ok(())
}

/// Writes the `gradients` dump `arrays` to `a.out` with its recorded inputs (`settings`:
/// the numeric flags), and reports it.
pub fn write_gradients_dump(
    a: &super::gradients::Args,
    mut arrays: BTreeMap<String, ArrayD<f64>>,
    settings: &[(&str, f64)],
    start: std::time::Instant,
) -> Result<()> {
    record(&mut arrays, &a.state, &a.batch, settings)?;
    darts::darts::params::write_npz(&a.out, arrays.iter().map(|(k, v)| (k.as_str(), v)))?;
    println!(
        "wrote {} arrays to {} ({:.2} s)",
        arrays.len(),
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The recorded inputs of a dump.
pub struct Recorded {
    pub state: BTreeMap<String, ArrayD<f64>>,
    pub batch: BTreeMap<String, ArrayD<f64>>,
    pub settings: BTreeMap<String, f64>,
}

impl Recorded {
    /// The setting `name`, or an error naming the dump and the missing key.
    pub fn setting(&self, file: &str, name: &str) -> Result<f64> {
        self.settings
            .get(name)
            .copied()
            .with_context(|| format!("{file}: the recorded inputs lack '{SETTINGS}{name}'"))
    }
}

/// Removes the recorded inputs from `dump`; None when it holds none.
pub fn take(dump: &mut BTreeMap<String, ArrayD<f64>>) -> Option<Recorded> {
    let keys: Vec<String> = dump
        .keys()
        .filter(|k| k.starts_with("input/"))
        .cloned()
        .collect();
    let mut r = Recorded {
        state: BTreeMap::new(),
        batch: BTreeMap::new(),
        settings: BTreeMap::new(),
    };
    for k in &keys {
        let v = dump.remove(k).expect("listed");
        if let Some(name) = k.strip_prefix(STATE) {
            r.state.insert(name.to_string(), v);
        } else if let Some(name) = k.strip_prefix(BATCH) {
            r.batch.insert(name.to_string(), v);
        } else if let Some(name) = k.strip_prefix(SETTINGS) {
            r.settings.insert(name.to_string(), v.sum());
        }
    }
    (!r.state.is_empty()).then_some(r)
}
