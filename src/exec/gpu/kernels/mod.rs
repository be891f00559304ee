//! The WGSL kernels: their params structs (mirrors of the structs documented in each
//! `shaders/*.wgsl` header), their binding tables, and the pipeline cache.
//!
//! Bindings are built from [`KernelSpec::bindings`], the same table each shader header
//! documents, never from argument order at the call site.
//!
//! Each kernel file is written once in the element type `S`; the module compiled is the scalar
//! prelude of the executor's element type ([`SCALAR_F32_WGSL`] or [`SCALAR_F64_WGSL`], which
//! define `S` and the scalar functions) followed by the kernel file ([`compose`]).
//!
//! This file holds the shared constants, the WGSL sources and the [`KernelSpec`] type;
//! `params.rs` the params structs, `specs.rs` every kernel's binding table (by op family),
//! `cache.rs` the pipeline cache.

mod cache;
mod params;
mod specs;

pub use cache::{fused_bindings, fused_module, Compiled, PipelineCache};
pub use params::{
    ConvParams, EwParams, FusedParams, FusedReduceParams, GatherParams, MatmulParams, MoveParams,
    PoolParams, ProbeParams, ReduceParams, SoftmaxParams,
};
pub use specs::*;

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
pub const SCALAR_F32_WGSL: &str = include_str!("../../../../shaders/scalar_f32.wgsl");
/// The f64 scalar prelude: `S = f64`, exp/log/tanh built from + - * / (see the file).
pub const SCALAR_F64_WGSL: &str = include_str!("../../../../shaders/scalar_f64.wgsl");
pub const ELEMENTWISE_WGSL: &str = concat!(
    include_str!("../../../../shaders/elementwise_ops.wgsl"),
    "\n",
    include_str!("../../../../shaders/elementwise.wgsl")
);

/// The shared part of every fused kernel (src/exec/gpu/fusion/): the elementwise ops, then
/// the header of shaders/fused.wgsl; the generated bindings and entry point follow.
pub const FUSED_WGSL: &str = concat!(
    include_str!("../../../../shaders/elementwise_ops.wgsl"),
    "\n",
    include_str!("../../../../shaders/fused.wgsl"),
    "\n",
    include_str!("../../../../shaders/fused_map.wgsl")
);
/// The shared part of every fused reduction: the elementwise ops, fused.wgsl, the parameters
/// of shaders/fused_reduce.wgsl and the reduction entry points of shaders/reduce_core.wgsl;
/// the generated bindings and `reduce_input` follow.
pub const FUSED_REDUCE_WGSL: &str = concat!(
    include_str!("../../../../shaders/elementwise_ops.wgsl"),
    "\n",
    include_str!("../../../../shaders/fused.wgsl"),
    "\n",
    include_str!("../../../../shaders/fused_reduce.wgsl"),
    "\n",
    include_str!("../../../../shaders/reduce_core.wgsl"),
    "\n",
    include_str!("../../../../shaders/workgroup_tree.wgsl")
);
pub const REDUCE_WGSL: &str = concat!(
    include_str!("../../../../shaders/reduce.wgsl"),
    "\n",
    include_str!("../../../../shaders/reduce_core.wgsl"),
    "\n",
    include_str!("../../../../shaders/workgroup_tree.wgsl")
);
pub const MATMUL_WGSL: &str = include_str!("../../../../shaders/matmul.wgsl");
pub const MOVEMENT_WGSL: &str = include_str!("../../../../shaders/movement.wgsl");
pub const CONV_WGSL: &str = concat!(
    include_str!("../../../../shaders/conv.wgsl"),
    "\n",
    include_str!("../../../../shaders/workgroup_tree.wgsl")
);
pub const POOL_WGSL: &str = include_str!("../../../../shaders/pool.wgsl");
pub const GATHER_WGSL: &str = include_str!("../../../../shaders/gather.wgsl");
pub const SOFTMAX_WGSL: &str = include_str!("../../../../shaders/softmax.wgsl");
/// The f64 probe (each f64 operation the f64 kernels use, alone); f64 prelude only.
pub const PROBE_F64_WGSL: &str = include_str!("../../../../shaders/probe_f64.wgsl");

/// The WGSL module of a kernel file for an element type: its scalar prelude, then the file.
/// (naga's and wgpu's line numbers count the prelude's lines first.)
pub fn compose(prelude: &str, source: &str) -> String {
    format!("{prelude}\n{source}")
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

#[cfg(test)]
mod tests {
    use super::*;

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
            crate::exec::gpu::fusion::VIEW_WORDS / 4
        )));
    }
}
