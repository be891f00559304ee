//! Opening the GPU executor: the wgpu instance and adapter, the device with its limits and
//! features, the f64 self-test ([`super::probe`]) and the settings a caller may change
//! (fusion, batching, workgroup and submission sizes, profiling).

use super::kernels::{
    self, PipelineCache, ProbeParams, MAX_RANK, REDUCE_SPLIT_MIN, REDUCE_WORKGROUP_MIN,
    WORKGROUP_SIZE,
};
use super::probe::Probe;
use super::run::{ParamsArena, RunTiming, ENCODE_THREADS_MAX, SUBMIT_EVERY};
use super::{batch, GpuExecutor, GpuScalar, SELF_TEST_RANDOM};
use crate::exec::{ExecError, Executor};
use crate::graph::{Graph, Node};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

/// The variable that restricts wgpu to some backends (read by wgpu itself, checked here).
pub const BACKEND_VAR: &str = "WGPU_BACKEND";

/// The values [`BACKEND_VAR`] may list (comma-separated), as wgpu reads them, with aliases.
const BACKEND_NAMES: &str = "vulkan (or vk), dx12 (or d3d12), metal (or mtl), gl (or opengl, \
                             gles), webgpu, noop";

/// The backends a `WGPU_BACKEND` value names, or an error naming the variable, the value, the
/// unknown entry and the allowed values (wgpu itself skips unknown names with a log line and
/// then finds no adapter, reported as `Backends(0x0)`).
pub fn parse_backends(value: &str) -> Result<wgpu::Backends, ExecError> {
    let mut backends = wgpu::Backends::empty();
    let bad = |why: String| {
        ExecError::Gpu(format!(
            "{BACKEND_VAR}={value:?}: {why} (allowed, comma-separated: {BACKEND_NAMES})"
        ))
    };
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        backends |= match name.to_lowercase().as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "metal" | "mtl" => wgpu::Backends::METAL,
            "opengl" | "gles" | "gl" => wgpu::Backends::GL,
            "webgpu" => wgpu::Backends::BROWSER_WEBGPU,
            "noop" => wgpu::Backends::NOOP,
            _ => return Err(bad(format!("unknown backend '{name}'"))),
        };
    }
    if backends.is_empty() {
        return Err(bad("names no backend".into()));
    }
    Ok(backends)
}

/// The wgpu instance for the backends `WGPU_BACKEND` names (every backend wgpu was built with
/// when unset), and those backends. Errors: a `WGPU_BACKEND` that names an unknown backend
/// ([`parse_backends`]) or is not UTF-8.
pub(super) fn instance() -> Result<(wgpu::Instance, wgpu::Backends), ExecError> {
    match std::env::var(BACKEND_VAR) {
        Ok(v) => {
            parse_backends(&v)?;
        }
        Err(std::env::VarError::NotPresent) => {}
        Err(std::env::VarError::NotUnicode(v)) => {
            return Err(ExecError::Gpu(format!(
                "{BACKEND_VAR}={v:?} is not UTF-8 (allowed, comma-separated: {BACKEND_NAMES})"
            )))
        }
    }
    let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    let backends = desc.backends;
    Ok((wgpu::Instance::new(desc), backends))
}

fn no_adapter(e: impl std::fmt::Display, backends: wgpu::Backends) -> ExecError {
    ExecError::Gpu(format!(
        "no adapter: {e} (backends tried: {backends:?}; a Vulkan driver such as Mesa lavapipe, \
         or EGL with Mesa llvmpipe for GL, provides one)"
    ))
}

fn has_compute(adapter: &wgpu::Adapter) -> bool {
    adapter
        .get_downlevel_capabilities()
        .flags
        .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
}

impl GpuExecutor<f32> {
    /// The f32 executor. Requests an adapter (any backend wgpu was built with, e.g. Vulkan or
    /// GL; `WGPU_BACKEND` chooses one) and a device with the adapter's best limits. Errors name
    /// what is missing: no adapter at all, or an adapter without compute shaders.
    pub fn new() -> Result<Self, ExecError> {
        let (instance, backends) = instance()?;
        let adapter =
            pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
                .map_err(|e| no_adapter(e, backends))?;
        if !has_compute(&adapter) {
            let info = adapter.get_info();
            return Err(ExecError::Gpu(format!(
                "adapter '{}' ({:?}) has no compute shaders",
                info.name, info.backend
            )));
        }
        Self::open(adapter)
    }
}

impl GpuExecutor<f64> {
    /// The f64 executor, on the adapter [`GpuExecutor::new`] picks when that one offers
    /// `SHADER_F64`, else on the first adapter of the allowed backends that does. Its device is
    /// requested with `SHADER_F64`. Before it returns, every f64 operation its kernels use is
    /// checked against the host ([`GpuExecutor::check_probes`] with [`SELF_TEST_RANDOM`]
    /// random inputs each).
    ///
    /// Errors: [`ExecError::MissingGpuFeature`] naming the adapters when none offers
    /// `SHADER_F64` (f64 is optional: callers fall back to f32 or the CPU);
    /// [`ExecError::F64SelfCheck`] when an f64 operation is wrong on this adapter (naming the
    /// probe, the input and both results; also optional: the adapter runs f32);
    /// [`ExecError::Gpu`] when there is no adapter at all or the device cannot be created.
    pub fn new_f64() -> Result<Self, ExecError> {
        let (instance, backends) = instance()?;
        let usable =
            |a: &wgpu::Adapter| has_compute(a) && a.features().contains(wgpu::Features::SHADER_F64);
        let default =
            pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()));
        let describe = |a: &wgpu::Adapter| {
            let i = a.get_info();
            format!("'{}' ({:?})", i.name, i.backend)
        };
        let adapter = match default {
            Ok(a) if usable(&a) => a,
            default => {
                let all = pollster::block_on(instance.enumerate_adapters(backends));
                let mut names: Vec<String> = all.iter().map(describe).collect();
                if let Ok(a) = &default {
                    let n = describe(a);
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
                match all.into_iter().find(usable) {
                    Some(a) => a,
                    None if names.is_empty() => {
                        let why = default.err().map(|e| e.to_string()).unwrap_or_default();
                        return Err(no_adapter(why, backends));
                    }
                    None => {
                        return Err(ExecError::MissingGpuFeature {
                            adapter: names.join(", "),
                            feature: "SHADER_F64".into(),
                            needed_for: "the f64 GPU kernels".into(),
                        })
                    }
                }
            }
        };
        let mut exec = Self::open(adapter)?;
        exec.check_probes(SELF_TEST_RANDOM, 0x5eed)?;
        Ok(exec)
    }

    /// Runs `op` of shaders/probe_f64.wgsl on the device: element i of the result is
    /// f_op(a\[i\], b\[i\]).
    pub fn probe(&mut self, op: Probe, a: &[f64], b: &[f64]) -> Result<Vec<f64>, ExecError> {
        let n = a.len();
        if b.len() != n {
            return Err(ExecError::Gpu(format!(
                "probe {op:?}: {n} first operands but {} second ones",
                b.len()
            )));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let at = format!("probe {op:?} ({})", op.wgsl());
        let (ba, bb) = (self.alloc(n, &at), self.alloc(n, &at));
        let out = self.alloc(n, &at);
        self.queue.write_buffer(&ba, 0, bytemuck::cast_slice(a));
        self.queue.write_buffer(&bb, 0, bytemuck::cast_slice(b));
        let p = ProbeParams {
            total: n as u32,
            op: op.code(),
            ..Default::default()
        };
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("darts probe"),
            });
        // One dispatch with a parameter buffer of its own, encoded and submitted at once.
        self.params.active = false;
        self.params.buffer = None;
        self.commands.clear();
        let recorded = self
            .cache
            .get(&self.device, &kernels::PROBE_F64)
            .map_err(|e| ExecError::Gpu(format!("{at}: {e}")))
            .cloned()
            .and_then(|compiled| {
                self.dispatch_compiled(
                    &compiled,
                    kernels::PROBE_F64.name,
                    bytemuck::bytes_of(&p),
                    &[&ba, &bb],
                    &[&out],
                    (n as u32).div_ceil(WORKGROUP_SIZE),
                    &at,
                )
            });
        let commands = std::mem::take(&mut self.commands);
        if recorded.is_ok() {
            Self::encode(&mut encoder, &commands, None);
            self.queue.submit([encoder.finish()]);
        }
        let result = recorded.and_then(|_| self.read_back(&out, n, &at));
        if let Some(e) = pollster::block_on(validation.pop()) {
            return Err(ExecError::Gpu(format!("{at}: {e}")));
        }
        for buf in [ba, bb, out] {
            self.release(buf);
        }
        self.take_uncaptured()?;
        result
    }

    /// Runs every [`Probe`] on its edge cases and `n_random` seeded random inputs
    /// ([`Probe::inputs`]) and returns the worst |device - host| / bound of each; errors with
    /// [`ExecError::F64SelfCheck`] for the first input whose result is outside its bound,
    /// naming the adapter, the operation, the input and both results.
    ///
    /// Test-only: with [`FORCE_REFUSE_VAR`](super::probe::FORCE_REFUSE_VAR) set, the device's
    /// first result of the probe it names is replaced by a wrong one, so the refusal path can
    /// be tested on an adapter that passes ([`super::probe::forced_refusal`]).
    pub fn check_probes(
        &mut self,
        n_random: usize,
        seed: u64,
    ) -> Result<Vec<(Probe, f64)>, ExecError> {
        let forced = super::probe::forced_refusal()?;
        let mut worst = Vec::with_capacity(Probe::ALL.len());
        for op in Probe::ALL {
            let inputs = op.inputs(n_random, seed);
            let (a, b): (Vec<f64>, Vec<f64>) = inputs.iter().copied().unzip();
            let mut got = self.probe(op, &a, &b)?;
            let forced_here = forced == Some(op) && !got.is_empty();
            if forced_here {
                got[0] = if got[0].is_nan() { 0.0 } else { f64::NAN };
            }
            let mut w = 0.0f64;
            for (k, &g) in got.iter().enumerate() {
                let r = op.error_ratio(a[k], b[k], g);
                if r > 1.0 {
                    let want = op.reference(a[k], b[k]);
                    let note = if forced_here && k == 0 {
                        format!(" (forced by {}; test-only)", super::probe::FORCE_REFUSE_VAR)
                    } else {
                        String::new()
                    };
                    return Err(ExecError::F64SelfCheck {
                        adapter: self.adapter_info(),
                        probe: op,
                        failure: format!(
                            "{} ({}) is wrong for a = {:e}, b = {:e}: device {g:e}, host \
                             {want:e}, allowed difference {:e}{note}",
                            op.wgsl(),
                            op.domain(),
                            a[k],
                            b[k],
                            op.bound(want)
                        ),
                    });
                }
                w = w.max(r);
            }
            worst.push((op, w));
        }
        Ok(worst)
    }
}

/// One line on f64 GPU support, for reports: whether an adapter offers `SHADER_F64` and its
/// f64 operations pass their probes (it creates, then drops, the f64 executor).
pub fn f64_support() -> String {
    match GpuExecutor::new_f64() {
        Ok(e) => format!(
            "f64 kernels: available on {} (its {} f64 operations match the host)",
            e.adapter_info(),
            Probe::ALL.len()
        ),
        Err(e) => format!("f64 kernels: none ({e})"),
    }
}

impl<T: GpuScalar> GpuExecutor<T> {
    /// A device on `adapter` with its best limits and `T::FEATURES`.
    pub(super) fn open(adapter: wgpu::Adapter) -> Result<Self, ExecError> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        // Timestamps between dispatches (for `set_profile`), where the adapter has them.
        let timestamps = wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        let timestamps = adapter
            .features()
            .contains(timestamps)
            .then_some(timestamps);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("darts"),
            required_features: T::FEATURES | timestamps.unwrap_or(wgpu::Features::empty()),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| {
            ExecError::Gpu(format!(
                "adapter '{}' ({:?}) gave no device with features {:?}: {e}",
                info.name,
                info.backend,
                T::FEATURES
            ))
        })?;
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let max_workgroups_per_dim = limits.max_compute_workgroups_per_dimension;
        let timestamp_period = timestamps.map(|_| queue.get_timestamp_period() as f64);
        Ok(GpuExecutor {
            adapter,
            device,
            queue,
            limits,
            cache: PipelineCache::new(T::PRELUDE),
            pool: HashMap::new(),
            max_workgroups_per_dim,
            workgroup_min: REDUCE_WORKGROUP_MIN,
            // A CPU adapter (llvmpipe, lavapipe) runs workgroups on a few cores: splitting a
            // reduction only adds a dispatch there.
            split_min: if info.device_type == wgpu::DeviceType::Cpu {
                u32::MAX
            } else {
                REDUCE_SPLIT_MIN
            },
            fusion: true,
            // A CPU adapter (lavapipe, llvmpipe) is bound by arithmetic, not dispatches, and
            // its LLVM compiles instanced modules slowly and into slower code
            // (benches/results/gpu-design-measurements.md): batching is for GPUs.
            batching: info.device_type != wgpu::DeviceType::Cpu,
            pending: None,
            // LLVM (lavapipe, llvmpipe) optimises modules of many instances of a kernel with
            // loops (the single-op elementwise kernels' broadcast offsets) very slowly.
            max_instances: if info.device_type == wgpu::DeviceType::Cpu {
                batch::MAX_INSTANCES_CPU
            } else {
                batch::MAX_INSTANCES
            },
            plan_cache: None,
            submit_every: SUBMIT_EVERY,
            timestamp_period,
            profile: false,
            encode_threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(ENCODE_THREADS_MAX),
            fresh_buffers: 0,
            uncaptured,
            vars: HashMap::new(),
            next_serial: 0,
            tapes: Vec::new(),
            commands: Vec::new(),
            params: ParamsArena::default(),
            scope_each: false,
            timing: RunTiming::default(),
            elem: PhantomData,
        })
    }

    /// The adapter in words: name, backend, device type and driver.
    pub fn adapter_info(&self) -> String {
        let i = self.adapter.get_info();
        let driver: Vec<&str> = [i.driver.trim(), i.driver_info.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        format!(
            "{} ({:?}, {:?}, driver {})",
            i.name,
            i.backend,
            i.device_type,
            driver.join(" ")
        )
    }

    /// Whether the adapter offers `SHADER_F64` (f64 in WGSL), the feature
    /// [`GpuExecutor::new_f64`] needs.
    pub fn supports_f64(&self) -> bool {
        self.adapter.features().contains(wgpu::Features::SHADER_F64)
    }

    /// Caps the workgroups per dispatch dimension below the device limit (at least 1), so
    /// small tensors exercise the 2-D dispatch that large ones need. For tests.
    pub fn set_max_workgroups_per_dim(&mut self, n: u32) {
        self.max_workgroups_per_dim = n.clamp(1, self.limits.max_compute_workgroups_per_dimension);
        self.forget_tapes();
    }

    /// Sums (ReduceSum, ReduceMax, the conv weight gradient) of at least `n` terms per output
    /// element use one workgroup per element from now on, shorter ones one invocation per
    /// element (default [`REDUCE_WORKGROUP_MIN`]; tests set 1 or `u32::MAX` to run each kernel
    /// on every shape). Results agree within the same error bound either way.
    pub fn set_workgroup_min(&mut self, n: u32) {
        self.workgroup_min = n.max(1);
        self.forget_tapes();
    }

    /// Reductions (ReduceSum, ReduceMax, fused or not) of at most [`REDUCE_SPLIT_MAX_OUT`](kernels::REDUCE_SPLIT_MAX_OUT)
    /// outputs with at least `n` terms per output run split from now on: `SPLIT` workgroups
    /// per output each sum one chunk, and a second dispatch sums the chunks
    /// (shaders/reduce_core.wgsl); so do conv weight gradients of at least `n` terms per
    /// element, where chunks of at least `WORKGROUP_SIZE` terms bring the workgroups towards
    /// [`kernels::WEIGHT_GRAD_SPLIT_WORKGROUPS`] (shaders/conv.wgsl). Default [`REDUCE_SPLIT_MIN`] on a
    /// GPU, `u32::MAX` (never) on a CPU adapter, whose few cores gain nothing from it; tests
    /// set 1 to split everything that can be. Results agree within the same error bound
    /// either way (maxima exactly).
    pub fn set_split_min(&mut self, n: u32) {
        self.split_min = n.max(1);
        self.forget_tapes();
    }

    /// Whether chains of elementwise nodes run as one generated kernel ([`fusion`](super::fusion); on by
    /// default). Off, every node is its own dispatch of the single-op kernels.
    pub fn set_fusion(&mut self, on: bool) {
        self.fusion = on;
    }

    /// At most `n` instances per batched dispatch (at least 1; 1 batches nothing). Results do
    /// not depend on it.
    pub fn set_max_instances(&mut self, n: usize) {
        let n = n.clamp(1, batch::MAX_INSTANCES);
        if self.max_instances != n {
            self.max_instances = n;
            self.forget_tapes();
        }
    }

    /// Whether a run's dispatches are recorded level by level with a level's kernels of one
    /// text batched into one dispatch ([`batch`], [`fusion::schedule`](super::fusion::schedule); on by default on a
    /// GPU, off on a CPU adapter, which gains nothing from it). Off, they are recorded in
    /// graph order, one dispatch each. Results do not depend on it
    /// (each instance runs the single kernel's code on its own buffers).
    pub fn set_batching(&mut self, on: bool) {
        if self.batching != on {
            self.batching = on;
            self.forget_tapes();
        }
    }

    /// Submit a run's commands every `n` dispatches (at least 1; default [`SUBMIT_EVERY`]).
    /// Results do not depend on it: the same kernels run in the same order.
    pub fn set_submit_every(&mut self, n: usize) {
        self.submit_every = n.max(1);
    }

    /// Time every dispatch on the device from now on (timestamps written between dispatches;
    /// [`RunTiming::profile`] then sums them by kernel). Returns whether the adapter can
    /// (it needs `TIMESTAMP_QUERY_INSIDE_PASSES`); results do not depend on it.
    pub fn set_profile(&mut self, on: bool) -> bool {
        self.profile = on && self.timestamp_period.is_some();
        self.profile == on
    }

    /// Encode a run's command buffers on up to `n` threads (at least 1; default: the host's
    /// cores, at most [`ENCODE_THREADS_MAX`]). Results do not depend on it.
    pub fn set_encode_threads(&mut self, n: usize) {
        self.encode_threads = n.max(1);
    }

    /// Where the time of the last successful run went, and how many dispatches it made.
    pub fn run_timing(&self) -> RunTiming {
        self.timing.clone()
    }

    /// Fused kernels compiled so far (distinct generated sources).
    pub fn fused_kernels(&self) -> usize {
        self.cache.fused_count()
    }

    /// Refuses, before any work, a graph with a tensor of more than [`MAX_RANK`] axes, or one
    /// larger than the adapter's storage binding limit. (Every primitive has a kernel.)
    pub(super) fn check_supported(&self, graph: &Graph, needed: &[bool]) -> Result<(), ExecError> {
        let unsupported = |node: &Node, why: String| ExecError::Unsupported {
            backend: self.name(),
            op: format!("{}{why}", node.op.name()),
            label: node.label.clone(),
        };
        for (i, node) in graph.nodes().iter().enumerate() {
            if !needed[i] {
                continue;
            }
            let ranks = std::iter::once(node.shape.rank())
                .chain(node.inputs.iter().map(|j| graph.shape(*j).rank()));
            if let Some(r) = ranks.into_iter().find(|&r| r > MAX_RANK) {
                return Err(unsupported(
                    node,
                    format!(" on a rank-{r} tensor (the GPU kernels take at most {MAX_RANK} axes)"),
                ));
            }
            let bytes = node.shape.numel() as u64 * Self::ELEM;
            let limit = self
                .limits
                .max_storage_buffer_binding_size
                .min(self.limits.max_buffer_size);
            if node.shape.numel() > u32::MAX as usize || bytes > limit {
                return Err(ExecError::Gpu(format!(
                    "node %{i} ({} at '{}'): its {} output ({bytes} bytes) exceeds the storage \
                     buffer limit of {limit} bytes on adapter '{}'",
                    node.op.name(),
                    node.label,
                    node.shape,
                    self.adapter.get_info().name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wgpu_backend_values() {
        assert_eq!(parse_backends("vulkan").unwrap(), wgpu::Backends::VULKAN);
        assert_eq!(
            parse_backends(" GL, vk ").unwrap(),
            wgpu::Backends::GL | wgpu::Backends::VULKAN
        );
        let e = parse_backends("vulcan").unwrap_err().to_string();
        assert_eq!(
            e,
            "GPU: WGPU_BACKEND=\"vulcan\": unknown backend 'vulcan' (allowed, comma-separated: \
             vulkan (or vk), dx12 (or d3d12), metal (or mtl), gl (or opengl, gles), webgpu, noop)"
        );
        let e = parse_backends(" , ").unwrap_err().to_string();
        assert!(
            e.contains("names no backend") && e.contains("WGPU_BACKEND"),
            "{e}"
        );
    }
}
