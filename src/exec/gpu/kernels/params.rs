//! The parameter blocks of the kernels: `#[repr(C)]` mirrors of the params structs each
//! shaders/*.wgsl header documents, field for field, with tests that their sizes are what
//! naga lays out for the WGSL structs.

use super::MAX_RANK;
use bytemuck::{Pod, Zeroable};

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
    pub words: [u32; crate::exec::gpu::fusion::VIEW_WORDS],
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::gpu::kernels::{
        compose, CONV_WGSL, ELEMENTWISE_WGSL, FUSED_REDUCE_WGSL, FUSED_WGSL, GATHER_WGSL,
        MATMUL_WGSL, MOVEMENT_WGSL, POOL_WGSL, PROBE_F64_WGSL, REDUCE_WGSL, SCALAR_F32_WGSL,
        SCALAR_F64_WGSL, SOFTMAX_WGSL,
    };

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
}
