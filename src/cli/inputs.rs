//! The input files of `darts gradients` and `darts step`: a search state (weights, BN buffers,
//! alphas, optional optimiser state) and a pair of batches, each checked in full (every key
//! known, every shape, every value finite) before any work.

use anyhow::{bail, Context, Result};
use darts::darts::names;
use darts::darts::network::SearchConfig;
use darts::darts::params::{read_npz, State};
use darts::data::Batch;
use darts::search::step_graph::OptimState;
use ndarray::{ArrayD, IxDyn};
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
    let mut all = read_npz(path)?;
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
    let state = State::from_npz(path, &layout, k)?;
    all.retain(|key, _| !key.starts_with("sd/") && !names::ALPHA.contains(&key.as_str()));
    // Optional optimiser state.
    let mut bufs = Vec::new();
    for (n, shape, _) in layout.weights() {
        let key = format!("momentum_buffer/{n}");
        if let Some(m) = all.remove(&key) {
            bufs.push(shaped(&file, &key, m, shape)?);
        }
    }
    let n_weights = layout.weights().count();
    if !bufs.is_empty() && bufs.len() != n_weights {
        bail!(
            "{file}: momentum buffers for {} of {n_weights} weights; give all or none",
            bufs.len()
        );
    }
    let has_momentum = !bufs.is_empty();
    let mut opt = OptimState {
        sgd_buf: has_momentum.then_some(bufs),
        ..OptimState::default()
    };
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
            (None, Some(s)) => Some(("adam_step".to_string(), s.clone())),
            (None, None) => None,
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
    if let Some((key, a)) = all.iter().next() {
        bail!(
            "{file}: unknown key '{key}' (shape {:?}); a state file holds sd/<name>, \
             alpha/normal, alpha/reduce, momentum_buffer/<weight>, adam_m/<a>, adam_v/<a> \
             and adam_step[/<a>]",
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

fn labels_to_onehot(y: &ArrayD<f64>, n: usize, classes: usize, key: &str) -> Result<ArrayD<f64>> {
    if y.shape() != [n] {
        bail!(
            "'{key}' has shape {:?}, expected [{n}] to match its images",
            y.shape()
        );
    }
    let mut t = ArrayD::zeros(IxDyn(&[n, classes]));
    for (i, &v) in y.iter().enumerate() {
        if v < 0.0 || v.fract() != 0.0 || v as usize >= classes {
            bail!("'{key}'[{i}] = {v} is not a class index in 0..{classes}");
        }
        t[[i, v as usize]] = 1.0;
    }
    Ok(t)
}

fn take_batch(
    all: &mut BTreeMap<String, ArrayD<f64>>,
    which: &str,
    classes: usize,
    file: &str,
) -> Result<Batch> {
    let xk = format!("x_{which}");
    let yk = format!("y_{which}");
    let x = all
        .remove(&xk)
        .with_context(|| format!("{file}: missing key '{xk}'"))?;
    let y = all
        .remove(&yk)
        .with_context(|| format!("{file}: missing key '{yk}'"))?;
    if x.ndim() != 4 || x.shape()[1] != 3 || x.shape()[0] == 0 {
        bail!(
            "{file}: '{xk}' has shape {:?}, expected [N, 3, H, W] with N >= 1",
            x.shape()
        );
    }
    finite(file, &xk, &x)?;
    let onehot =
        labels_to_onehot(&y, x.shape()[0], classes, &yk).with_context(|| file.to_string())?;
    Ok(Batch { x, onehot })
}

/// Reads `x_train, y_train, x_valid, y_valid` (NCHW floats, integer labels) for a network
/// with `classes` classes; images of both batches have one size, which `cfg` must accept.
pub fn read_batches(path: &Path, cfg: &SearchConfig) -> Result<(Batch, Batch)> {
    let file = path.display().to_string();
    let mut b = read_npz(path)?;
    let train = take_batch(&mut b, "train", cfg.num_classes, &file)?;
    let valid = take_batch(&mut b, "valid", cfg.num_classes, &file)?;
    if valid.x.shape()[2..] != train.x.shape()[2..] {
        bail!("{file}: x_train and x_valid differ in image size");
    }
    if let Some(key) = b.keys().next() {
        bail!("{file}: unknown key '{key}'; a batch file holds x_train, y_train, x_valid, y_valid");
    }
    let (h, w) = (train.x.shape()[2], train.x.shape()[3]);
    cfg.validate(h, w)
        .with_context(|| format!("{file}: images of {h}x{w}"))?;
    Ok((train, valid))
}
