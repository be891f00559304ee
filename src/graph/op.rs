//! The closed set of primitive operations.
//!
//! Every computation in the crate (a DARTS candidate op, a cell, the search network and its
//! loss, and every derivative of those) is a graph of these primitives. The set is closed under
//! differentiation: each VJP rule (see `graph::ops::*::vjp`) is written with the same
//! primitives, so `grad` can be applied to its own result. Matches over `Op` name every variant
//! (no catch-all arm), so a new primitive fails to compile until every layer handles it.

use super::Shape;

/// Elementwise functions of one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    /// 1 / sqrt(x)
    Rsqrt,
    /// 1 / x
    Recip,
    Square,
    Tanh,
    Sigmoid,
    /// max(x, 0); derivative at the kink x = 0 is 0 (as PyTorch).
    Relu,
    /// log(1 + exp(x)), the smooth stand-in for ReLU in FD-vs-exact convergence tests.
    Softplus,
    /// Heaviside step: 1 where x > 0, else 0 (also at 0). Derivative 0 everywhere.
    Step,
}

impl UnaryOp {
    /// Every unary op, in declaration order (for tests and tables that cover them all).
    pub const ALL: [UnaryOp; 12] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Recip,
        UnaryOp::Square,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Softplus,
        UnaryOp::Step,
    ];
}

/// Elementwise functions of two tensors, with NumPy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// max(a, b); on a tie each side receives half of the cotangent.
    Max,
    /// 1 where a > b else 0 (zero derivative).
    Greater,
    /// 1 where a == b else 0 (zero derivative).
    Equal,
}

/// Parameters of a 2-D convolution over NCHW input with OIHW weights.
///
/// out[n, o, y, x] = sum_{c in group(o), i, j} in[n, c, y*s_h - p_h + i*d_h, x*s_w - p_w + j*d_w] w[o, c', i, j]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvParams {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl ConvParams {
    pub fn new(stride: usize, padding: usize, dilation: usize, groups: usize) -> Self {
        ConvParams {
            stride: [stride; 2],
            padding: [padding; 2],
            dilation: [dilation; 2],
            groups,
        }
    }

    /// Output extent along one axis: floor((n + 2p - d(k-1) - 1) / s) + 1, or None if empty.
    pub fn out_len(&self, axis: usize, n: usize, k: usize) -> Option<usize> {
        let span = self.dilation[axis] * (k - 1) + 1;
        let padded = n + 2 * self.padding[axis];
        (padded >= span).then(|| (padded - span) / self.stride[axis] + 1)
    }
}

/// Parameters of a 2-D pooling window over NCHW input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolParams {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl PoolParams {
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        PoolParams {
            kernel: [kernel; 2],
            stride: [stride; 2],
            padding: [padding; 2],
        }
    }

    pub fn out_len(&self, axis: usize, n: usize) -> Option<usize> {
        let padded = n + 2 * self.padding[axis];
        (padded >= self.kernel[axis]).then(|| (padded - self.kernel[axis]) / self.stride[axis] + 1)
    }
}

/// A primitive. Inputs are listed in the order the variant's doc gives.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A value fed at run time by name (data, parameters, directions).
    Input { name: String, shape: Shape },
    /// A tensor filled with one value.
    Const { value: f64, shape: Shape },
    /// (x) -> f(x)
    Unary(UnaryOp),
    /// (a, b) -> f(a, b), broadcast.
    Binary(BinaryOp),
    /// (cond, a, b) -> cond != 0 ? a : b, all three of the same shape.
    Select,
    /// (x) -> sum over `axes`, keeping them as size 1.
    ReduceSum { axes: Vec<usize> },
    /// (x) -> max over `axes`, keeping them as size 1. The cotangent is shared evenly among
    /// tied maxima.
    ReduceMax { axes: Vec<usize> },
    /// (x) -> x broadcast (NumPy rules) to `shape`.
    Broadcast { shape: Shape },
    /// (x) -> the same elements in row-major order under `shape`.
    Reshape { shape: Shape },
    /// (x) -> x with axes reordered: out axis i is input axis perm[i].
    Permute { perm: Vec<usize> },
    /// (x) -> x[start..end; step] along `axis` (end exclusive).
    Slice {
        axis: usize,
        start: usize,
        end: usize,
        step: usize,
    },
    /// (x) -> x with `before` zeros, `interior` zeros between neighbours, `after` zeros along
    /// `axis`. The transpose of `Slice`.
    Pad {
        axis: usize,
        before: usize,
        after: usize,
        interior: usize,
    },
    /// (x_0, x_1, ...) -> concatenation along `axis`.
    Concat { axis: usize },
    /// (a [m, k], b [k, n]) -> a b [m, n]
    MatMul,
    /// (x [N, C, H, W], w [O, C/groups, kh, kw]) -> y [N, O, H', W']
    Conv2d(ConvParams),
    /// (gy [N, O, H', W'], w) -> gx [N, C, H, W]: the transpose of `Conv2d` in x.
    Conv2dInputGrad { p: ConvParams, in_hw: [usize; 2] },
    /// (x, gy) -> gw [O, C/groups, kh, kw]: the transpose of `Conv2d` in w.
    Conv2dWeightGrad { p: ConvParams, kernel: [usize; 2] },
    /// (x) -> windowed mean over in-bounds pixels (count_include_pad = False).
    AvgPool2d(PoolParams),
    /// (gy) -> gx [N, C, H, W]: the transpose of `AvgPool2d`.
    AvgPool2dGrad { p: PoolParams, in_hw: [usize; 2] },
    /// (x) -> windowed max; padding acts as -inf.
    MaxPool2d(PoolParams),
    /// (x, gy) -> gx: each window's cotangent goes to its first argmax in x (row-major scan).
    MaxPool2dGrad(PoolParams),
    /// (x, c) -> y-shaped: each window takes c at the first argmax of x. The transpose of
    /// `MaxPool2dGrad` in gy.
    MaxPool2dGather(PoolParams),
    /// (table [V, D...], idx [n]) -> table rows idx [n, D...]. idx holds exact integers.
    Gather,
    /// (idx [n], src [n, D...]) -> [rows, D...] with src rows summed into rows idx. The
    /// transpose of `Gather` in the table.
    ScatterAdd { rows: usize },
    /// (x) -> x - log(sum(exp(x))) along `axis`, computed with the max subtracted.
    LogSoftmax { axis: usize },
}

impl Op {
    /// A short name for tables and error messages.
    pub fn name(&self) -> String {
        match self {
            Op::Input { name, .. } => format!("input '{name}'"),
            Op::Const { value, .. } => format!("const {value}"),
            Op::Unary(u) => format!("{u:?}").to_lowercase(),
            Op::Binary(b) => format!("{b:?}").to_lowercase(),
            Op::Select => "select".into(),
            Op::ReduceSum { axes } => format!("reduce_sum{axes:?}"),
            Op::ReduceMax { axes } => format!("reduce_max{axes:?}"),
            Op::Broadcast { shape } => format!("broadcast{shape}"),
            Op::Reshape { shape } => format!("reshape{shape}"),
            Op::Permute { perm } => format!("permute{perm:?}"),
            Op::Slice {
                axis,
                start,
                end,
                step,
            } => format!("slice(axis {axis}, {start}..{end} step {step})"),
            Op::Pad {
                axis,
                before,
                after,
                interior,
            } => format!("pad(axis {axis}, {before}, {after}, interior {interior})"),
            Op::Concat { axis } => format!("concat(axis {axis})"),
            Op::MatMul => "matmul".into(),
            Op::Conv2d(p) => format!("conv2d{}", conv_desc(p)),
            Op::Conv2dInputGrad { p, .. } => format!("conv2d_input_grad{}", conv_desc(p)),
            Op::Conv2dWeightGrad { p, .. } => format!("conv2d_weight_grad{}", conv_desc(p)),
            Op::AvgPool2d(p) => format!("avg_pool2d{}", pool_desc(p)),
            Op::AvgPool2dGrad { p, .. } => format!("avg_pool2d_grad{}", pool_desc(p)),
            Op::MaxPool2d(p) => format!("max_pool2d{}", pool_desc(p)),
            Op::MaxPool2dGrad(p) => format!("max_pool2d_grad{}", pool_desc(p)),
            Op::MaxPool2dGather(p) => format!("max_pool2d_gather{}", pool_desc(p)),
            Op::Gather => "gather".into(),
            Op::ScatterAdd { .. } => "scatter_add".into(),
            Op::LogSoftmax { axis } => format!("log_softmax(axis {axis})"),
        }
    }
}

fn conv_desc(p: &ConvParams) -> String {
    format!(
        "(stride {:?}, pad {:?}, dil {:?}, groups {})",
        p.stride, p.padding, p.dilation, p.groups
    )
}

fn pool_desc(p: &PoolParams) -> String {
    format!(
        "(k {:?}, stride {:?}, pad {:?})",
        p.kernel, p.stride, p.padding
    )
}
