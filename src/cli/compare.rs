//! `darts compare A.npz B.npz`: two dumps of `darts gradients` or `darts step` (ours, or
//! another implementation's written with the same keys) compared key by key in dependency
//! order, with tolerances derived from our graph at the inputs the dumps were computed from,
//! naming the first quantity that disagrees and by how much.
//!
//! Tolerance (proofs/audit.md, claim 1): each side evaluated the same mathematics in
//! floating point with unit roundoff u (`--dtype`), so each is within
//! evaluation_bound(K, depth, M, u) of the exact value per entry (K the longest accumulation
//! upstream, depth the longest path, M the largest |value| upstream, all read from our graph
//! evaluated in f64 at the recorded inputs: [`darts::check::bounds`]); the bound on |A - B| is
//! the sum of both sides'. Round-off that a finite difference divides by its step is
//! amplified beyond what depth models: the quotient (g+ - g-) / 2R carries each side's bound
//! times 1 + 1/R (g+ and g- each carry it; the quotient divides their sum by 2R), and an output
//! it reaches through `partial - xi hvp` times 1 + xi/R (through a step's Adam, 1 + max(1,
//! xi)/R).

use super::inputs::{batches_from_arrays, state_from_arrays};
use super::provenance::{self, Recorded};
use anyhow::{bail, Context, Result};
use darts::check::bounds::{downstream_of, GraphBounds};
use darts::check::compare::{compare, iteration};
use darts::darts::names;
use darts::darts::params::read_npz;
use darts::darts::rnn::batch_file::rnn_batch_from_arrays;
use darts::darts::rnn::state::RnnState;
use darts::exec::{open_as, Backend, Dtype, Executor};
use darts::graph::NodeId;
use darts::search::architect::Order;
use darts::search::gradients::GradientsGraph;
use darts::search::recurrent::{rnn_feeds, RnnGradientsGraph};
use darts::search::step_graph::{upload_state, StepGraph, StepHyper};
use darts::search::stepper::step_feeds;
use darts::step::optim::{AdamHyper, SgdHyper};
use ndarray::ArrayD;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The first dump (ours, when only one of the two records its inputs).
    pub a: PathBuf,
    /// The second dump.
    pub b: PathBuf,
    /// The precision both dumps were computed in (the less precise of the two): the unit
    /// roundoff u of the bounds.
    #[arg(long, value_enum, default_value_t = Dtype::F64)]
    pub dtype: Dtype,
}

/// Per-entry bounds of every key the graph at the recorded inputs computes, and notices.
struct Derived {
    bounds: BTreeMap<String, f64>,
    notes: Vec<String>,
}

/// The outputs whose bounds are wanted (dump key -> node), and the finite differences whose
/// division by 2R amplifies round-off: their quotient nodes (amplified by 1/R), the R node,
/// and the factor by which the quotient reaches every other output downstream of it (xi in
/// `partial - xi hvp`; where the path is not that formula, at least 1).
struct Plan {
    keys: Vec<(String, NodeId)>,
    sources: Vec<(Vec<NodeId>, NodeId, f64)>,
}

/// The nodes of `keys` whose key starts with `prefix`.
fn nodes_of(keys: &[(String, NodeId)], prefix: &str) -> Vec<NodeId> {
    keys.iter()
        .filter(|k| k.0.starts_with(prefix))
        .map(|k| k.1)
        .collect()
}

fn bounds_of(
    g: &darts::graph::Graph,
    exec: &mut dyn Executor<f64>,
    feeds: &darts::exec::Feeds<f64>,
    plan: &Plan,
    u: f64,
) -> Result<BTreeMap<String, f64>> {
    let mut outs: Vec<NodeId> = plan.keys.iter().map(|k| k.1).collect();
    outs.extend(plan.sources.iter().map(|s| s.1));
    let b = GraphBounds::of_on(exec, g, feeds, &outs).context("evaluating our graph")?;
    let n = plan.keys.len();
    let amps: Vec<(Vec<bool>, &Vec<NodeId>, f64, f64)> = plan
        .sources
        .iter()
        .enumerate()
        .map(|(j, (quotients, _, xi))| {
            let r = b.values[n + j].sum();
            let mut down = vec![false; g.len()];
            for q in quotients {
                for (d, x) in down.iter_mut().zip(downstream_of(g, *q)) {
                    *d |= x;
                }
            }
            (down, quotients, 1.0 / r, xi / r)
        })
        .collect();
    let mut out = BTreeMap::new();
    for (i, (key, node)) in plan.keys.iter().enumerate() {
        let amp: f64 = 1.0
            + amps
                .iter()
                .filter(|(down, ..)| down[node.0])
                .map(|(_, q, own, downstream)| if q.contains(node) { *own } else { *downstream })
                .sum::<f64>();
        out.insert(key.clone(), b.bound(i, &[u, u]) * amp);
    }
    Ok(out)
}

/// The recorded state and batches of a convolutional dump.
fn cnn_inputs(
    rec: &mut Recorded,
    file: &str,
) -> Result<(
    super::inputs::SearchInput,
    darts::data::Batch,
    darts::data::Batch,
)> {
    let input = state_from_arrays(
        &format!("{file} ({})", provenance::STATE),
        std::mem::take(&mut rec.state),
        None,
        None,
    )?;
    let batch_file = format!("{file} ({})", provenance::BATCH);
    let (train, valid) =
        batches_from_arrays(&batch_file, std::mem::take(&mut rec.batch), &input.cfg)?;
    Ok((input, train, valid))
}

fn derive_gradients_cnn(mut rec: Recorded, file: &str, u: f64) -> Result<Derived> {
    let (input, train, valid) = cnn_inputs(&mut rec, file)?;
    let eta = rec.setting(file, "eta")?;
    let gg = GradientsGraph::build(
        &input.cfg,
        train.x.shape(),
        valid.x.shape(),
        rec.setting(file, "momentum")?,
        rec.setting(file, "weight_decay")?,
    )?;
    let mut exec = open_as::<f64>(Backend::Cpu)?;
    upload_state(
        exec.as_mut(),
        &input.cfg.layout()?,
        &input.state,
        &input.opt,
    )?;
    let feeds = GradientsGraph::feeds::<f64>(&train, &valid, eta);
    let plan = Plan {
        sources: vec![
            (nodes_of(&gg.outputs, "hvp_fd/"), gg.r_paper, eta),
            (
                nodes_of(&gg.outputs, "hvp_fd_at_unrolled/"),
                gg.r_audit,
                eta,
            ),
        ],
        keys: gg.outputs.clone(),
    };
    Ok(Derived {
        bounds: bounds_of(&gg.graph, exec.as_mut(), &feeds, &plan, u)?,
        notes: vec![],
    })
}

fn derive_gradients_rnn(mut rec: Recorded, file: &str, u: f64) -> Result<Derived> {
    let state_file = format!("{file} ({})", provenance::STATE);
    let (cfg, state) = RnnState::search_from_arrays(std::mem::take(&mut rec.state), &state_file)?;
    let batch_file = format!("{file} ({})", provenance::BATCH);
    let batches = rnn_batch_from_arrays(std::mem::take(&mut rec.batch), &batch_file, &cfg)?;
    let eta = rec.setting(file, "eta")?;
    let gg = RnnGradientsGraph::build(
        cfg,
        false,
        batches.train.tb(),
        batches.valid.tb(),
        (
            rec.setting(file, "clip")?,
            rec.setting(file, "weight_decay")?,
        ),
    )?;
    let feeds = rnn_feeds::<f64>(&cfg, &state, &batches, eta);
    let mut exec = open_as::<f64>(Backend::Cpu)?;
    // The finite difference is multiplied by eta c, c the uncapped clip coefficient.
    let c_node = gg
        .outputs
        .iter()
        .find(|k| k.0 == "clip_coef_train")
        .map(|k| k.1);
    let c = match c_node {
        Some(n) => exec.run(&gg.graph, &feeds, &[n])?[0].sum(),
        None => 1.0,
    };
    let plan = Plan {
        sources: vec![(nodes_of(&gg.outputs, "hvp_fd/"), gg.r, eta * c.max(1.0))],
        keys: gg.outputs.clone(),
    };
    Ok(Derived {
        bounds: bounds_of(&gg.graph, exec.as_mut(), &feeds, &plan, u)?,
        notes: vec![],
    })
}

fn derive_step(mut rec: Recorded, file: &str, u: f64) -> Result<Derived> {
    let (input, train, valid) = cnn_inputs(&mut rec, file)?;
    let order = match rec.setting(file, "order")? as i64 {
        0 => Order::First,
        1 => Order::Second,
        2 => Order::Exact,
        o => bail!(
            "{file}: '{}order' is {o}; 0, 1 or 2 expected",
            provenance::SETTINGS
        ),
    };
    let hyper = StepHyper {
        sgd: SgdHyper {
            momentum: rec.setting(file, "momentum")?,
            weight_decay: rec.setting(file, "weight_decay")?,
            grad_clip: rec.setting(file, "grad_clip")?,
        },
        adam: AdamHyper::architect(
            rec.setting(file, "arch_learning_rate")?,
            rec.setting(file, "arch_weight_decay")?,
        ),
    };
    let eta = rec.setting(file, "eta")?;
    let steps = rec.setting(file, "steps")? as usize;
    let sg = StepGraph::build(&input.cfg, train.x.shape(), valid.x.shape(), order, &hyper)?;
    let mut exec = open_as::<f64>(Backend::Cpu)?;
    let layout = input.cfg.layout()?;
    upload_state(exec.as_mut(), &layout, &input.state, &input.opt)?;
    let feeds = step_feeds::<f64>(&train, &valid, eta, &hyper, input.opt.adam_t);
    let mut keys = vec![
        ("iter0/loss_train".to_string(), sg.loss_train),
        ("iter0/grad_norm".to_string(), sg.grad_norm),
    ];
    for (c, node) in sg.alpha_new.iter().enumerate() {
        keys.push((format!("iter0/{}", names::ALPHA[c]), *node));
    }
    for (node, var) in &sg.assign {
        if layout.entries.iter().any(|(n, _, _)| n == var) {
            keys.push((format!("iter0/sd/{var}"), *node));
        } else if steps == 1 {
            if let Some(w) = var.strip_prefix("sgd_buf/") {
                keys.push((format!("momentum_buffer/{w}"), *node));
            } else if var.starts_with("adam_") {
                keys.push((var.clone(), *node));
            }
        }
    }
    // R = 0.01 / ||v|| divides the second order's round-off; xi is the learning rate.
    if let (Some(norm_v), Some(hvp)) = (sg.norm_v, sg.fd_hvp) {
        for ((name, _, _), node) in layout.weights().zip(&sg.w_after) {
            keys.push((format!("iter0/w_restored/{name}"), *node));
        }
        let mut g = sg.graph.clone();
        let scale = g.scalar(darts::search::architect::FD_SCALE)?;
        let r = g.div(scale, norm_v)?;
        // Adam's sensitivity to its gradient is not bounded by xi: at least 1.
        let sources = vec![(hvp.to_vec(), r, eta.max(1.0))];
        let plan = Plan { keys, sources };
        let bounds = bounds_of(&g, exec.as_mut(), &feeds, &plan, u)?;
        return Ok(step_notes(bounds, &layout, steps));
    }
    let plan = Plan {
        keys,
        sources: vec![],
    };
    let bounds = bounds_of(&sg.graph, exec.as_mut(), &feeds, &plan, u)?;
    Ok(step_notes(bounds, &layout, steps))
}

/// Counts are exact on both sides (bound 0); iterations after the first are listed unjudged.
fn step_notes(
    mut bounds: BTreeMap<String, f64>,
    layout: &darts::darts::params::Layout,
    steps: usize,
) -> Derived {
    for (n, _, kind) in &layout.entries {
        if matches!(kind, darts::darts::params::Kind::NumBatchesTracked) {
            bounds.insert(format!("iter0/sd/{n}"), 0.0);
        }
    }
    if steps == 1 {
        for cell in names::CELLS {
            bounds.insert(format!("adam_step/{cell}"), 0.0);
        }
    }
    let mut notes = vec![];
    if steps > 1 {
        notes.push(format!(
            "the dumps hold {steps} iterations: tolerances are derived for the first \
             (iter0/*); later iterations and the final optimiser state are listed, not judged \
             (dump with --steps 1 to judge the optimiser state)"
        ));
    }
    Derived { bounds, notes }
}

/// Reads a dump strictly: every array finite is checked by the comparison; here the file.
fn read_dump(path: &std::path::Path) -> Result<BTreeMap<String, ArrayD<f64>>> {
    read_npz(path).with_context(|| format!("reading the dump {}", path.display()))
}

pub fn run(a: Args) -> Result<()> {
    let (fa, fb) = (a.a.display().to_string(), a.b.display().to_string());
    let mut da = read_dump(&a.a)?;
    let mut db = read_dump(&a.b)?;
    let (ra, rb) = (provenance::take(&mut da), provenance::take(&mut db));
    if let (Some(x), Some(y)) = (&ra, &rb) {
        for (what, p, q) in [("state", &x.state, &y.state), ("batch", &x.batch, &y.batch)] {
            if p != q {
                bail!(
                    "{fa} and {fb} were computed from different inputs (their recorded {what} \
                     files differ): there is nothing to compare"
                );
            }
        }
        if x.settings != y.settings {
            bail!(
                "{fa} and {fb} were computed with different settings ({:?} vs {:?})",
                x.settings,
                y.settings
            );
        }
    }
    // Every array finite, shapes agreeing, some key shared: checked before any graph is built.
    compare((&da, &db), (&fa, &fb), &BTreeMap::new())?;
    let (rec, file) = match (ra, rb) {
        (Some(r), _) => (r, fa.clone()),
        (None, Some(r)) => (r, fb.clone()),
        (None, None) => bail!(
            "neither {fa} nor {fb} records the inputs it was computed from ('input/state/*', \
             'input/batch/*', 'input/settings/*', as `darts gradients` and `darts step` \
             write them): the tolerances are derived from our graph at those inputs, so give \
             one of our dumps"
        ),
    };
    let u = match a.dtype {
        Dtype::F64 => f64::EPSILON / 2.0,
        Dtype::F32 => f32::EPSILON as f64 / 2.0,
    };
    let is_step = da.keys().chain(db.keys()).any(|k| iteration(k).is_some());
    let is_rnn = rec.state.contains_key(darts::darts::rnn::names::ALPHA);
    let derived = match (is_step, is_rnn) {
        (true, true) => bail!(
            "{file}: a recurrent `darts step` dump; `darts step` and `compare` of step dumps \
             cover the convolutional space"
        ),
        (true, false) => derive_step(rec, &file, u)?,
        (false, true) => derive_gradients_rnn(rec, &file, u)?,
        (false, false) => derive_gradients_cnn(rec, &file, u)?,
    };
    let c = compare((&da, &db), (&fa, &fb), &derived.bounds)?;
    println!(
        "A = {fa}\nB = {fb}\n{} dump, {}, u = {u:.3e} per side\n",
        if is_step { "step" } else { "gradients" },
        if is_rnn { "recurrent" } else { "convolutional" }
    );
    print!("{}", c.render());
    for n in &derived.notes {
        println!("note: {n}");
    }
    if let Some(r) = c.first_disagreement() {
        bail!(
            "the dumps disagree first at '{}' ({:.3e} times its bound)",
            r.key,
            r.max_diff / r.bound.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
