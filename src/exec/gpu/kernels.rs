//! The WGSL kernels: their params structs (mirrors of the structs documented in each
//! `shaders/*.wgsl` header), their binding tables, and the pipeline cache.
//!
//! Bindings are built from [`KernelSpec::bindings`], the same table each shader header
//! documents, never from argument order at the call site.
//!
//! Each kernel file is written once in the element type `S`; the module compiled is the scalar
//! prelude of the executor's element type ([`SCALAR_F32_WGSL`] or [`SCALAR_F64_WGSL`], which
//! define `S` and the scalar functions) followed by the kernel file ([`compose`]).

use bytemuck::{Pod, Zeroable};
use std::collections::HashMap;

/// Most axes a tensor may have on the GPU (`MAX_RANK` in the shaders).
pub const MAX_RANK: usize = 8;

/// Invocations per workgroup of the elementwise and reduce kernels (`WORKGROUP_SIZE`).
pub const WORKGROUP_SIZE: u32 = 256;

/// Output tile edge of the matmul kernel (`TILE` in shaders/matmul.wgsl).
pub const MATMUL_TILE: u32 = 16;

/// Reductions of at least this many elements per output use one workgroup per output
/// (`reduce_sum_workgroup`, `conv2d_weight_grad_workgroup`); shorter ones use one invocation
/// per output (`reduce_sum_serial`, `conv2d_weight_grad`). The default of
/// `GpuExecutor::set_workgroup_min`.
pub const REDUCE_WORKGROUP_MIN: u32 = 512;

/// On a GPU that is not a CPU, reductions of at most [`REDUCE_SPLIT_MAX_OUT`] outputs with at
/// least this many elements per output are split: `SPLIT` (= [`WORKGROUP_SIZE`]) workgroups
/// per output sum one chunk each, and a second dispatch sums the chunks (`*_split`, then
/// `*_finish` of shaders/reduce_core.wgsl). The default of `GpuExecutor::set_split_min`.
pub const REDUCE_SPLIT_MIN: u32 = 32768;

/// Reductions with more outputs than this are never split: one workgroup per output already
/// spreads over the multiprocessors of a large GPU (an NVIDIA H200 has 132).
pub const REDUCE_SPLIT_MAX_OUT: u32 = 128;

/// A split weight gradient (`conv2d_weight_grad_split`, then `_finish`) takes as many chunks
/// per weight element (at most [`WORKGROUP_SIZE`], each of at least [`WORKGROUP_SIZE`] terms)
/// as bring its workgroups to about this many: a few per multiprocessor of a large GPU.
pub const WEIGHT_GRAD_SPLIT_WORKGROUPS: u32 = 4096;

/// Chunks per element of a conv weight gradient of `total` elements with `terms` terms each:
/// more than 1 when it runs split (at least `split_min` terms; see
/// `GpuExecutor::set_split_min`): enough chunks of at least [`WORKGROUP_SIZE`] terms to bring
/// the workgroups to about [`WEIGHT_GRAD_SPLIT_WORKGROUPS`], at most [`WORKGROUP_SIZE`], and
/// all of them within a grid of `max_per_dim` x `max_per_dim` workgroups.
pub fn weight_grad_chunks(total: usize, terms: usize, split_min: u32, max_per_dim: u32) -> u32 {
    let wg = WORKGROUP_SIZE as usize;
    let l = max_per_dim as usize;
    if terms < split_min as usize || total == 0 {
        return 1;
    }
    let chunks = (WEIGHT_GRAD_SPLIT_WORKGROUPS as usize)
        .div_ceil(total)
        .min(terms.div_ceil(wg))
        .clamp(1, wg);
    if chunks > 1 && total * chunks <= l * l {
        chunks as u32
    } else {
        1
    }
}

/// The f32 scalar prelude: `S = f32`, the WGSL builtins.
pub const SCALAR_F32_WGSL: &str = include_str!("../../../shaders/scalar_f32.wgsl");
/// The f64 scalar prelude: `S = f64`, exp/log/tanh built from + - * / (see the file).
pub const SCALAR_F64_WGSL: &str = include_str!("../../../shaders/scalar_f64.wgsl");
pub const ELEMENTWISE_WGSL: &str = concat!(
    include_str!("../../../shaders/elementwise_ops.wgsl"),
    "\n",
    include_str!("../../../shaders/elementwise.wgsl")
);

/// The shared part of every fused kernel (src/exec/gpu/fusion.rs): the elementwise ops, then
/// the header of shaders/fused.wgsl; the generated bindings and entry point follow.
pub const FUSED_WGSL: &str = concat!(
    include_str!("../../../shaders/elementwise_ops.wgsl"),
    "\n",
    include_str!("../../../shaders/fused.wgsl"),
    "\n",
    include_str!("../../../shaders/fused_map.wgsl")
);
/// The shared part of every fused reduction: the elementwise ops, fused.wgsl, the parameters
/// of shaders/fused_reduce.wgsl and the reduction entry points of shaders/reduce_core.wgsl;
/// the generated bindings and `reduce_input` follow.
pub const FUSED_REDUCE_WGSL: &str = concat!(
    include_str!("../../../shaders/elementwise_ops.wgsl"),
    "\n",
    include_str!("../../../shaders/fused.wgsl"),
    "\n",
    include_str!("../../../shaders/fused_reduce.wgsl"),
    "\n",
    include_str!("../../../shaders/reduce_core.wgsl"),
    "\n",
    include_str!("../../../shaders/workgroup_tree.wgsl")
);
pub const REDUCE_WGSL: &str = concat!(
    include_str!("../../../shaders/reduce.wgsl"),
    "\n",
    include_str!("../../../shaders/reduce_core.wgsl"),
    "\n",
    include_str!("../../../shaders/workgroup_tree.wgsl")
);
pub const MATMUL_WGSL: &str = include_str!("../../../shaders/matmul.wgsl");
pub const MOVEMENT_WGSL: &str = include_str!("../../../shaders/movement.wgsl");
pub const CONV_WGSL: &str = concat!(
    include_str!("../../../shaders/conv.wgsl"),
    "\n",
    include_str!("../../../shaders/workgroup_tree.wgsl")
);
pub const POOL_WGSL: &str = include_str!("../../../shaders/pool.wgsl");
pub const GATHER_WGSL: &str = include_str!("../../../shaders/gather.wgsl");
pub const SOFTMAX_WGSL: &str = include_str!("../../../shaders/softmax.wgsl");
/// The f64 probe (each f64 operation the f64 kernels use, alone); f64 prelude only.
pub const PROBE_F64_WGSL: &str = include_str!("../../../shaders/probe_f64.wgsl");

/// The WGSL module of a kernel file for an element type: its scalar prelude, then the file.
/// (naga's and wgpu's line numbers count the prelude's lines first.)
pub fn compose(prelude: &str, source: &str) -> String {
    format!("{prelude}\n{source}")
}

/// `FusedParams` of shaders/fused.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct FusedParams {
    pub total: u32,
    pub rank: u32,
    /// Plain view slots (the bounded slots' words follow theirs).
    pub views: u32,
    pub _pad: u32,
    pub shape: [u32; MAX_RANK],
    pub words: [u32; super::fusion::VIEW_WORDS],
}

impl Default for FusedParams {
    fn default() -> Self {
        Zeroable::zeroed()
    }
}

/// `FusedReduceParams` of shaders/fused_reduce.wgsl: the reduction's parameters, then the
/// expression's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct FusedReduceParams {
    pub reduce: ReduceParams,
    pub map: FusedParams,
}

/// `MoveParams` of shaders/movement.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct MoveParams {
    pub total: u32,
    pub rank: u32,
    pub base: u32,
    pub skip_outside: u32,
    pub shape: [u32; MAX_RANK],
    pub in_strides: [u32; MAX_RANK],
    pub lo: [u32; MAX_RANK],
    pub div: [u32; MAX_RANK],
    pub extent: [u32; MAX_RANK],
}

/// `ConvParams` of shaders/conv.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConvParams {
    pub total: u32,
    pub n: u32,
    pub c: u32,
    pub h: u32,
    pub w: u32,
    pub o: u32,
    pub oh: u32,
    pub ow: u32,
    pub kh: u32,
    pub kw: u32,
    pub groups: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_h: u32,
    pub pad_w: u32,
    pub dil_h: u32,
    pub dil_w: u32,
    /// Chunks per weight element of the split weight gradient.
    pub chunks: u32,
    /// 1: `a` is the input of a ReLU, applied as it is loaded (Conv2d, Conv2dWeightGrad).
    pub relu_a: u32,
    pub _pad2: u32,
}

/// `PoolParams` of shaders/pool.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct PoolParams {
    pub total: u32,
    pub planes: u32,
    pub h: u32,
    pub w: u32,
    pub oh: u32,
    pub ow: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_h: u32,
    pub pad_w: u32,
}

/// `GatherParams` of shaders/gather.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct GatherParams {
    pub total: u32,
    pub rows: u32,
    pub n: u32,
    pub d: u32,
}

/// `SoftmaxParams` of shaders/softmax.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct SoftmaxParams {
    pub lanes: u32,
    pub n: u32,
    pub inner: u32,
    pub _pad: u32,
}

/// `EwParams` of shaders/elementwise.wgsl, field for field. The WGSL `value: S` (an f32 or an
/// f64 at byte 112, then padding to 128) is held as raw bytes: [`EwParams::set_value`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct EwParams {
    pub total: u32,
    pub rank: u32,
    pub op: u32,
    pub _pad: u32,
    pub shape: [u32; MAX_RANK],
    pub a_strides: [u32; MAX_RANK],
    pub b_strides: [u32; MAX_RANK],
    pub value: [u32; 4],
}

impl EwParams {
    /// Stores the fill value in the element type of the kernel (f32 or f64, little-endian as
    /// the device reads it): its bytes first, zeros after.
    pub fn set_value<T: Pod>(&mut self, v: T) {
        let bytes = bytemuck::bytes_of(&v);
        let dst = bytemuck::bytes_of_mut(&mut self.value);
        dst.fill(0);
        dst[..bytes.len()].copy_from_slice(bytes);
    }
}

/// `ProbeParams` of shaders/probe_f64.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ProbeParams {
    pub total: u32,
    pub op: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

/// `ReduceParams` of shaders/reduce.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ReduceParams {
    pub total_out: u32,
    pub n_red: u32,
    pub kept_rank: u32,
    pub red_rank: u32,
    pub kept_shape: [u32; MAX_RANK],
    pub kept_strides: [u32; MAX_RANK],
    pub red_shape: [u32; MAX_RANK],
    pub red_strides: [u32; MAX_RANK],
}

/// `MatmulParams` of shaders/matmul.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct MatmulParams {
    pub m: u32,
    pub k: u32,
    pub n: u32,
    pub tiles_n: u32,
}

/// What a binding slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// The params struct (uniform).
    Params,
    /// A tensor input, read-only storage.
    Read,
    /// The output tensor, read-write storage.
    Write,
}

/// One kernel: a shader file's entry point and its binding table.
#[derive(Clone, Copy, Debug)]
pub struct KernelSpec {
    /// The cache key and the name used in error messages.
    pub name: &'static str,
    /// The shader file, for error messages.
    pub file: &'static str,
    pub source: &'static str,
    pub entry: &'static str,
    /// (binding index, slot), as documented in the shader header.
    pub bindings: &'static [(u32, Slot)],
}

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

pub const COPY: KernelSpec = KernelSpec {
    name: "movement.copy",
    file: "shaders/movement.wgsl",
    source: MOVEMENT_WGSL,
    entry: "copy",
    bindings: &[(0, Slot::Params), (1, Slot::Read), (2, Slot::Write)],
};

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

pub const LOG_SOFTMAX: KernelSpec = KernelSpec {
    name: "softmax.log_softmax",
    file: "shaders/softmax.wgsl",
    source: SOFTMAX_WGSL,
    entry: "log_softmax",
    bindings: &[(0, Slot::Params), (1, Slot::Read), (2, Slot::Write)],
};

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

/// A compiled kernel: its pipeline and explicit bind group layout.
#[derive(Clone)]
pub struct Compiled {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    /// The layout's (binding, slot) entries, in the order a dispatch binds its buffers.
    pub bindings: Vec<(u32, Slot)>,
}

/// Pipelines and bind group layouts, created once per kernel and cached by name; shader
/// modules created once per file, each composed with the cache's scalar prelude.
pub struct PipelineCache {
    prelude: &'static str,
    /// Composed source of each shader file.
    modules: HashMap<&'static str, String>,
    kernels: HashMap<&'static str, Compiled>,
    /// Fused kernels by the hash of their generated source and their entry point, with the
    /// source (a hash collision recompiles rather than reuse another kernel).
    fused: HashMap<(u64, &'static str, usize), (String, Compiled)>,
    /// Batched kernels (src/exec/gpu/batch.rs) by kernel name and instances.
    batched: HashMap<(&'static str, usize), Compiled>,
}

impl PipelineCache {
    /// An empty cache whose modules start with `prelude` ([`SCALAR_F32_WGSL`] or
    /// [`SCALAR_F64_WGSL`]).
    pub fn new(prelude: &'static str) -> Self {
        PipelineCache {
            prelude,
            modules: HashMap::new(),
            kernels: HashMap::new(),
            fused: HashMap::new(),
            batched: HashMap::new(),
        }
    }

    /// Fused kernels compiled so far.
    pub fn fused_count(&self) -> usize {
        self.fused.len()
    }

    /// The compiled fused kernel of generated `source` (whose hash is `hash`) reading `leaves`
    /// buffers (see src/exec/gpu/fusion.rs): an elementwise map (`reduce` false, entry point
    /// `fused`) or a reduction of one (entry point `entry` of shaders/reduce_core.wgsl),
    /// compiled on first use. Looked up by hash and entry, then confirmed by the source.
    pub fn get_fused(
        &mut self,
        device: &wgpu::Device,
        (source, hash): (&str, u64),
        leaves: usize,
        reduce: bool,
        entry: &'static str,
        instances: usize,
    ) -> Result<&Compiled, String> {
        let key = (hash, entry, instances);
        let hit = self.fused.get(&key).is_some_and(|(src, _)| src == source);
        if !hit {
            let code = fused_module(self.prelude, source, reduce);
            let compiled = if instances > 1 {
                let params = if reduce {
                    std::mem::size_of::<FusedReduceParams>()
                } else {
                    std::mem::size_of::<FusedParams>()
                };
                let (code, storage) = super::batch::instanced(&code, instances, entry, params)
                    .map_err(|e| format!("{e}\ngenerated source:\n{source}"))?;
                let bindings = super::batch::layout(
                    &fused_bindings(leaves),
                    Slot::Params,
                    &storage,
                    instances,
                );
                compile(device, "fused (batched)", &code, entry, &bindings)
            } else {
                compile(device, "fused", &code, entry, &fused_bindings(leaves))
            }
            .map_err(|e| format!("{e}\ngenerated source:\n{source}"))?;
            self.fused.insert(key, (source.to_string(), compiled));
        }
        Ok(&self.fused[&key].1)
    }

    /// The kernel `spec` instanced for `instances` independent dispatches of `params_bytes`
    /// of parameters each (src/exec/gpu/batch.rs), compiled on first use.
    pub fn get_batched(
        &mut self,
        device: &wgpu::Device,
        spec: &KernelSpec,
        instances: usize,
        params_bytes: usize,
    ) -> Result<&Compiled, String> {
        let key = (spec.name, instances);
        if !self.batched.contains_key(&key) {
            let code = compose(self.prelude, spec.source);
            let (code, storage) =
                super::batch::instanced(&code, instances, spec.entry, params_bytes)
                    .map_err(|e| format!("batching kernel '{}': {e}", spec.name))?;
            let bindings = super::batch::layout(spec.bindings, Slot::Params, &storage, instances);
            let compiled = compile(device, spec.file, &code, spec.entry, &bindings)
                .map_err(|e| format!("compiling kernel '{}' batched: {e}", spec.name))?;
            self.batched.insert(key, compiled);
        }
        Ok(&self.batched[&key])
    }

    /// The compiled kernel for `spec`, compiling it on first use. Errors (caught in a
    /// validation scope) name the kernel and its shader file.
    pub fn get(&mut self, device: &wgpu::Device, spec: &KernelSpec) -> Result<&Compiled, String> {
        if !self.kernels.contains_key(spec.name) {
            let prelude = self.prelude;
            let source = self
                .modules
                .entry(spec.file)
                .or_insert_with(|| compose(prelude, spec.source));
            let compiled = compile(device, spec.file, source, spec.entry, spec.bindings)
                .map_err(|e| format!("compiling kernel '{}': {e}", spec.name))?;
            self.kernels.insert(spec.name, compiled);
        }
        Ok(&self.kernels[spec.name])
    }
}

/// The module of a fused kernel: the scalar prelude, the shared fused files (with the
/// reduction entry points for a reduction), then the generated `source`.
pub fn fused_module(prelude: &str, source: &str, reduce: bool) -> String {
    let shared = if reduce {
        FUSED_REDUCE_WGSL
    } else {
        FUSED_WGSL
    };
    format!("{prelude}\n{shared}\n{source}")
}

/// The bindings of a fused kernel of `leaves` leaves: params, the leaves, the output.
pub fn fused_bindings(leaves: usize) -> Vec<(u32, Slot)> {
    std::iter::once((0, Slot::Params))
        .chain((1..=leaves as u32).map(|b| (b, Slot::Read)))
        .chain(std::iter::once((leaves as u32 + 1, Slot::Write)))
        .collect()
}

/// Compiles entry point `entry` of WGSL `source` (named `file` in errors) with an explicit
/// bind group layout of `bindings`, inside a validation scope.
fn compile(
    device: &wgpu::Device,
    file: &str,
    source: &str,
    entry: &str,
    bindings: &[(u32, Slot)],
) -> Result<Compiled, String> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(file),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
        .iter()
        .map(|&(binding, slot)| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match slot {
                    Slot::Params => wgpu::BufferBindingType::Uniform,
                    Slot::Read => wgpu::BufferBindingType::Storage { read_only: true },
                    Slot::Write => wgpu::BufferBindingType::Storage { read_only: false },
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(file),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(file),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(file),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(format!("{file} entry point '{entry}': {e}"));
    }
    Ok(Compiled {
        pipeline,
        layout,
        bindings: bindings.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust mirrors have the byte sizes of the WGSL structs: uniform layout rounds
    /// `array<vec4<u32>, 2>` to 32 bytes, so 16 + 32 + 4 * 80 = 368 (FusedParams: shape and
    /// 80 view words), 144 + 368 = 512 (FusedReduceParams), 16 + 3 * 32 + 16 = 128 (EwParams: the value `S`
    /// at 112, the struct rounded up to its 16-byte alignment), 16 + 4 * 32 = 144, 16,
    /// 16 + 5 * 32 = 176 (MoveParams); the scalar structs are 4 bytes per u32: 20 * 4 = 80
    /// (ConvParams), 12 * 4 = 48 (PoolParams), 16 (GatherParams, SoftmaxParams, ProbeParams).
    #[test]
    fn params_structs_match_wgsl_sizes() {
        assert_eq!(std::mem::size_of::<EwParams>(), 128);
        assert_eq!(std::mem::size_of::<FusedParams>(), 368);
        assert_eq!(std::mem::size_of::<FusedReduceParams>(), 512);
        assert_eq!(std::mem::size_of::<ProbeParams>(), 16);
        assert_eq!(std::mem::size_of::<ReduceParams>(), 144);
        assert_eq!(std::mem::size_of::<MatmulParams>(), 16);
        assert_eq!(std::mem::size_of::<MoveParams>(), 176);
        assert_eq!(std::mem::size_of::<ConvParams>(), 80);
        assert_eq!(std::mem::size_of::<PoolParams>(), 48);
        assert_eq!(std::mem::size_of::<GatherParams>(), 16);
        assert_eq!(std::mem::size_of::<SoftmaxParams>(), 16);
    }

    /// The sizes above are also what naga computes for the structs in the shader files, with
    /// either prelude (f32 and f64); EwParams's `value` sits at byte 112 in both. Every shared
    /// part parses (a fused reduction's with a stub for its generated part).
    #[test]
    fn params_structs_match_naga_layout() {
        let f64_only = [(
            PROBE_F64_WGSL,
            "ProbeParams",
            std::mem::size_of::<ProbeParams>(),
        )];
        let both = [
            (
                ELEMENTWISE_WGSL,
                "EwParams",
                std::mem::size_of::<EwParams>(),
            ),
            (
                REDUCE_WGSL,
                "ReduceParams",
                std::mem::size_of::<ReduceParams>(),
            ),
            (
                MATMUL_WGSL,
                "MatmulParams",
                std::mem::size_of::<MatmulParams>(),
            ),
            (
                MOVEMENT_WGSL,
                "MoveParams",
                std::mem::size_of::<MoveParams>(),
            ),
            (CONV_WGSL, "ConvParams", std::mem::size_of::<ConvParams>()),
            (
                FUSED_WGSL,
                "FusedParams",
                std::mem::size_of::<FusedParams>(),
            ),
            (
                FUSED_REDUCE_WGSL,
                "FusedReduceParams",
                std::mem::size_of::<FusedReduceParams>(),
            ),
            (POOL_WGSL, "PoolParams", std::mem::size_of::<PoolParams>()),
            (
                GATHER_WGSL,
                "GatherParams",
                std::mem::size_of::<GatherParams>(),
            ),
            (
                SOFTMAX_WGSL,
                "SoftmaxParams",
                std::mem::size_of::<SoftmaxParams>(),
            ),
        ];
        let cases = both
            .iter()
            .flat_map(|c| [(SCALAR_F32_WGSL, *c), (SCALAR_F64_WGSL, *c)])
            .chain(f64_only.iter().map(|c| (SCALAR_F64_WGSL, *c)));
        for (prelude, (src, name, size)) in cases {
            // A fused reduction's shared part needs its generated `out` and `reduce_input`.
            let stub = "@group(0) @binding(1) var<storage, read_write> out: array<S>;\n\
                        fn reduce_input(i: u32) -> S { return S(0.0); }\n\
                        fn reduce_output(o: u32, v: S) -> S { return v; }\n";
            let src = if std::ptr::eq(src, FUSED_REDUCE_WGSL) {
                format!("{src}\n{stub}")
            } else {
                src.to_string()
            };
            let module = naga::front::wgsl::parse_str(&compose(prelude, &src))
                .unwrap_or_else(|e| panic!("{name}'s shader does not parse: {e}"));
            let mut layouter = naga::proc::Layouter::default();
            layouter
                .update(module.to_ctx())
                .expect("layout of the shader's types");
            let (handle, ty) = module
                .types
                .iter()
                .find(|(_, t)| t.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("struct {name} not found in its shader"));
            assert_eq!(layouter[handle].size as usize, size, "{name}");
            if let naga::TypeInner::Struct { members, .. } = &ty.inner {
                if let Some(v) = members.iter().find(|m| m.name.as_deref() == Some("value")) {
                    assert_eq!(v.offset, 112, "{name}.value");
                }
            }
        }
    }

    /// The constants here equal the named constants in the shader headers.
    #[test]
    fn constants_match_shaders() {
        assert!(
            ELEMENTWISE_WGSL.contains(&format!("const WORKGROUP_SIZE: u32 = {WORKGROUP_SIZE}u;"))
        );
        assert!(REDUCE_WGSL.contains(&format!("const WORKGROUP_SIZE: u32 = {WORKGROUP_SIZE}u;")));
        assert!(ELEMENTWISE_WGSL.contains(&format!("const MAX_RANK: u32 = {MAX_RANK}u;")));
        assert!(REDUCE_WGSL.contains(&format!("const MAX_RANK: u32 = {MAX_RANK}u;")));
        assert!(MATMUL_WGSL.contains(&format!("const TILE: u32 = {MATMUL_TILE}u;")));
        for src in [
            FUSED_WGSL,
            FUSED_REDUCE_WGSL,
            MOVEMENT_WGSL,
            CONV_WGSL,
            POOL_WGSL,
            GATHER_WGSL,
            SOFTMAX_WGSL,
            PROBE_F64_WGSL,
        ] {
            assert!(src.contains(&format!("const WORKGROUP_SIZE: u32 = {WORKGROUP_SIZE}u;")));
        }
        assert!(MOVEMENT_WGSL.contains(&format!("const MAX_RANK: u32 = {MAX_RANK}u;")));
        assert!(FUSED_WGSL.contains(&format!("const MAX_RANK: u32 = {MAX_RANK}u;")));
        assert!(FUSED_WGSL.contains(&format!(
            "words: array<vec4<u32>, {}>,",
            super::super::fusion::VIEW_WORDS / 4
        )));
    }
}
