//! Seeded initialisation of a search network's state, following PyTorch's current defaults
//! (REFERENCE_NOTES.md section 2): conv and linear weights U(+-1/sqrt(fan_in)) with
//! fan_in = (C_in/groups) k k (kaiming_uniform with a = sqrt 5), linear bias U(+-1/sqrt(in)),
//! BN weight 1 and bias 0, running mean 0 and variance 1, alphas 1e-3 N(0, 1).

use super::params::{Kind, Layout, State};
use ndarray::{ArrayD, IxDyn};
use rand::Rng;
use rand_distr::StandardNormal;

pub fn init_state<R: Rng>(layout: &Layout, k: usize, rng: &mut R) -> State {
    let mut st = State::default();
    for (name, shape, kind) in &layout.entries {
        let a = match kind {
            Kind::Weight { fan_in } | Kind::Bias { fan_in } => {
                let b = 1.0 / (*fan_in as f64).sqrt();
                ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(-b..b))
            }
            Kind::BnWeight | Kind::RunningVar => ArrayD::ones(IxDyn(shape)),
            // No conv layout has a tied entry; the recurrent model initialises its own.
            Kind::BnBias | Kind::RunningMean | Kind::NumBatchesTracked | Kind::Tied => {
                ArrayD::zeros(IxDyn(shape))
            }
        };
        st.tensors.insert(name.clone(), a);
    }
    let mut alpha = || {
        ArrayD::from_shape_simple_fn(IxDyn(&[k, 8]), || {
            1e-3 * rng.sample::<f64, _>(StandardNormal)
        })
    };
    st.alpha_normal = alpha();
    st.alpha_reduce = alpha();
    st
}
