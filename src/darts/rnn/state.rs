//! The recurrent language model's parameters and buffers under the reference's state_dict
//! names (RNN_REFERENCE_NOTES.md section 2; ../shared/reference/rnn_state_dict_layout_V50_H8.txt),
//! seeded initialisation, and strict npz reading (`sd/<name>` and `alpha/recurrent`).

use super::{names, INIT_RANGE, ROWS, STEPS};
use crate::darts::params::{
    read_npz, refuse_extra, take_exact, take_tensors, write_npz, Kind, Layout, StateError,
};
use ndarray::{ArrayD, IxDyn};
use rand::Rng;
use rand_distr::StandardNormal;
use std::collections::BTreeMap;
use std::path::Path;

/// The size of a recurrent language model: vocabulary V (ntoken) and hidden size H
/// (= ninp = nhid = nhidlast, which the reference asserts equal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RnnConfig {
    pub ntoken: usize,
    pub nhid: usize,
}

impl RnnConfig {
    /// The search model's state_dict, in its order: encoder.weight [V, H], rnns.0._W0
    /// [2H, 2H], rnns.0._Ws.0..7 [H, 2H], the cell's BN buffers, decoder.weight (the
    /// encoder's tensor again) and decoder.bias [V].
    pub fn search_layout(&self) -> Layout {
        self.layout(STEPS, true)
    }

    /// The derived model of a genotype with `nodes` nodes: as the search model without BN and
    /// with one W_i per node.
    pub fn derived_layout(&self, nodes: usize) -> Layout {
        self.layout(nodes, false)
    }

    fn layout(&self, nodes: usize, bn: bool) -> Layout {
        let (v, h) = (self.ntoken, self.nhid);
        let mut l = Layout::default();
        l.push(names::ENCODER, &[v, h], Kind::Weight { fan_in: h });
        l.push(names::W0, &[2 * h, 2 * h], Kind::Weight { fan_in: 2 * h });
        for i in 0..nodes {
            l.push(names::ws(i), &[h, 2 * h], Kind::Weight { fan_in: h });
        }
        if bn {
            l.push(
                format!("{}.running_mean", names::BN),
                &[h],
                Kind::RunningMean,
            );
            l.push(format!("{}.running_var", names::BN), &[h], Kind::RunningVar);
            l.push(
                format!("{}.num_batches_tracked", names::BN),
                &[],
                Kind::NumBatchesTracked,
            );
        }
        l.push(names::DECODER_WEIGHT, &[v, h], Kind::Tied);
        l.push(names::DECODER_BIAS, &[v], Kind::Bias { fan_in: h });
        l
    }

    /// The parameter count as `sum(p.numel() for p in model.parameters())` (the tied tensor
    /// once): V H + 4 H^2 + nodes 2 H^2 + V.
    pub fn parameter_count(&self, nodes: usize) -> usize {
        let (v, h) = (self.ntoken, self.nhid);
        v * h + 4 * h * h + nodes * 2 * h * h + v
    }
}

/// A recurrent model's tensors (weights and BN buffers by state_dict name, decoder.weight
/// included and equal to encoder.weight) and alpha [36, 5] (absent, empty, for a derived
/// model).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RnnState {
    pub tensors: BTreeMap<String, ArrayD<f64>>,
    pub alpha: ArrayD<f64>,
}

impl RnnState {
    /// The reference's initialisation (model.py init_weights, model_search.py): every matrix
    /// U(-0.04, 0.04) (the tied embedding's final draw), decoder.bias 0, BN running mean 0
    /// and variance 1, alpha 1e-3 N(0, 1). The draws are ours, not torch's stream.
    pub fn init<R: Rng>(layout: &Layout, with_alpha: bool, rng: &mut R) -> RnnState {
        let mut st = RnnState::default();
        for (name, shape, kind) in &layout.entries {
            let a = match kind {
                Kind::Weight { .. } => ArrayD::from_shape_simple_fn(IxDyn(shape), || {
                    rng.random_range(-INIT_RANGE..INIT_RANGE)
                }),
                Kind::RunningVar => ArrayD::ones(IxDyn(shape)),
                // decoder.weight is filled from the encoder below.
                _ => ArrayD::zeros(IxDyn(shape)),
            };
            st.tensors.insert(name.clone(), a);
        }
        let e = st.tensors[names::ENCODER].clone();
        st.tensors.insert(names::DECODER_WEIGHT.to_string(), e);
        if with_alpha {
            st.alpha =
                ArrayD::from_shape_simple_fn(IxDyn(&[ROWS, super::PRIMITIVES.len()]), || {
                    1e-3 * rng.sample::<f64, _>(StandardNormal)
                });
        }
        st
    }

    /// The configuration a search-model state file describes, from encoder.weight [V, H].
    pub fn config_of(
        all: &BTreeMap<String, ArrayD<f64>>,
        file: &str,
    ) -> Result<RnnConfig, StateError> {
        let key = format!("sd/{}", names::ENCODER);
        let e = all.get(&key).ok_or_else(|| StateError::Missing {
            file: file.to_string(),
            key: key.clone(),
            expected: vec![],
        })?;
        match e.shape() {
            [v, h] if *v > 0 && *h > 0 => Ok(RnnConfig {
                ntoken: *v,
                nhid: *h,
            }),
            s => Err(StateError::Read {
                file: file.to_string(),
                key,
                reason: format!("expected a [V, H] embedding with V, H > 0, got shape {s:?}"),
            }),
        }
    }

    /// Read a search model's state npz: `sd/<name>` for every entry of the layout its
    /// embedding implies (num_batches_tracked may be absent), `alpha/recurrent` [36, 5], no
    /// other key; decoder.weight must equal encoder.weight (they are one tensor).
    pub fn read_search(path: &Path) -> Result<(RnnConfig, RnnState), StateError> {
        let all = read_npz(path)?;
        Self::search_from_arrays(all, &path.display().to_string())
    }

    /// [`RnnState::read_search`] of arrays already read (`file` names it in errors).
    pub fn search_from_arrays(
        mut all: BTreeMap<String, ArrayD<f64>>,
        file: &str,
    ) -> Result<(RnnConfig, RnnState), StateError> {
        let cfg = Self::config_of(&all, file)?;
        let tensors = take_tensors(&mut all, file, &cfg.search_layout())?;
        let alpha = take_exact(
            &mut all,
            file,
            names::ALPHA,
            &[ROWS, super::PRIMITIVES.len()],
        )?;
        refuse_extra(all, file)?;
        check_tied(&tensors, file)?;
        Ok((cfg, RnnState { tensors, alpha }))
    }

    /// Save as `sd/<name>` plus `alpha/recurrent` when there is one (atomically).
    pub fn to_npz(&self, path: &Path) -> Result<(), StateError> {
        let keys: Vec<String> = self.tensors.keys().map(|k| format!("sd/{k}")).collect();
        let mut items: Vec<(&str, &ArrayD<f64>)> = keys
            .iter()
            .map(String::as_str)
            .zip(self.tensors.values())
            .collect();
        if !self.alpha.is_empty() {
            items.push((names::ALPHA, &self.alpha));
        }
        write_npz(path, items)
    }
}

/// encoder.weight and decoder.weight are one tensor in the reference: a file where they
/// differ is refused, naming both keys.
fn check_tied(tensors: &BTreeMap<String, ArrayD<f64>>, file: &str) -> Result<(), StateError> {
    let (e, d) = (&tensors[names::ENCODER], &tensors[names::DECODER_WEIGHT]);
    if let Some((i, (a, b))) = e
        .iter()
        .zip(d.iter())
        .enumerate()
        .find(|(_, (a, b))| a != b)
    {
        return Err(StateError::Read {
            file: file.to_string(),
            key: format!("sd/{}", names::DECODER_WEIGHT),
            reason: format!(
                "differs from 'sd/{}' at flat index {i} ({b} vs {a}); the two are one tied \
                 tensor in the reference, so they must be equal",
                names::ENCODER
            ),
        });
    }
    Ok(())
}
