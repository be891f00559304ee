//! Gradient-check cases for every primitive and the composed operations, with inputs drawn
//! away from kinks and ties (each kink and tie has its own convention test in
//! tests/conventions.rs). Used by `darts gradcheck` (fixed shapes, [`standard_suite`]) and by
//! the property tests in tests/gradcheck.rs (random shapes through the same builders).

use super::gradcheck::Case;
use crate::darts::names;
use crate::exec::Feeds;
use crate::graph::{compose, BinaryOp, ConvParams, Graph, NodeId, Op, PoolParams, Shape, UnaryOp};
use ndarray::{ArrayD, IxDyn};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::graph::Result as R;

/// Distance kept from kinks (relu at 0, max ties, max-pool ties): far larger than the FD step
/// times any direction component we draw, so no finite difference crosses a kink.
pub const KINK_MARGIN: f64 = 0.1;

/// Inputs listed by name and shape in a case's description before it is abbreviated.
const MAX_LISTED_INPUTS: usize = 8;

/// Accumulates a case's graph, its fed values and the inputs to differentiate.
pub struct CaseBuilder {
    pub g: Graph,
    feeds: Feeds<f64>,
    wrt: Vec<NodeId>,
    shapes: Vec<String>,
    pub rng: ChaCha8Rng,
}

impl CaseBuilder {
    pub fn new(seed: u64) -> Self {
        CaseBuilder {
            g: Graph::new(),
            feeds: Feeds::new(),
            wrt: Vec::new(),
            shapes: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// An input fed with `values`; differentiated when `diff`.
    pub fn input(&mut self, name: &str, values: ArrayD<f64>, diff: bool) -> R<NodeId> {
        let id = self.g.input(name, values.shape())?;
        self.shapes
            .push(format!("{name}{}", Shape::from(values.shape())));
        self.feeds.insert(name, values);
        if diff {
            self.wrt.push(id);
        }
        Ok(id)
    }

    pub fn normal(&mut self, shape: &[usize]) -> ArrayD<f64> {
        let rng = &mut self.rng;
        ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.sample::<f64, _>(StandardNormal))
    }

    /// Uniform in [lo, hi].
    pub fn uniform(&mut self, shape: &[usize], lo: f64, hi: f64) -> ArrayD<f64> {
        let rng = &mut self.rng;
        ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(lo..=hi))
    }

    /// Random sign times (margin + |N(0,1)|): at least `margin` from zero.
    pub fn away_from_zero(&mut self, shape: &[usize], margin: f64) -> ArrayD<f64> {
        let rng = &mut self.rng;
        ArrayD::from_shape_simple_fn(IxDyn(shape), || {
            let m = margin + rng.sample::<f64, _>(StandardNormal).abs();
            if rng.random_bool(0.5) {
                m
            } else {
                -m
            }
        })
    }

    /// Multiples of 2*margin (plus `offset`): two draws with offsets 0 and `margin` differ by
    /// at least `margin` everywhere.
    pub fn grid(&mut self, shape: &[usize], offset: f64) -> ArrayD<f64> {
        let rng = &mut self.rng;
        ArrayD::from_shape_simple_fn(IxDyn(shape), || {
            let k: f64 = rng.sample::<f64, _>(StandardNormal) * 5.0;
            2.0 * KINK_MARGIN * k.round() + offset
        })
    }

    /// All-distinct values, pairwise at least `KINK_MARGIN` apart (a shuffled ramp).
    pub fn distinct(&mut self, shape: &[usize]) -> ArrayD<f64> {
        let n: usize = shape.iter().product();
        let mut v: Vec<f64> = (0..n)
            .map(|i| (i as f64 - n as f64 / 2.0) * KINK_MARGIN)
            .collect();
        v.shuffle(&mut self.rng);
        ArrayD::from_shape_vec(IxDyn(shape), v).expect("length matches")
    }

    /// Finish: `k_terms` is bounded by the largest tensor in the graph (no accumulation can
    /// have more terms than the tensor it reads).
    pub fn finish(
        self,
        op: &str,
        params: &str,
        output: NodeId,
        linear: bool,
        smooth: bool,
    ) -> Case {
        let k_terms = self
            .g
            .nodes()
            .iter()
            .map(|n| n.shape.numel())
            .max()
            .unwrap_or(1);
        // A whole network has thousands of inputs: name the first few and count the rest.
        let mut shapes = if self.shapes.len() > MAX_LISTED_INPUTS {
            format!(
                "{} ... ({} inputs)",
                self.shapes[..3].join(" "),
                self.shapes.len()
            )
        } else {
            self.shapes.join(" ")
        };
        if !params.is_empty() {
            shapes = format!("{shapes} {params}");
        }
        Case {
            op: op.to_string(),
            shapes,
            graph: self.g,
            wrt: self.wrt,
            output,
            feeds: self.feeds,
            linear,
            smooth,
            k_terms,
            gradient: None,
        }
    }
}

/// f(x) for one unary primitive, on the domain where it is smooth.
pub fn unary(op: UnaryOp, shape: &[usize], seed: u64) -> R<Case> {
    let mut b = CaseBuilder::new(seed);
    let v = match op {
        UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt => b.uniform(shape, 0.5, 2.0),
        UnaryOp::Recip | UnaryOp::Relu | UnaryOp::Step => b.away_from_zero(shape, KINK_MARGIN),
        _ => b.normal(shape),
    };
    let x = b.input(names::X, v, true)?;
    let y = b.g.unary(op, x)?;
    Ok(b.finish(&Op::Unary(op).name(), "", y, op == UnaryOp::Neg, true))
}

/// f(a, b) with broadcasting between the two shapes.
pub fn binary(op: BinaryOp, sa: &[usize], sb: &[usize], seed: u64) -> R<Case> {
    let mut b = CaseBuilder::new(seed);
    let (va, vb) = match op {
        BinaryOp::Max | BinaryOp::Greater | BinaryOp::Equal => {
            (b.grid(sa, 0.0), b.grid(sb, KINK_MARGIN))
        }
        BinaryOp::Div => (b.normal(sa), b.away_from_zero(sb, 0.5)),
        _ => (b.normal(sa), b.normal(sb)),
    };
    let x = b.input("a", va, true)?;
    let y = b.input("b", vb, true)?;
    let z = b.g.binary(op, x, y)?;
    let linear = matches!(op, BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul);
    Ok(b.finish(&Op::Binary(op).name(), "", z, linear, true))
}

pub fn select(shape: &[usize], seed: u64) -> R<Case> {
    let mut b = CaseBuilder::new(seed);
    let cv = b
        .uniform(shape, 0.0, 1.0)
        .mapv(|v| if v > 0.5 { 1.0 } else { 0.0 });
    let c = b.input("cond", cv, false)?;
    let (va, vb) = (b.normal(shape), b.normal(shape));
    let x = b.input("a", va, true)?;
    let y = b.input("b", vb, true)?;
    let z = b.g.select(c, x, y)?;
    Ok(b.finish("select", "", z, true, true))
}

pub fn reduce(max: bool, shape: &[usize], axes: &[usize], seed: u64) -> R<Case> {
    let mut b = CaseBuilder::new(seed);
    let v = if max {
        b.distinct(shape)
    } else {
        b.normal(shape)
    };
    let x = b.input(names::X, v, true)?;
    let y = if max {
        b.g.reduce_max(x, axes)?
    } else {
        b.g.reduce_sum(x, axes)?
    };
    let name = b.g.node(y).op.name();
    Ok(b.finish(&name, "", y, !max, true))
}

/// A chain through every movement primitive: broadcast, permute, strided slice, interior
/// pad, concat and reshape.
pub fn movement(n: usize, m: usize, seed: u64) -> R<Case> {
    let mut b = CaseBuilder::new(seed);
    let (va, vb) = (b.normal(&[n, 1, m]), b.normal(&[2, n, m]));
    let x = b.input(names::X, va, true)?;
    let z = b.input("z", vb, true)?;
    let bx = b.g.broadcast_to(x, [n, 2, m])?;
    let p = b.g.permute(bx, &[1, 0, 2])?;
    let c = b.g.concat(&[p, z], 1)?;
    let s = b.g.slice(c, 1, 1, 2 * n, 2)?;
    let pd = b.g.pad(s, 2, 1, 2, 1)?;
    let numel = b.g.shape(pd).numel();
    let y = b.g.reshape(pd, [numel])?;
    Ok(b.finish(
        "broadcast/permute/concat/slice/pad/reshape",
        "",
        y,
        true,
        true,
    ))
}

pub fn matmul(m: usize, k: usize, n: usize, seed: u64) -> R<Case> {
    let mut b = CaseBuilder::new(seed);
    let (va, vb) = (b.normal(&[m, k]), b.normal(&[k, n]));
    let x = b.input("a", va, true)?;
    let y = b.input("b", vb, true)?;
    let z = b.g.matmul(x, y)?;
    Ok(b.finish("matmul", "", z, true, true))
}

/// Convolution geometry for a case: x [n, c, h, w], w [o, c/groups, k, k].
#[derive(Clone, Copy, Debug)]
pub struct ConvCase {
    pub n: usize,
    pub c: usize,
    pub o: usize,
    pub hw: usize,
    pub k: usize,
    pub p: ConvParams,
}

impl ConvCase {
    fn desc(&self) -> String {
        format!(
            "k{} s{} p{} d{} g{}",
            self.k, self.p.stride[0], self.p.padding[0], self.p.dilation[0], self.p.groups
        )
    }
}

pub fn conv2d(cc: ConvCase, seed: u64) -> R<Case> {
    let mut b = CaseBuilder::new(seed);
    let vx = b.normal(&[cc.n, cc.c, cc.hw, cc.hw]);
    let vw = b.normal(&[cc.o, cc.c / cc.p.groups, cc.k, cc.k]);
    let x = b.input(names::X, vx, true)?;
    let w = b.input("w", vw, true)?;
    let y = b.g.conv2d(x, w, cc.p)?;
    Ok(b.finish("conv2d", &cc.desc(), y, true, true))
}

/// The two transposes of conv2d as primitives in their own right (what second derivatives
/// of a conv net run through).
pub fn conv2d_transposes(cc: ConvCase, weight_grad: bool, seed: u64) -> R<Case> {
    let mut b = CaseBuilder::new(seed);
    let mut probe = Graph::new();
    let xs = [cc.n, cc.c, cc.hw, cc.hw];
    let ws = [cc.o, cc.c / cc.p.groups, cc.k, cc.k];
    let px = probe.input(names::X, xs)?;
    let pw = probe.input("w", ws)?;
    let py = probe.conv2d(px, pw, cc.p)?;
    let ys = probe.shape(py).dims().to_vec();
    let vgy = b.normal(&ys);
    if weight_grad {
        let vx = b.normal(&xs);
        let x = b.input(names::X, vx, true)?;
        let gy = b.input("gy", vgy, true)?;
        let z = b.g.add(
            Op::Conv2dWeightGrad {
                p: cc.p,
                kernel: [cc.k, cc.k],
            },
            &[x, gy],
        )?;
        Ok(b.finish("conv2d_weight_grad", &cc.desc(), z, true, true))
    } else {
        let vw = b.normal(&ws);
        let gy = b.input("gy", vgy, true)?;
        let w = b.input("w", vw, true)?;
        let z = b.g.add(
            Op::Conv2dInputGrad {
                p: cc.p,
                in_hw: [cc.hw, cc.hw],
            },
            &[gy, w],
        )?;
        Ok(b.finish("conv2d_input_grad", &cc.desc(), z, true, true))
    }
}

/// Which pooling primitive a pool case exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Avg,
    AvgGrad,
    Max,
    MaxGrad,
    MaxGather,
}

pub fn pool(kind: PoolKind, shape: [usize; 4], p: PoolParams, seed: u64) -> R<Case> {
    let mut b = CaseBuilder::new(seed);
    let mut probe = Graph::new();
    let px = probe.input(names::X, shape)?;
    let py = probe.avg_pool2d(px, p)?;
    let ys = probe.shape(py).dims().to_vec();
    let desc = format!("k{} s{} p{}", p.kernel[0], p.stride[0], p.padding[0]);
    let (out, linear) = match kind {
        PoolKind::Avg => {
            let v = b.normal(&shape);
            let x = b.input(names::X, v, true)?;
            (b.g.avg_pool2d(x, p)?, true)
        }
        PoolKind::AvgGrad => {
            let v = b.normal(&ys);
            let gy = b.input("gy", v, true)?;
            let in_hw = [shape[2], shape[3]];
            (b.g.add(Op::AvgPool2dGrad { p, in_hw }, &[gy])?, true)
        }
        PoolKind::Max => {
            let v = b.distinct(&shape);
            let x = b.input(names::X, v, true)?;
            (b.g.max_pool2d(x, p)?, false)
        }
        PoolKind::MaxGrad => {
            let v = b.distinct(&shape);
            let x = b.input(names::X, v, false)?;
            let vg = b.normal(&ys);
            let gy = b.input("gy", vg, true)?;
            (b.g.add(Op::MaxPool2dGrad(p), &[x, gy])?, true)
        }
        PoolKind::MaxGather => {
            let v = b.distinct(&shape);
            let x = b.input(names::X, v, false)?;
            let vc = b.normal(&shape);
            let c = b.input("c", vc, true)?;
            (b.g.add(Op::MaxPool2dGather(p), &[x, c])?, true)
        }
    };
    let name = b.g.node(out).op.name();
    let name = name.split('(').next().unwrap_or("pool").to_string();
    Ok(b.finish(&name, &desc, out, linear, true))
}

/// gather(table, idx) or scatter_add(idx, src) with repeated indices.
pub fn gather_scatter(scatter: bool, rows: usize, dim: usize, n: usize, seed: u64) -> R<Case> {
    let mut b = CaseBuilder::new(seed);
    let idx: Vec<f64> = (0..n).map(|_| b.rng.random_range(0..rows) as f64).collect();
    let idx = ArrayD::from_shape_vec(IxDyn(&[n]), idx).expect("length matches");
    if scatter {
        let i = b.input("idx", idx, false)?;
        let v = b.normal(&[n, dim]);
        let src = b.input("src", v, true)?;
        let y = b.g.add(Op::ScatterAdd { rows }, &[i, src])?;
        Ok(b.finish("scatter_add", "", y, true, true))
    } else {
        let v = b.normal(&[rows, dim]);
        let t = b.input("table", v, true)?;
        let i = b.input("idx", idx, false)?;
        let y = b.g.gather(t, i)?;
        Ok(b.finish("gather", "", y, true, true))
    }
}

pub fn log_softmax(shape: &[usize], axis: usize, seed: u64) -> R<Case> {
    let mut b = CaseBuilder::new(seed);
    let v = b.normal(shape);
    let x = b.input(names::X, v, true)?;
    let y = b.g.log_softmax(x, axis)?;
    Ok(b.finish(&format!("log_softmax(axis {axis})"), "", y, false, true))
}

/// Training-mode batch norm composed from primitives (biased variance, eps 1e-5).
pub fn batch_norm(shape: [usize; 4], affine: bool, seed: u64) -> R<Case> {
    let mut b = CaseBuilder::new(seed);
    let v = b.normal(&shape);
    let x = b.input(names::X, v, true)?;
    let (gm, bt) = if affine {
        let vg = b.uniform(&[shape[1]], 0.5, 1.5);
        let vb = b.normal(&[shape[1]]);
        (
            Some(b.input("gamma", vg, true)?),
            Some(b.input("beta", vb, true)?),
        )
    } else {
        (None, None)
    };
    let y = compose::batch_norm_train(&mut b.g, x, gm, bt, compose::BN_EPS)?.y;
    let name = if affine {
        "batch_norm (affine)"
    } else {
        "batch_norm"
    };
    Ok(b.finish(name, "", y, false, true))
}

/// Mean cross-entropy of softmax(logits) against one-hot labels.
pub fn softmax_cross_entropy(n: usize, classes: usize, seed: u64) -> R<Case> {
    let mut b = CaseBuilder::new(seed);
    let v = b.normal(&[n, classes]);
    let z = b.input("logits", v, true)?;
    let mut onehot = ArrayD::zeros(IxDyn(&[n, classes]));
    for r in 0..n {
        onehot[[r, b.rng.random_range(0..classes)]] = 1.0;
    }
    let t = b.input(names::ONEHOT, onehot, false)?;
    let l = compose::cross_entropy_mean(&mut b.g, z, t)?;
    Ok(b.finish("softmax_cross_entropy", "", l, false, true))
}

/// The fixed suite `darts gradcheck` runs: every primitive, both conv transposes over the
/// DARTS conv geometries (depthwise 3x3/5x5, dilated, strided, pointwise), the pooling ops
/// as DARTS uses them, the composed batch norm and cross-entropy, and (with
/// `include_network`) the whole smooth search network.
pub fn standard_suite(seed: u64, include_network: bool) -> R<Vec<Case>> {
    use UnaryOp::*;
    let mut v = Vec::new();
    let mut s = seed;
    let mut next = || {
        s += 1;
        s
    };
    for op in [
        Neg, Exp, Log, Sqrt, Rsqrt, Recip, Square, Tanh, Sigmoid, Relu, Softplus, Step,
    ] {
        v.push(unary(op, &[3, 5], next())?);
    }
    for op in [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Greater,
        BinaryOp::Equal,
    ] {
        v.push(binary(op, &[2, 3, 4], &[3, 1], next())?);
    }
    v.push(select(&[4, 5], next())?);
    v.push(reduce(false, &[2, 3, 4, 5], &[0, 2, 3], next())?);
    v.push(reduce(true, &[2, 3, 4], &[1], next())?);
    v.push(movement(3, 4, next())?);
    v.push(matmul(5, 7, 3, next())?);
    let geos = [
        (3, ConvParams::new(1, 1, 1, 4)), // sep_conv 3x3 depthwise
        (5, ConvParams::new(2, 2, 1, 4)), // sep_conv 5x5 depthwise, reduction stride
        (3, ConvParams::new(1, 2, 2, 4)), // dil_conv 3x3
        (1, ConvParams::new(1, 0, 1, 1)), // pointwise 1x1
        (1, ConvParams::new(2, 0, 1, 1)), // FactorizedReduce 1x1 stride 2
        (3, ConvParams::new(1, 1, 1, 1)), // stem 3x3
        (3, ConvParams::new(2, 1, 1, 2)), // grouped, strided
    ];
    for (k, p) in geos {
        let cc = ConvCase {
            n: 2,
            c: 4,
            o: 4,
            hw: 6,
            k,
            p,
        };
        v.push(conv2d(cc, next())?);
        v.push(conv2d_transposes(cc, false, next())?);
        v.push(conv2d_transposes(cc, true, next())?);
    }
    for (stride, shape) in [(1, [2, 3, 5, 5]), (2, [2, 3, 6, 6])] {
        let p = PoolParams::new(3, stride, 1);
        for kind in [
            PoolKind::Avg,
            PoolKind::AvgGrad,
            PoolKind::Max,
            PoolKind::MaxGrad,
            PoolKind::MaxGather,
        ] {
            v.push(pool(kind, shape, p, next())?);
        }
    }
    v.push(gather_scatter(false, 6, 3, 8, next())?);
    v.push(gather_scatter(true, 6, 3, 8, next())?);
    v.push(log_softmax(&[4, 6], 1, next())?);
    v.push(batch_norm([4, 3, 3, 3], false, next())?);
    v.push(batch_norm([4, 3, 3, 3], true, next())?);
    v.push(softmax_cross_entropy(5, 10, next())?);
    if include_network {
        v.push(search_network(next())?);
    }
    Ok(v)
}

/// The whole DARTS search network (smooth variant: softplus for ReLU, average for max
/// pooling, so the second-order check applies): C = 2, 3 layers, batch 2 of 8x8 images,
/// loss with respect to both alpha matrices and the stem convolution.
pub fn search_network(seed: u64) -> R<Case> {
    use crate::darts::network::{build, SearchConfig};
    use crate::darts::ops::{NetBuilder, ParamSource};
    let cfg = SearchConfig {
        c: 2,
        layers: 3,
        smooth: true,
        ..SearchConfig::paper()
    };
    let layout = cfg.layout()?;
    let mut b = CaseBuilder::new(seed);
    let vx = b.normal(&[2, 3, 8, 8]);
    let x = b.input(names::X, vx, false)?;
    let mut onehot = ArrayD::zeros(IxDyn(&[2, cfg.num_classes]));
    onehot[[0, 3]] = 1.0;
    onehot[[1, 7]] = 1.0;
    let t = b.input(names::ONEHOT, onehot, false)?;
    let (va, vr) = (b.normal(&[cfg.k(), 8]), b.normal(&[cfg.k(), 8]));
    let an = b.input(names::ALPHA[0], va, true)?;
    let ar = b.input(names::ALPHA[1], vr, true)?;
    for (name, shape, kind) in layout.weights() {
        let bound = match kind {
            crate::darts::params::Kind::Weight { fan_in }
            | crate::darts::params::Kind::Bias { fan_in } => 1.0 / (*fan_in as f64).sqrt(),
            _ => 1.0,
        };
        let v = if name.ends_with(".bias") && name.starts_with("stem") {
            b.normal(shape)
        } else {
            b.uniform(shape, -bound, bound)
        };
        let v = if name == "stem.1.weight" {
            v.mapv(|x| 1.0 + 0.1 * x)
        } else {
            v
        };
        b.input(name, v, name == "stem.0.weight")?;
    }
    let mut nb = NetBuilder::search(&mut b.g, ParamSource::Inputs, true);
    let out = build(&mut nb, &cfg, x, t, an, ar)?;
    Ok(b.finish(
        "DARTS search network (smooth)",
        "C2 L3 x[2,3,8,8]",
        out.loss,
        false,
        true,
    ))
}
