//! The recurrent network on the GPU against the CPU: every output of the recurrent gradients
//! graph (losses, weight gradients, the architecture gradients, the exact H v, the hidden
//! states) computed by the f64 GPU kernels within the derived f64 bound of the CPU's
//! (src/check/bounds.rs; both sides f64, so each within evaluation_bound(K, depth, M, 2^-53)),
//! with the finite difference's explicit amplifications as in tests/rnn_reference.rs, and a
//! negative control (alpha's relu column moved by 1e-3 on the GPU side is rejected). The f32 GPU run is
//! reported against the f64 CPU (its worst-case bound is vacuous at this depth; the relative
//! errors are printed, and must be finite).

mod common;

use darts::check::bounds::GraphBounds;
use darts::darts::rnn::batch_file::read_rnn_batch_npz;
use darts::darts::rnn::names;
use darts::darts::rnn::state::RnnState;
use darts::exec::{Executor, Feeds};
use darts::graph::NodeId;
use darts::search::recurrent::{rnn_feeds, RnnGradientsGraph};
use std::path::Path;

const U64: f64 = f64::EPSILON / 2.0;
const ETA: f64 = 20.0;

fn setup() -> (RnnGradientsGraph, Feeds<f64>, Vec<NodeId>) {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rnn/clip_active");
    let (cfg, st) = RnnState::read_search(&d.join("state.npz")).unwrap();
    let b = read_rnn_batch_npz(&d.join("batch.npz"), &cfg).unwrap();
    let gg =
        RnnGradientsGraph::build(cfg, false, b.train.tb(), b.valid.tb(), (0.25, 5e-7)).unwrap();
    let f = rnn_feeds::<f64>(&cfg, &st, &b, ETA);
    let mut outs: Vec<NodeId> = gg.outputs.iter().map(|o| o.1).collect();
    outs.push(gg.r);
    (gg, f, outs)
}

fn max_diff(a: &ndarray::ArrayD<f64>, b: &ndarray::ArrayD<f64>) -> f64 {
    a.iter()
        .zip(b.iter())
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn gpu_f64_recurrent_gradients_match_cpu() {
    let Some(mut gpu) = common::gpu_f64_executor("gpu_f64_recurrent_gradients_match_cpu") else {
        return;
    };
    let (gg, f, outs) = setup();
    let b = GraphBounds::of(&gg.graph, &f, &outs).unwrap();
    let r = b.values[outs.len() - 1].sum();
    let pos = |k: &str| gg.outputs.iter().position(|o| o.0 == k).unwrap();
    let eta_c = ETA * b.values[pos("clip_coef_train")].sum();
    let tol: Vec<f64> = gg
        .outputs
        .iter()
        .enumerate()
        .map(|(i, (key, _))| {
            let amp = match key.as_str() {
                "hvp_fd/recurrent" => 1.0 / (2.0 * r),
                "grad_alpha_second/recurrent" => 1.0 + eta_c / (2.0 * r),
                _ => 1.0,
            };
            b.bound(i, &[U64, U64]) * amp
        })
        .collect();
    let got = gpu.run(&gg.graph, &f, &outs).unwrap();
    let mut worst = (0.0f64, "");
    for (i, (key, _)) in gg.outputs.iter().enumerate() {
        let signal = b.values[i].iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(
            tol[i] <= 1e-2 * signal,
            "{key}: bound {:e} vacuous vs {signal:e}",
            tol[i]
        );
        let err = max_diff(&got[i], &b.values[i]);
        assert!(err <= tol[i], "{key}: |gpu - cpu| {err:e} > {:e}", tol[i]);
        if err / tol[i] > worst.0 {
            worst = (err / tol[i], key.as_str());
        }
    }
    println!(
        "gpu f64 vs cpu f64: worst error/bound {:.2e} ({})",
        worst.0, worst.1
    );
    // Negative control: the relu column of alpha moved by 1e-3 (one Adam step at the
    // reference's lr 3e-3 is about that) on the GPU side only is rejected. (Moving every
    // column by the same amount would change nothing: softmax is shift-invariant per row.)
    let mut f2 = f.clone();
    let mut alpha = f.get(names::ALPHA).unwrap().clone();
    alpha
        .index_axis_mut(ndarray::Axis(1), 2)
        .mapv_inplace(|a| a + 1e-3);
    f2.insert(names::ALPHA, alpha);
    let moved = gpu.run(&gg.graph, &f2, &outs).unwrap();
    let i = pos("grad_alpha_unrolled_exact/recurrent");
    assert!(max_diff(&moved[i], &b.values[i]) > tol[i]);
}

#[test]
fn gpu_f32_recurrent_gradients_are_close_to_cpu_f64() {
    let Some(mut gpu) = common::gpu_executor("gpu_f32_recurrent_gradients_are_close_to_cpu_f64")
    else {
        return;
    };
    let (gg, f, outs) = setup();
    let cpu = {
        let mut ex = darts::exec::open_as::<f64>(darts::exec::Backend::Cpu).unwrap();
        ex.run(&gg.graph, &f, &outs).unwrap()
    };
    let got = gpu.run(&gg.graph, &f.cast::<f32>(), &outs).unwrap();
    for key in [
        "loss_train",
        "grad_w_train/rnns.0._W0",
        "grad_alpha_first/recurrent",
        "hvp_exact/recurrent",
        "grad_alpha_unrolled_exact/recurrent",
        "grad_alpha_second/recurrent",
    ] {
        let i = gg.outputs.iter().position(|o| o.0 == key).unwrap();
        let g64 = got[i].mapv(|x| x as f64);
        let rel = common::rel(&g64, &cpu[i]);
        println!("gpu f32 vs cpu f64: {key}: relative error {rel:.2e}");
        assert!(rel.is_finite());
    }
}

/// A whole recurrent search step (first and exact orders, the reference's search dropouts
/// with masks fed) on the f64 GPU against the CPU: every variable the step assigns (the new
/// weights, BN running statistics, Adam's moments, which carry the architecture gradient)
/// and the losses, gradient norm and hidden states, each within its derived bound. Adam's
/// learning rate is 0 here, so alpha' = alpha exactly and the weight step's forward does not
/// pass through Adam's near-sign first step (whose amplification the bound would not cover;
/// tests/gpu_step.rs handles it for the conv step). Negative control: one weight moved by
/// 1e-6 on the GPU side is rejected.
#[test]
fn gpu_f64_recurrent_search_step_matches_cpu() {
    use darts::darts::names as cnn;
    use darts::search::architect::Order;
    use darts::search::recurrent_step::{RnnStepGraph, RnnStepHyper, CELL};
    use rand::{Rng, SeedableRng};
    let Some(mut gpu) = common::gpu_f64_executor("gpu_f64_recurrent_search_step_matches_cpu")
    else {
        return;
    };
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rnn/clip_active");
    let (cfg, st) = RnnState::read_search(&d.join("state.npz")).unwrap();
    let b = read_rnn_batch_npz(&d.join("batch.npz"), &cfg).unwrap();
    let mut h = RnnStepHyper::reference();
    h.adam.lr = 0.0;
    for order in [Order::First, Order::Exact] {
        let sg = RnnStepGraph::build(cfg, b.train.tb(), b.valid.tb(), order, &h).unwrap();
        let mut f = rnn_feeds::<f64>(&cfg, &st, &b, ETA);
        for (name, _, kind) in &cfg.search_layout().entries {
            if matches!(
                kind,
                darts::darts::params::Kind::RunningMean | darts::darts::params::Kind::RunningVar
            ) {
                f.insert(name.clone(), st.tensors[name].clone());
            }
        }
        let zeros = st.alpha.mapv(|_| 0.0);
        f.insert(cnn::adam_m(CELL), zeros.clone());
        f.insert(cnn::adam_v(CELL), zeros);
        let (s, c2) = h.adam.step_scalars(1);
        f.insert(cnn::adam_step_size(CELL), ndarray::arr0(s).into_dyn());
        f.insert(cnn::adam_bc2_sqrt(CELL), ndarray::arr0(c2).into_dyn());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let p = h.dropouts.ordered();
        for fw in &sg.forwards {
            for (k, &pk) in p.iter().enumerate() {
                if pk > 0.0 {
                    let shape = if k == 0 {
                        vec![cfg.ntoken, 1]
                    } else {
                        vec![fw.batch, cfg.nhid]
                    };
                    let keep = 1.0 - pk;
                    let m = ndarray::ArrayD::from_shape_simple_fn(ndarray::IxDyn(&shape), || {
                        (rng.random::<f64>() + keep).floor() / keep
                    });
                    f.insert(names::of(&fw.prefix, names::MASKS[k]), m);
                }
            }
        }
        let mut outs: Vec<(String, NodeId)> =
            sg.assign.iter().map(|(n, v)| (v.clone(), *n)).collect();
        outs.extend([
            ("loss_train".to_string(), sg.loss_train),
            ("loss_valid".to_string(), sg.loss_valid),
            ("grad_norm".to_string(), sg.grad_norm),
            ("hidden_train_next".to_string(), sg.hidden_train_next),
            ("hidden_valid_next".to_string(), sg.hidden_valid_next),
        ]);
        let nodes: Vec<NodeId> = outs.iter().map(|o| o.1).collect();
        let bounds = GraphBounds::of(&sg.graph, &f, &nodes).unwrap();
        let got = gpu.run(&sg.graph, &f, &nodes).unwrap();
        let alpha_out = outs.iter().position(|o| o.0 == names::ALPHA).unwrap();
        assert_eq!(got[alpha_out], st.alpha, "Adam lr 0 leaves alpha exactly");
        let mut worst = (0.0f64, String::new());
        let mut loosest = (0.0f64, String::new());
        for (i, (name, _)) in outs.iter().enumerate() {
            let tol = bounds.bound(i, &[U64, U64]);
            let signal = bounds.values[i].iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!(
                tol <= 1e-2 * signal,
                "{order:?} {name}: bound {tol:e} vacuous vs {signal:e}"
            );
            let err = max_diff(&got[i], &bounds.values[i]);
            assert!(
                err <= tol,
                "{order:?} {name}: |gpu - cpu| {err:e} > {tol:e}"
            );
            if err / tol > worst.0 {
                worst = (err / tol, name.clone());
            }
            if tol / signal > loosest.0 {
                loosest = (tol / signal, name.clone());
            }
        }
        println!(
            "{order:?} step, gpu f64 vs cpu f64: {} outputs, worst error/bound {:.2e} ({}), loosest bound/signal {:.2e} ({})",
            outs.len(), worst.0, worst.1, loosest.0, loosest.1
        );
        // Negative control: W0 moved by 1e-6 on the GPU side only.
        let mut f2 = f.clone();
        let w0 = f.get(names::W0).unwrap().mapv(|x| x + 1e-6);
        f2.insert(names::W0, w0);
        let moved = gpu.run(&sg.graph, &f2, &nodes).unwrap();
        let rejected = (0..outs.len())
            .any(|i| max_diff(&moved[i], &bounds.values[i]) > bounds.bound(i, &[U64, U64]));
        assert!(rejected, "{order:?}: a moved W0 passed");
    }
}
