//! The input files of `darts gradients` and `darts step`: a search state (weights, BN buffers,
//! alphas, optional optimiser state) and a pair of batches, each checked in full (every key
//! known, every shape, every value finite) before any work.

use anyhow::{bail, Context, Result};
use darts::darts::batch_file::{batch_from_arrays, LabelledBatch};
use darts::darts::names;
use darts::darts::network::SearchConfig;
use darts::darts::params::{read_npz, State};
use darts::data::Batch;
use darts::search::step_graph::OptimState;
use ndarray::ArrayD;
use std::collections::BTreeMap;
use std::path::Path;

/// A search state read from `--state`.
pub struct SearchInput {
    pub cfg: SearchConfig,
    pub state: State,
    pub opt: OptimState,
    /// Whether the file held momentum buffers (else `opt.sgd_buf` is None).
    pub has_momentum: bool,
}

fn finite(file: &str, key: &str, a: &ArrayD<f64>) -> Result<()> {
    if let Some(i) = a.iter().position(|v| !v.is_finite()) {
        bail!(
            "{file}: '{key}' holds {} at flat index {i}",
            a.iter().nth(i).copied().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

fn shaped(file: &str, key: &str, a: ArrayD<f64>, shape: &[usize]) -> Result<ArrayD<f64>> {
    if a.shape() != shape {
        bail!(
            "{file}: '{key}' has shape {:?}, expected {shape:?}",
            a.shape()
        );
    }
    finite(file, key, &a)?;
    Ok(a)
}

/// Reads `sd/<state_dict name>` for every weight and BN buffer, `alpha/normal`,
/// `alpha/reduce` (`[k, 8]`), and the optional optimiser state: `momentum_buffer/<weight>`
/// for every weight or none, and per alpha `adam_m/<a>`, `adam_v/<a>` with its step count
/// `adam_step/<a>` (or one `adam_step` for both). The configuration is read from the shapes;
/// `stem_multiplier` and `multiplier`, when given, must agree with them. Any other key is an
/// error.
pub fn read_state(
    path: &Path,
    stem_multiplier: Option<usize>,
    multiplier: Option<usize>,
) -> Result<SearchInput> {
    let file = path.display().to_string();
    state_from_arrays(&file, read_npz(path)?, stem_multiplier, multiplier)
}

/// [`read_state`] of the arrays of a state file (`file` names it in errors).
pub fn state_from_arrays(
    file: &str,
    mut all: BTreeMap<String, ArrayD<f64>>,
    stem_multiplier: Option<usize>,
    multiplier: Option<usize>,
) -> Result<SearchInput> {
    let file = file.to_string();
    if !all.keys().any(|k| k.starts_with("sd/")) {
        bail!(
            "{file}: no 'sd/<name>' keys: a state file names every weight and BN buffer \
             'sd/<state_dict name>' (keys found: {})",
            all.keys().take(5).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let k = match all.get(names::ALPHA[0]) {
        Some(a) if a.ndim() == 2 && a.shape()[1] == 8 => a.shape()[0],
        Some(a) => bail!(
            "{file}: '{}' has shape {:?}, expected [k, 8]",
            names::ALPHA[0],
            a.shape()
        ),
        None => bail!("{file}: missing key '{}'", names::ALPHA[0]),
    };
    let shapes: Vec<(&str, &[usize])> = all
        .iter()
        .filter_map(|(n, v)| n.strip_prefix("sd/").map(|n| (n, v.shape())))
        .collect();
    let cfg = SearchConfig::from_state_shapes(shapes, k, stem_multiplier, multiplier)
        .with_context(|| format!("reading the network configuration from {file}"))?;
    let layout = cfg.layout()?;
    // Adam's state is `darts step`'s addition to a state file; the rest is read strictly
    // (every key known, shapes, finiteness, momentum buffers all or none) by State.
    let mut adam: BTreeMap<String, ArrayD<f64>> = BTreeMap::new();
    for key in all.keys().cloned().collect::<Vec<_>>() {
        if key.starts_with("adam_") {
            adam.extend(all.remove_entry(&key));
        }
    }
    let (state, bufs) = State::from_arrays(all, &file, &layout, k)?;
    let has_momentum = bufs.is_some();
    let mut opt = OptimState {
        sgd_buf: bufs,
        ..OptimState::default()
    };
    let mut all = adam;
    let shared_step = all.remove("adam_step");
    for (c, cell) in names::CELLS.into_iter().enumerate() {
        let (mk, vk, sk) = (
            names::adam_m(cell),
            names::adam_v(cell),
            format!("adam_step/{cell}"),
        );
        let m = all.remove(&mk);
        let v = all.remove(&vk);
        let step = match (all.remove(&sk), &shared_step) {
            (Some(_), Some(_)) => bail!("{file}: both 'adam_step' and '{sk}' given; give one"),
            (Some(s), None) => Some((sk.clone(), s)),
            // The shared count applies to each alpha that has moments.
            (None, Some(s)) if m.is_some() || v.is_some() => {
                Some(("adam_step".to_string(), s.clone()))
            }
            (None, _) => None,
        };
        match (m, v, step) {
            (None, None, None) => {}
            (Some(m), Some(v), Some((skey, s))) => {
                let t = s.iter().next().copied().unwrap_or(f64::NAN);
                if s.len() != 1 || !(t.is_finite() && t >= 1.0 && t.fract() == 0.0) {
                    bail!(
                        "{file}: '{skey}' must be one whole number >= 1 (Adam's step count), \
                         got {s}"
                    );
                }
                opt.adam_m[c] = Some(shaped(&file, &mk, m, &[k, 8])?);
                opt.adam_v[c] = Some(shaped(&file, &vk, v, &[k, 8])?);
                opt.adam_t[c] = t as u64;
            }
            _ => bail!(
                "{file}: Adam's state of alpha/{cell} needs all of '{mk}', '{vk}' and \
                 'adam_step/{cell}' (or 'adam_step'), or none of them"
            ),
        }
    }
    if shared_step.is_some() && opt.adam_t == [0, 0] {
        bail!("{file}: 'adam_step' given without any alpha's 'adam_m/<a>' and 'adam_v/<a>'");
    }
    if let Some((key, a)) = all.iter().next() {
        bail!(
            "{file}: unknown key '{key}' (shape {:?}); a state file holds sd/<name>, \
             alpha/normal, alpha/reduce, momentum_buffer/<weight>, adam_m/<a>, adam_v/<a> \
             and adam_step[/<a>] (a = normal, reduce)",
            a.shape()
        );
    }
    Ok(SearchInput {
        cfg,
        state,
        opt,
        has_momentum,
    })
}

/// Reads `x_train, y_train, x_valid, y_valid` (NCHW floats, integer labels) strictly
/// ([`read_batch_npz`]) for the network `cfg`, whose image size they must fit.
pub fn read_batches(path: &Path, cfg: &SearchConfig) -> Result<(Batch, Batch)> {
    batches_from_arrays(&path.display().to_string(), read_npz(path)?, cfg)
}

/// [`read_batches`] of the arrays of a batch file (`file` names it in errors).
pub fn batches_from_arrays(
    file: &str,
    all: BTreeMap<String, ArrayD<f64>>,
    cfg: &SearchConfig,
) -> Result<(Batch, Batch)> {
    let b = batch_from_arrays(all, file, cfg.num_classes)?;
    let (h, w) = (b.train.x.shape()[2], b.train.x.shape()[3]);
    cfg.validate(h, w)
        .with_context(|| format!("{file}: images of {h}x{w}"))?;
    let batch = |l: LabelledBatch| Batch {
        x: l.x,
        onehot: l.onehot,
    };
    Ok((batch(b.train), batch(b.valid)))
}
