//! The pipeline cache: each kernel compiled once (with the executor's scalar prelude) into a
//! pipeline with an explicit bind group layout, cached by name; fused kernels by the hash of
//! their generated text, batched kernels by name and instances.

use super::{
    compose, FusedParams, FusedReduceParams, KernelSpec, Slot, FUSED_REDUCE_WGSL, FUSED_WGSL,
};
use std::collections::HashMap;

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
    /// buffers (see src/exec/gpu/fusion/): an elementwise map (`reduce` false, entry point
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
                let (code, storage) =
                    crate::exec::gpu::batch::instanced(&code, instances, entry, params)
                        .map_err(|e| format!("{e}\ngenerated source:\n{source}"))?;
                let bindings = crate::exec::gpu::batch::layout(
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
                crate::exec::gpu::batch::instanced(&code, instances, spec.entry, params_bytes)
                    .map_err(|e| format!("batching kernel '{}': {e}", spec.name))?;
            let bindings =
                crate::exec::gpu::batch::layout(spec.bindings, Slot::Params, &storage, instances);
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
