//! The binding table of every kernel ([`KernelSpec`]), by op family in the order of
//! src/exec/gpu/record/: each names its shader file and entry point, and lists its bindings
//! as the shader header documents them.

use super::{
    KernelSpec, Slot, CONV_WGSL, ELEMENTWISE_WGSL, GATHER_WGSL, MATMUL_WGSL, MOVEMENT_WGSL,
    POOL_WGSL, PROBE_F64_WGSL, REDUCE_WGSL, SOFTMAX_WGSL,
};

// Elementwise: shaders/elementwise.wgsl (Const, Unary, Binary, Broadcast, Select).

pub const UNARY: KernelSpec = KernelSpec {
    name: "elementwise.unary",
    file: "shaders/elementwise.wgsl",
    source: ELEMENTWISE_WGSL,
    entry: "unary",
    bindings: &[(0, Slot::Params), (1, Slot::Read), (3, Slot::Write)],
};

pub const BINARY: KernelSpec = KernelSpec {
    name: "elementwise.binary",
    file: "shaders/elementwise.wgsl",
    source: ELEMENTWISE_WGSL,
    entry: "binary",
    bindings: &[
        (0, Slot::Params),
        (1, Slot::Read),
        (2, Slot::Read),
        (3, Slot::Write),
    ],
};

pub const BROADCAST: KernelSpec = KernelSpec {
    name: "elementwise.broadcast",
    file: "shaders/elementwise.wgsl",
    source: ELEMENTWISE_WGSL,
    entry: "broadcast",
    bindings: &[(0, Slot::Params), (1, Slot::Read), (3, Slot::Write)],
};

pub const FILL: KernelSpec = KernelSpec {
    name: "elementwise.fill",
    file: "shaders/elementwise.wgsl",
    source: ELEMENTWISE_WGSL,
    entry: "fill",
    bindings: &[(0, Slot::Params), (3, Slot::Write)],
};

pub const SELECT: KernelSpec = KernelSpec {
    name: "elementwise.select",
    file: "shaders/elementwise.wgsl",
    source: ELEMENTWISE_WGSL,
    entry: "select_ab",
    bindings: &[
        (0, Slot::Params),
        (4, Slot::Read),
        (1, Slot::Read),
        (2, Slot::Read),
        (3, Slot::Write),
    ],
};

// Reductions: shaders/reduce.wgsl with the entry points of reduce_core.wgsl.

pub const REDUCE_SUM_SERIAL: KernelSpec = KernelSpec {
    name: "reduce.reduce_sum_serial",
    file: "shaders/reduce.wgsl",
    source: REDUCE_WGSL,
    entry: "reduce_sum_serial",
    bindings: &[(0, Slot::Params), (1, Slot::Read), (2, Slot::Write)],
};

pub const REDUCE_SUM_WORKGROUP: KernelSpec = KernelSpec {
    name: "reduce.reduce_sum_workgroup",
    file: "shaders/reduce.wgsl",
    source: REDUCE_WGSL,
    entry: "reduce_sum_workgroup",
    bindings: &[(0, Slot::Params), (1, Slot::Read), (2, Slot::Write)],
};

pub const REDUCE_SUM_SPLIT: KernelSpec = KernelSpec {
    name: "reduce.reduce_sum_split",
    file: "shaders/reduce.wgsl",
    source: REDUCE_WGSL,
    entry: "reduce_sum_split",
    bindings: &[(0, Slot::Params), (1, Slot::Read), (2, Slot::Write)],
};

pub const REDUCE_SUM_FINISH: KernelSpec = KernelSpec {
    name: "reduce.reduce_sum_finish",
    file: "shaders/reduce.wgsl",
    source: REDUCE_WGSL,
    entry: "reduce_sum_finish",
    bindings: &[(0, Slot::Params), (1, Slot::Read), (2, Slot::Write)],
};

pub const REDUCE_MAX_SERIAL: KernelSpec = KernelSpec {
    name: "reduce.reduce_max_serial",
    file: "shaders/reduce.wgsl",
    source: REDUCE_WGSL,
    entry: "reduce_max_serial",
    bindings: &[(0, Slot::Params), (1, Slot::Read), (2, Slot::Write)],
};

pub const REDUCE_MAX_WORKGROUP: KernelSpec = KernelSpec {
    name: "reduce.reduce_max_workgroup",
    file: "shaders/reduce.wgsl",
    source: REDUCE_WGSL,
    entry: "reduce_max_workgroup",
    bindings: &[(0, Slot::Params), (1, Slot::Read), (2, Slot::Write)],
};

pub const REDUCE_MAX_SPLIT: KernelSpec = KernelSpec {
    name: "reduce.reduce_max_split",
    file: "shaders/reduce.wgsl",
    source: REDUCE_WGSL,
    entry: "reduce_max_split",
    bindings: &[(0, Slot::Params), (1, Slot::Read), (2, Slot::Write)],
};

pub const REDUCE_MAX_FINISH: KernelSpec = KernelSpec {
    name: "reduce.reduce_max_finish",
    file: "shaders/reduce.wgsl",
    source: REDUCE_WGSL,
    entry: "reduce_max_finish",
    bindings: &[(0, Slot::Params), (1, Slot::Read), (2, Slot::Write)],
};

// Movement: shaders/movement.wgsl (Permute, Slice, Pad, Concat).

pub const COPY: KernelSpec = KernelSpec {
    name: "movement.copy",
    file: "shaders/movement.wgsl",
    source: MOVEMENT_WGSL,
    entry: "copy",
    bindings: &[(0, Slot::Params), (1, Slot::Read), (2, Slot::Write)],
};

// Matmul: shaders/matmul.wgsl.

pub const MATMUL: KernelSpec = KernelSpec {
    name: "matmul.matmul",
    file: "shaders/matmul.wgsl",
    source: MATMUL_WGSL,
    entry: "matmul",
    bindings: &[
        (0, Slot::Params),
        (1, Slot::Read),
        (2, Slot::Read),
        (3, Slot::Write),
    ],
};

// Convolution: shaders/conv.wgsl (Conv2d and its two transposes).

pub const CONV2D: KernelSpec = KernelSpec {
    name: "conv.conv2d",
    file: "shaders/conv.wgsl",
    source: CONV_WGSL,
    entry: "conv2d",
    bindings: &[
        (0, Slot::Params),
        (1, Slot::Read),
        (2, Slot::Read),
        (3, Slot::Write),
    ],
};

pub const CONV2D_INPUT_GRAD: KernelSpec = KernelSpec {
    name: "conv.conv2d_input_grad",
    file: "shaders/conv.wgsl",
    source: CONV_WGSL,
    entry: "conv2d_input_grad",
    bindings: &[
        (0, Slot::Params),
        (1, Slot::Read),
        (2, Slot::Read),
        (3, Slot::Write),
    ],
};

pub const CONV2D_WEIGHT_GRAD: KernelSpec = KernelSpec {
    name: "conv.conv2d_weight_grad",
    file: "shaders/conv.wgsl",
    source: CONV_WGSL,
    entry: "conv2d_weight_grad",
    bindings: &[
        (0, Slot::Params),
        (1, Slot::Read),
        (2, Slot::Read),
        (3, Slot::Write),
    ],
};

pub const CONV2D_WEIGHT_GRAD_WORKGROUP: KernelSpec = KernelSpec {
    name: "conv.conv2d_weight_grad_workgroup",
    file: "shaders/conv.wgsl",
    source: CONV_WGSL,
    entry: "conv2d_weight_grad_workgroup",
    bindings: &[
        (0, Slot::Params),
        (1, Slot::Read),
        (2, Slot::Read),
        (3, Slot::Write),
    ],
};

pub const CONV2D_WEIGHT_GRAD_SPLIT: KernelSpec = KernelSpec {
    name: "conv.conv2d_weight_grad_split",
    file: "shaders/conv.wgsl",
    source: CONV_WGSL,
    entry: "conv2d_weight_grad_split",
    bindings: &[
        (0, Slot::Params),
        (1, Slot::Read),
        (2, Slot::Read),
        (3, Slot::Write),
    ],
};

pub const CONV2D_WEIGHT_GRAD_FINISH: KernelSpec = KernelSpec {
    name: "conv.conv2d_weight_grad_finish",
    file: "shaders/conv.wgsl",
    source: CONV_WGSL,
    entry: "conv2d_weight_grad_finish",
    bindings: &[
        (0, Slot::Params),
        (1, Slot::Read),
        (2, Slot::Read),
        (3, Slot::Write),
    ],
};

// Pooling: shaders/pool.wgsl.

pub const AVG_POOL: KernelSpec = KernelSpec {
    name: "pool.avg_pool",
    file: "shaders/pool.wgsl",
    source: POOL_WGSL,
    entry: "avg_pool",
    bindings: &[(0, Slot::Params), (1, Slot::Read), (3, Slot::Write)],
};

pub const AVG_POOL_GRAD: KernelSpec = KernelSpec {
    name: "pool.avg_pool_grad",
    file: "shaders/pool.wgsl",
    source: POOL_WGSL,
    entry: "avg_pool_grad",
    bindings: &[(0, Slot::Params), (1, Slot::Read), (3, Slot::Write)],
};

pub const MAX_POOL_GATHER: KernelSpec = KernelSpec {
    name: "pool.max_pool_gather",
    file: "shaders/pool.wgsl",
    source: POOL_WGSL,
    entry: "max_pool_gather",
    bindings: &[
        (0, Slot::Params),
        (1, Slot::Read),
        (2, Slot::Read),
        (3, Slot::Write),
    ],
};

pub const MAX_POOL_GRAD: KernelSpec = KernelSpec {
    name: "pool.max_pool_grad",
    file: "shaders/pool.wgsl",
    source: POOL_WGSL,
    entry: "max_pool_grad",
    bindings: &[
        (0, Slot::Params),
        (1, Slot::Read),
        (2, Slot::Read),
        (3, Slot::Write),
    ],
};

// Row indexing: shaders/gather.wgsl (Gather, ScatterAdd).

pub const GATHER: KernelSpec = KernelSpec {
    name: "gather.gather",
    file: "shaders/gather.wgsl",
    source: GATHER_WGSL,
    entry: "gather",
    bindings: &[
        (0, Slot::Params),
        (1, Slot::Read),
        (2, Slot::Read),
        (3, Slot::Write),
    ],
};

pub const SCATTER_ADD: KernelSpec = KernelSpec {
    name: "gather.scatter_add",
    file: "shaders/gather.wgsl",
    source: GATHER_WGSL,
    entry: "scatter_add",
    bindings: &[
        (0, Slot::Params),
        (1, Slot::Read),
        (2, Slot::Read),
        (3, Slot::Write),
    ],
};

// Softmax: shaders/softmax.wgsl.

pub const LOG_SOFTMAX: KernelSpec = KernelSpec {
    name: "softmax.log_softmax",
    file: "shaders/softmax.wgsl",
    source: SOFTMAX_WGSL,
    entry: "log_softmax",
    bindings: &[(0, Slot::Params), (1, Slot::Read), (2, Slot::Write)],
};

// The f64 probe: shaders/probe_f64.wgsl.

/// The f64 probe (not in [`ALL`]: it compiles with the f64 prelude only).
pub const PROBE_F64: KernelSpec = KernelSpec {
    name: "probe_f64.probe",
    file: "shaders/probe_f64.wgsl",
    source: PROBE_F64_WGSL,
    entry: "probe",
    bindings: &[
        (0, Slot::Params),
        (1, Slot::Read),
        (2, Slot::Read),
        (3, Slot::Write),
    ],
};

/// Every kernel of both element types, for eager compilation and tests.
pub const ALL: [KernelSpec; 28] = [
    UNARY,
    BINARY,
    BROADCAST,
    FILL,
    REDUCE_SUM_SERIAL,
    REDUCE_SUM_WORKGROUP,
    MATMUL,
    SELECT,
    REDUCE_MAX_SERIAL,
    REDUCE_MAX_WORKGROUP,
    REDUCE_SUM_SPLIT,
    REDUCE_SUM_FINISH,
    REDUCE_MAX_SPLIT,
    REDUCE_MAX_FINISH,
    COPY,
    CONV2D,
    CONV2D_INPUT_GRAD,
    CONV2D_WEIGHT_GRAD,
    CONV2D_WEIGHT_GRAD_WORKGROUP,
    CONV2D_WEIGHT_GRAD_SPLIT,
    CONV2D_WEIGHT_GRAD_FINISH,
    AVG_POOL,
    AVG_POOL_GRAD,
    MAX_POOL_GATHER,
    MAX_POOL_GRAD,
    GATHER,
    SCATTER_ADD,
    LOG_SOFTMAX,
];
