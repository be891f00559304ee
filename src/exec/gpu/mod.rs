//! The wgpu executor: runs a [`Graph`] with the WGSL kernels in `shaders/`, in f32
//! ([`GpuExecutor::new`]) or, where the adapter offers `SHADER_F64`, in f64
//! ([`GpuExecutor::new_f64`]).
//!
//! **Element types.** Each kernel file is written once in the element type `S`; the module
//! compiled is the scalar prelude of the element type (shaders/scalar_f32.wgsl or
//! scalar_f64.wgsl, [`GpuScalar::PRELUDE`]) followed by the file. The f32 prelude maps exp,
//! log, ... to the WGSL builtins. The f64 prelude calls no f64 transcendental builtin (SPIR-V
//! defines them for 32-bit floats only, and drivers return garbage for some): it builds exp,
//! expm1, log1p, log and tanh from + - * / with the bounds derived in proofs/gpu-f64-math.md.
//! Every f64 operation the f64 kernels use is checked against the host when the f64 executor
//! is created ([`probe`]); an adapter that fails is refused.
//!
//! It runs the same graphs as [`crate::exec::cpu::CpuExecutor`]: every primitive of
//! [`Op`] has a kernel (shaders/elementwise.wgsl, reduce.wgsl, matmul.wgsl, movement.wgsl,
//! conv.wgsl, pool.wgsl, gather.wgsl, softmax.wgsl). A graph with a tensor of more than
//! [`MAX_RANK`] axes is refused before any work with [`ExecError::Unsupported`] naming the op
//! and its node. Gather and ScatterAdd indices that are an Input or a Const are checked on
//! the host before any work ([`ExecError::IndexOutOfRange`], as the CPU executor); backward
//! kernels are gathers, never atomics, so a run repeats bit for bit.
//!
//! Between runs, variables (weights, alphas, optimiser state: [`Executor::set_var`],
//! [`Executor::run_assign`]) stay on the device, so a search step uploads only its batches and
//! a few scalars and reads back only losses and logits.
//!
//! Within a run, values stay on the device: inputs are uploaded once, the kernels are submitted
//! in chunks of [`SUBMIT_EVERY`] dispatches, and only the requested outputs are copied to
//! MAP_READ staging buffers and read back. A node's buffer goes back to a size-keyed pool right
//! after its last reader ([`crate::exec::liveness`]); a reshape aliases its input's buffer.
//! Pipelines and bind group layouts are created once per kernel and cached by name
//! ([`kernels::PipelineCache`]). A run is recorded once into a [`tape`] (bind groups,
//! parameters, grids) and replayed while the same graph runs again with inputs from the same
//! places, so a search step after the first only writes its batches and encodes. Dispatches
//! are recorded level by level of the dependency graph, and a level's kernels of one text
//! (fused kernels of one generated text, single-op kernels of one op) run as one batched
//! dispatch ([`batch`], [`fusion::schedule`]; on a GPU, not on a CPU adapter). Assigned
//! values are copied on the device into the variables' own buffers once the run succeeded.
//! wgpu validation errors are caught in error scopes and returned as [`ExecError::Gpu`] naming
//! the kernel and the node.

pub mod batch;
pub mod fusion;
pub mod kernels;
pub mod probe;
pub mod tape;

use super::{check_assign, check_feed, liveness, ExecError, Executor, Feeds, Scalar};
use crate::graph::{BinaryOp, Graph, Node, NodeId, Op, UnaryOp};
use kernels::{
    EwParams, GatherParams, KernelSpec, MatmulParams, MoveParams, PipelineCache, ProbeParams,
    ReduceParams, Slot, SoftmaxParams, MATMUL_TILE, MAX_RANK, REDUCE_SPLIT_MAX_OUT,
    REDUCE_SPLIT_MIN, REDUCE_WORKGROUP_MIN, WORKGROUP_SIZE,
};
use ndarray::{ArrayD, IxDyn};
use probe::Probe;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// Pooled buffers kept per byte size. A buffer is created only when none of its size is free,
/// so the buffers of one size never outnumber the most that were alive at once (in any run):
/// the pool holds at most the working set of the runs so far, and a repeated run (a search
/// step) creates none. (A cap of 8 made a third of a step's allocations fresh buffers.)
const POOL_PER_SIZE: usize = 1024;

/// Element types the GPU executor runs in: f32 on every adapter, f64 where the adapter offers
/// `SHADER_F64`.
pub trait GpuScalar: Scalar {
    /// The scalar prelude prepended to every kernel file: defines `S` and the scalar functions.
    const PRELUDE: &'static str;
    /// The device features the kernels need.
    const FEATURES: wgpu::Features;
}

impl GpuScalar for f32 {
    const PRELUDE: &'static str = kernels::SCALAR_F32_WGSL;
    const FEATURES: wgpu::Features = wgpu::Features::empty();
}

impl GpuScalar for f64 {
    const PRELUDE: &'static str = kernels::SCALAR_F64_WGSL;
    const FEATURES: wgpu::Features = wgpu::Features::SHADER_F64;
}

/// Random inputs per probe in the check [`GpuExecutor::new_f64`] runs (besides each probe's
/// edge cases).
pub const SELF_TEST_RANDOM: usize = 256;

/// The wgpu executor, in f32 (the default) or f64. See the module documentation.
pub struct GpuExecutor<T: GpuScalar = f32> {
    adapter: wgpu::Adapter,
    device: wgpu::Device,
    queue: wgpu::Queue,
    limits: wgpu::Limits,
    cache: PipelineCache,
    pool: HashMap<u64, Vec<wgpu::Buffer>>,
    max_workgroups_per_dim: u32,
    /// Sums of at least this many terms per output use a workgroup per output
    /// ([`REDUCE_WORKGROUP_MIN`] unless set).
    workgroup_min: u32,
    /// Reductions of at most [`REDUCE_SPLIT_MAX_OUT`] outputs and at least this many terms per
    /// output are split over `SPLIT` workgroups per output ([`REDUCE_SPLIT_MIN`] on a GPU,
    /// never on a CPU adapter, unless set).
    split_min: u32,
    /// Run chains of elementwise nodes as fused kernels (see [`fusion`]; on by default).
    fusion: bool,
    /// Record dispatches level by level and run a level's kernels of one text as batched
    /// dispatches (see [`batch`]; on by default on a GPU, off on a CPU adapter).
    batching: bool,
    /// While a batch of single-op kernels is recorded: the member being recorded and the
    /// dispatches held so far ([`Self::flush_pending`]).
    pending: Option<(usize, Vec<Pending>)>,
    /// Most instances per batched dispatch ([`batch::MAX_INSTANCES`] on a GPU,
    /// [`batch::MAX_INSTANCES_CPU`] on a CPU adapter, unless set).
    max_instances: usize,
    /// Dispatches per submitted command buffer ([`SUBMIT_EVERY`] unless set).
    submit_every: usize,
    /// Nanoseconds per timestamp tick, where the device writes timestamps inside passes.
    timestamp_period: Option<f64>,
    /// Time every dispatch on the device (see [`GpuExecutor::set_profile`]).
    profile: bool,
    /// Threads encoding a run's command buffers (the host's cores, at most
    /// [`ENCODE_THREADS_MAX`], unless set).
    encode_threads: usize,
    /// Buffers created since the executor was made (see [`RunTiming::fresh_buffers`]).
    fresh_buffers: usize,
    /// The liveness and fusion plan of the last graph run, reused while it is run again.
    plan_cache: Option<(PlanKey, Rc<Vec<bool>>, Rc<fusion::FusionPlan>)>,
    /// Errors wgpu reports outside any error scope (there should be none).
    uncaptured: Arc<Mutex<Vec<String>>>,
    /// Variables (see [`Executor`]): device buffers and their shapes, kept between runs.
    vars: HashMap<String, Var>,
    /// The serial the next new variable buffer gets (see [`tape::Source::Var`]).
    next_serial: u64,
    /// Recorded runs, least recently used first (see [`tape`]).
    tapes: Vec<tape::Tape>,
    /// While a tape is built: the dispatches recorded so far.
    commands: Vec<tape::Command>,
    /// Every dispatch's parameters of the tape being built, in one uniform buffer (see
    /// [`ParamsArena`]).
    params: ParamsArena,
    /// Wrap every dispatch in its own validation scope (to name the kernel of an error; set
    /// while re-running a run that failed validation).
    scope_each: bool,
    /// Where the time of the last run went (see [`RunTiming`]).
    timing: RunTiming,
    elem: PhantomData<T>,
}

/// A variable: its device buffer (made once, then written in place), shape and serial.
struct Var {
    buf: Rc<wgpu::Buffer>,
    shape: Vec<usize>,
    serial: u64,
}

/// What a run's plan depends on: the graph's nodes (`Graph::version`), the nodes kept
/// (outputs and assigned) and whether fusion is on. The adapter's limits and the element type
/// are fixed for an executor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PlanKey {
    graph: (u64, usize),
    keep: Vec<NodeId>,
    fusion: bool,
}

/// Where the wall-clock time of one run went, host side: planning (once per graph, then a
/// cache lookup), building the run's tape (once per graph and inputs: bind groups, pipeline
/// lookups, buffer pooling, parameters; see [`tape`]), uploading the feeds, encoding the
/// tape's dispatches, finishing and submitting the command buffers (one per `SUBMIT_EVERY`
/// dispatches, so the device works while the host encodes), waiting for the device to finish,
/// and copying the outputs out.
#[derive(Clone, Debug, Default)]
pub struct RunTiming {
    /// Dispatches run.
    pub dispatches: usize,
    /// Whether the run replayed a cached tape (else it built one).
    pub replayed: bool,
    /// Nodes the fusion plan saved a dispatch for (absorbed nodes and literal constants).
    pub fused_away: usize,
    /// Device buffers created (the pool had none of the size free).
    pub fresh_buffers: usize,
    /// Seconds planning the run (liveness and fusion, before any device work).
    pub plan: f64,
    /// Seconds building the tape (zero when replayed).
    pub build: f64,
    /// Seconds writing feeds into device buffers.
    pub upload: f64,
    /// Seconds encoding the tape's dispatches into compute passes and finishing the command
    /// buffers (wgpu's validation and resource tracking: the host's share per dispatch), not
    /// counting the submits; with several encoding threads, the time the submitting thread
    /// waited for the next chunk (the encoding not hidden behind submits).
    pub record: f64,
    /// Seconds of encoding and finishing, summed over the encoding threads (what encoding
    /// costs the host, hidden or not: `encode / dispatches` is the host's cost per dispatch).
    pub encode: f64,
    /// Seconds in the driver's submits (where a submit waits for the device, as lavapipe's
    /// does, also device time).
    pub submit: f64,
    /// Seconds waiting, after the last submit, for the device (the kernels) to finish.
    pub wait: f64,
    /// Seconds mapping and copying the requested outputs.
    pub readback: f64,
    /// With [`GpuExecutor::set_profile`]: device seconds by kernel (name, dispatches, seconds,
    /// largest first), each dispatch timed from the timestamp after the previous dispatch of
    /// its pass to the one after it (so a dispatch's share includes the barrier before it).
    pub profile: Vec<(&'static str, usize, f64)>,
}

impl std::fmt::Display for RunTiming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per = |s: f64| 1e6 * s / self.dispatches.max(1) as f64;
        write!(
            f,
            "{} dispatches ({} nodes fused away, {} fresh buffers, {}): plan {:.3} s, build \
             {:.3} s, upload {:.3} s, record {:.3} s ({:.1} us/dispatch), submit {:.3} s ({:.1} \
             us/dispatch; encoding {:.1} us/dispatch over all threads), wait {:.3} s, readback \
             {:.3} s",
            self.dispatches,
            self.fused_away,
            self.fresh_buffers,
            if self.replayed {
                "replayed"
            } else {
                "recorded"
            },
            self.plan,
            self.build,
            self.upload,
            self.record,
            per(self.record),
            self.submit,
            per(self.submit),
            per(self.encode),
            self.wait,
            self.readback
        )?;
        if !self.profile.is_empty() {
            let total: f64 = self.profile.iter().map(|p| p.2).sum();
            write!(f, "; device {:.3} ms by kernel:", 1e3 * total)?;
            for (k, (name, n, s)) in self.profile.iter().enumerate() {
                write!(
                    f,
                    "{} {name} {n} x {:.1} us = {:.3} ms ({:.0}%)",
                    if k == 0 { "" } else { "," },
                    1e6 * s / (*n).max(1) as f64,
                    1e3 * s,
                    100.0 * s / total.max(1e-300)
                )?;
            }
        }
        Ok(())
    }
}

/// The parameters of every dispatch of a tape, packed at the device's uniform-offset
/// alignment into one buffer written once when the tape is built (instead of a buffer per
/// dispatch: creating those dominated the time of a run of a large graph on a real GPU). The
/// buffer then belongs to the tape.
#[derive(Default)]
struct ParamsArena {
    buffer: Option<wgpu::Buffer>,
    /// Host copy of the tape's parameters, written into `buffer` when the tape is complete.
    staging: Vec<u8>,
    /// Whether this tape uses the arena (false: one buffer per dispatch, when the tape would
    /// need more than the device's largest buffer).
    active: bool,
    /// Dispatches recorded in this tape.
    dispatches: usize,
}

/// Dispatches per submitted command buffer within a run (the default of
/// `GpuExecutor::set_submit_every`): the device starts on a chunk while the host records the
/// next one (one submit per run would leave the device idle while all of a large graph's
/// dispatches are recorded).
pub const SUBMIT_EVERY: usize = 2048;

/// A chunk of a run encoded and finished: its command buffer, the validation error of its
/// encoding thread, the seconds it took, and (when profiling) the buffer its timestamps are
/// copied to.
type Built = (
    wgpu::CommandBuffer,
    Option<wgpu::Error>,
    f64,
    Option<wgpu::Buffer>,
);

/// What encoding and submitting a run gives: seconds in submits, seconds of encoding (summed
/// over the threads), and the timestamp buffers of the chunks in order (when profiling).
type Submitted = (f64, f64, Vec<wgpu::Buffer>);

/// Most threads encoding one run's command buffers by default (see
/// `GpuExecutor::set_encode_threads`).
pub const ENCODE_THREADS_MAX: usize = 8;

/// The largest parameter block of any kernel (`FusedReduceParams`), in bytes.
const MAX_PARAMS_BYTES: u64 = 512;

/// Where a kernel runs, for error messages: "kernel 'k' for node %i (op at 'label')", or
/// "fused kernel of n ops for node %i (op at 'label')". Formatted only when a message needs
/// it (a run records a dispatch every few microseconds); a held dispatch keeps its
/// [`HeldSite`] and borrows the node back from the graph when its batch is dispatched.
#[derive(Clone, Copy)]
struct Site<'a> {
    kernel: &'static str,
    /// Operations of a fused kernel.
    fused_ops: Option<usize>,
    id: usize,
    node: &'a Node,
    /// Which of the node's dispatches, where it has several.
    part: Part,
}

/// Which of a node's dispatches a [`Site`] is, where a node has several.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    /// The node's own kernel.
    Whole,
    /// The copy of input `k` of a concatenation into its place.
    ConcatInput(usize),
    /// The copy of an assigned variable's value.
    Assignment,
}

impl<'a> Site<'a> {
    fn held(&self) -> HeldSite {
        HeldSite {
            kernel: self.kernel,
            fused_ops: self.fused_ops,
            id: self.id,
            part: self.part,
        }
    }
}

impl std::fmt::Display for Site<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.fused_ops {
            Some(n) => write!(f, "fused kernel of {n} ops")?,
            None => write!(f, "kernel '{}'", self.kernel)?,
        }
        write!(
            f,
            " for node %{} ({} at '{}')",
            self.id,
            self.node.op.name(),
            self.node.label
        )?;
        match self.part {
            Part::Whole => Ok(()),
            Part::ConcatInput(k) => write!(f, ", input {k}"),
            Part::Assignment => write!(f, ", copied for assignment"),
        }
    }
}

/// A [`Site`] without its node (a held dispatch outlives the borrow of the graph's node).
#[derive(Clone, Copy)]
struct HeldSite {
    kernel: &'static str,
    fused_ops: Option<usize>,
    id: usize,
    part: Part,
}

impl HeldSite {
    fn at<'a>(&self, graph: &'a Graph) -> Site<'a> {
        Site {
            kernel: self.kernel,
            fused_ops: self.fused_ops,
            id: self.id,
            node: &graph.nodes()[self.id],
            part: self.part,
        }
    }
}

/// The kernel of a held dispatch: a single-op kernel, or an entry point of a fused kernel.
#[derive(Clone)]
enum Kernel {
    Spec(&'static KernelSpec),
    Fused {
        source: Rc<str>,
        hash: u64,
        leaves: usize,
        reduce: bool,
        entry: &'static str,
    },
}

impl Kernel {
    /// Whether `self` and `other` are the same kernel (a batch shares its fused text).
    fn same(&self, other: &Kernel) -> bool {
        match (self, other) {
            (Kernel::Spec(a), Kernel::Spec(b)) => a.name == b.name,
            (Kernel::Fused { entry: a, .. }, Kernel::Fused { entry: b, .. }) => a == b,
            _ => false,
        }
    }
}

/// A dispatch held while the other members of its batch are recorded.
struct Pending {
    /// The batch member (index into the batch) that recorded it.
    member: usize,
    kernel: Kernel,
    params: Vec<u8>,
    reads: Vec<wgpu::Buffer>,
    write: wgpu::Buffer,
    groups: u32,
    /// Where it comes from, for errors.
    at: HeldSite,
}

/// The parameters of a dispatch's instances, each padded to [`batch::params_stride`] (one
/// instance: as they are).
fn batch_params<'a>(each: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
    if each.len() == 1 {
        return each.flat_map(|p| p.iter().copied()).collect();
    }
    let mut out = Vec::new();
    for p in each {
        out.extend_from_slice(p);
        out.resize(out.len().next_multiple_of(16), 0);
    }
    out
}

/// What a fused kernel's dispatch needs: its parameters (`FusedParams` or
/// `FusedReduceParams`), its stages (entry point and workgroups: one, or the two of a split
/// reduction) and the elements of its output buffer (partial results included).
struct FusedSetup {
    params: Vec<u8>,
    stages: Vec<(&'static str, u32)>,
    out_numel: usize,
}

/// A fused kernel's name in profiles.
fn fused_kind(reduce: bool, entry: &str, batched: bool) -> &'static str {
    let split = entry.ends_with("_split");
    let finish = entry.ends_with("_finish");
    match (reduce, split, finish, batched) {
        (false, _, _, false) => "fused map",
        (false, _, _, true) => "fused map (batched)",
        (true, true, _, false) => "fused reduction (split)",
        (true, true, _, true) => "fused reduction (split, batched)",
        (true, _, true, false) => "fused reduction (finish)",
        (true, _, true, true) => "fused reduction (finish, batched)",
        (true, _, _, false) => "fused reduction",
        (true, _, _, true) => "fused reduction (batched)",
    }
}

fn site<'a>(spec: &KernelSpec, id: usize, node: &'a Node) -> Site<'a> {
    Site {
        kernel: spec.name,
        fused_ops: None,
        id,
        node,
        part: Part::Whole,
    }
}

/// A buffer's label: "%i op at 'label'", formatted only when a fresh buffer is created.
struct BufferLabel<'a> {
    id: usize,
    node: &'a Node,
}

impl std::fmt::Display for BufferLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "%{} {} at '{}'",
            self.id,
            self.node.op.name(),
            self.node.label
        )
    }
}

/// The wgpu instance for the backends `WGPU_BACKEND` names (every backend wgpu was built with
/// when unset), and those backends.
fn instance() -> (wgpu::Instance, wgpu::Backends) {
    let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    let backends = desc.backends;
    (wgpu::Instance::new(desc), backends)
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
        let (instance, backends) = instance();
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
    /// `SHADER_F64` (f64 is optional: callers fall back to f32 or the CPU); [`ExecError::Gpu`]
    /// when there is no adapter at all, when the device cannot be created, or when an f64
    /// operation is wrong on this adapter (naming the operation, the input and both results).
    pub fn new_f64() -> Result<Self, ExecError> {
        let (instance, backends) = instance();
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
    /// f_op(a[i], b[i]).
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
    /// the first input whose result is outside its bound, naming the adapter, the operation,
    /// the input and both results.
    pub fn check_probes(
        &mut self,
        n_random: usize,
        seed: u64,
    ) -> Result<Vec<(Probe, f64)>, ExecError> {
        let mut worst = Vec::with_capacity(Probe::ALL.len());
        for op in Probe::ALL {
            let inputs = op.inputs(n_random, seed);
            let (a, b): (Vec<f64>, Vec<f64>) = inputs.iter().copied().unzip();
            let got = self.probe(op, &a, &b)?;
            let mut w = 0.0f64;
            for (k, &g) in got.iter().enumerate() {
                let r = op.error_ratio(a[k], b[k], g);
                if r > 1.0 {
                    let want = op.reference(a[k], b[k]);
                    return Err(ExecError::Gpu(format!(
                        "adapter {}: the f64 operation {} ({}) is wrong for a = {:e}, b = {:e}: \
                         device {g:e}, host {want:e}, allowed difference {:e}; the f64 kernels \
                         rely on it, so this adapter runs f32 only",
                        self.adapter_info(),
                        op.wgsl(),
                        op.domain(),
                        a[k],
                        b[k],
                        op.bound(want)
                    )));
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
    /// Bytes per element.
    const ELEM: u64 = std::mem::size_of::<T>() as u64;

    /// A device on `adapter` with its best limits and `T::FEATURES`.
    fn open(adapter: wgpu::Adapter) -> Result<Self, ExecError> {
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
            // its LLVM compiles instanced modules slowly and into slower code (the tiny
            // lavapipe step took 6.8 s batched, 3.5 s not): batching is for GPUs.
            batching: info.device_type != wgpu::DeviceType::Cpu,
            pending: None,
            // LLVM (lavapipe, llvmpipe) optimises a module of 8 instances of a kernel with
            // loops (the single-op elementwise kernels' broadcast offsets) for minutes.
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

    /// Reductions (ReduceSum, ReduceMax, fused or not) of at most [`REDUCE_SPLIT_MAX_OUT`]
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

    /// Whether a reduction with `p`'s extents runs split (see [`Self::set_split_min`]): long
    /// enough, few enough outputs, and its `total_out * SPLIT` workgroups fit the grid.
    fn split(&self, p: &ReduceParams) -> bool {
        self.splits(p.total_out as usize, p.n_red as usize)
    }

    /// The dispatches of a reduction with `p`'s extents (a maximum if `max`), as the kernels of
    /// shaders/reduce_core.wgsl (plain or fused): one invocation or one workgroup per output,
    /// or split (a chunk pass, then a finishing pass, whose partial sums follow the outputs in
    /// the output's buffer). Returns each dispatch's kernel and workgroups, and the elements
    /// of the output's buffer.
    fn reduce_stages(
        &self,
        p: &ReduceParams,
        max: bool,
    ) -> (Vec<(&'static KernelSpec, u32)>, usize) {
        use kernels::{
            REDUCE_MAX_FINISH, REDUCE_MAX_SERIAL, REDUCE_MAX_SPLIT, REDUCE_MAX_WORKGROUP,
            REDUCE_SUM_FINISH, REDUCE_SUM_SERIAL, REDUCE_SUM_SPLIT, REDUCE_SUM_WORKGROUP,
        };
        let pick = |sum, maximum| if max { maximum } else { sum };
        let out = p.total_out as usize;
        if self.split(p) {
            let stages = vec![
                (
                    pick(&REDUCE_SUM_SPLIT, &REDUCE_MAX_SPLIT),
                    p.total_out * WORKGROUP_SIZE,
                ),
                (pick(&REDUCE_SUM_FINISH, &REDUCE_MAX_FINISH), p.total_out),
            ];
            (stages, out * (1 + WORKGROUP_SIZE as usize))
        } else if p.n_red >= self.workgroup_min {
            let spec = pick(&REDUCE_SUM_WORKGROUP, &REDUCE_MAX_WORKGROUP);
            (vec![(spec, p.total_out)], out)
        } else {
            let spec = pick(&REDUCE_SUM_SERIAL, &REDUCE_MAX_SERIAL);
            (vec![(spec, p.total_out.div_ceil(WORKGROUP_SIZE))], out)
        }
    }

    /// Whether a reduction of `n_red` terms to each of `total_out` outputs runs split.
    fn splits(&self, total_out: usize, n_red: usize) -> bool {
        let l = self.max_workgroups_per_dim as usize;
        n_red >= self.split_min as usize
            && total_out <= REDUCE_SPLIT_MAX_OUT as usize
            && total_out > 0
            && total_out * WORKGROUP_SIZE as usize <= l * l
    }

    /// Chunks per element of a weight gradient of `total` elements with `terms` terms each:
    /// more than 1 when it runs split (see [`Self::set_split_min`]): enough chunks of at least
    /// `WORKGROUP_SIZE` terms to bring the workgroups to about
    /// [`WEIGHT_GRAD_SPLIT_WORKGROUPS`], at most `WORKGROUP_SIZE`, within the grid.
    fn weight_grad_chunks(&self, total: usize, terms: usize) -> u32 {
        kernels::weight_grad_chunks(total, terms, self.split_min, self.max_workgroups_per_dim)
    }

    /// Whether chains of elementwise nodes run as one generated kernel ([`fusion`]; on by
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
    /// text batched into one dispatch ([`batch`], [`fusion::schedule`]; on by default on a
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

    /// (x, y) workgroup counts covering `groups` workgroups: x = min(groups, L),
    /// y = ceil(groups / x); the kernels flatten them as y * num_workgroups.x + x.
    fn grid(&self, groups: u32, site: impl Fn() -> String) -> Result<(u32, u32), ExecError> {
        let l = self.max_workgroups_per_dim;
        let x = groups.min(l);
        let y = groups.div_ceil(x.max(1));
        if y > l {
            return Err(ExecError::Gpu(format!(
                "{}: {groups} workgroups exceed {l} x {l} on adapter '{}'",
                site(),
                self.adapter.get_info().name
            )));
        }
        Ok((x, y))
    }

    /// Refuses, before any work, a graph with a tensor of more than [`MAX_RANK`] axes, or one
    /// larger than the adapter's storage binding limit. (Every primitive has a kernel.)
    fn check_supported(&self, graph: &Graph, needed: &[bool]) -> Result<(), ExecError> {
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

    /// A storage buffer of `numel` elements (at least one), from the pool when one of that
    /// size is free. Fresh buffers carry the node's label.
    fn alloc(&mut self, numel: usize, label: &dyn std::fmt::Display) -> Rc<wgpu::Buffer> {
        let size = (numel as u64 * Self::ELEM).max(Self::ELEM);
        if let Some(b) = self.pool.get_mut(&size).and_then(|v| v.pop()) {
            return Rc::new(b);
        }
        self.fresh_buffer(size, label)
    }

    /// A new storage buffer of `size` bytes, never from the pool: every variable gets one,
    /// since a pooled buffer may be bound by a cached tape (see [`tape`]).
    fn fresh_buffer(&mut self, size: u64, label: &dyn std::fmt::Display) -> Rc<wgpu::Buffer> {
        self.fresh_buffers += 1;
        Rc::new(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(&label.to_string()),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// Returns a dead value's buffer to the pool once no alias (reshape) holds it.
    fn release(&mut self, buf: Rc<wgpu::Buffer>) {
        if let Ok(b) = Rc::try_unwrap(buf) {
            let list = self.pool.entry(b.size()).or_default();
            if list.len() < POOL_PER_SIZE {
                list.push(b);
            }
        }
    }

    /// Records one dispatch of `spec` with its bindings taken from the kernel's table:
    /// the Params slot gets `params`, Read slots get `reads` in order, the Write slot `write`.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        spec: &'static KernelSpec,
        params: &[u8],
        reads: &[&wgpu::Buffer],
        write: &wgpu::Buffer,
        groups: u32,
        at: &Site,
    ) -> Result<(), ExecError> {
        if groups == 0 {
            return Ok(());
        }
        if let Some((member, pending)) = self.pending.as_mut() {
            // Recording a batch: held until every member is recorded (Self::flush_pending).
            pending.push(Pending {
                member: *member,
                kernel: Kernel::Spec(spec),
                params: params.to_vec(),
                reads: reads.iter().map(|&b| b.clone()).collect(),
                write: write.clone(),
                groups,
                at: at.held(),
            });
            return Ok(());
        }
        let compiled = self
            .cache
            .get(&self.device, spec)
            .map_err(|e| ExecError::Gpu(format!("{at}: {e}")))?
            .clone();
        self.dispatch_compiled(&compiled, spec.name, params, reads, &[write], groups, at)
    }

    /// Records one dispatch of a compiled kernel with `bindings` (see [`Self::dispatch`]) into
    /// the tape being built. A batched kernel (src/exec/gpu/batch.rs) has one Write slot per
    /// instance, taking `writes` in order, and runs `writes.len()` instances (workgroup z).
    #[allow(clippy::too_many_arguments)]
    fn dispatch_compiled(
        &mut self,
        compiled: &kernels::Compiled,
        name: &'static str,
        params: &[u8],
        reads: &[&wgpu::Buffer],
        writes: &[&wgpu::Buffer],
        groups: u32,
        at: &dyn std::fmt::Display,
    ) -> Result<(), ExecError> {
        if groups == 0 {
            return Ok(());
        }
        let (gx, gy) = self.grid(groups, || at.to_string())?;
        let gz = writes.len() as u32;
        self.params.dispatches += 1;
        let scope = self
            .scope_each
            .then(|| self.device.push_error_scope(wgpu::ErrorFilter::Validation));
        // The parameters: a slice of the tape's arena, or (fallback) a buffer of their own.
        let (params_buf, params_offset) = match (&self.params.buffer, self.params.active) {
            (Some(arena), true) => {
                let align = self.limits.min_uniform_buffer_offset_alignment.max(4) as usize;
                let offset = self.params.staging.len().next_multiple_of(align);
                self.params.staging.resize(offset, 0);
                self.params.staging.extend_from_slice(params);
                (arena.clone(), offset as u64)
            }
            _ => (
                self.device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some(name),
                        contents: params,
                        usage: wgpu::BufferUsages::UNIFORM,
                    }),
                0,
            ),
        };
        let mut next_read = reads.iter();
        let mut next_write = writes.iter();
        let mut entries = Vec::with_capacity(compiled.bindings.len());
        for &(binding, slot) in &compiled.bindings {
            let resource = match slot {
                Slot::Params => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &params_buf,
                    offset: params_offset,
                    size: std::num::NonZeroU64::new(params.len() as u64),
                }),
                Slot::Read => next_read
                    .next()
                    .ok_or_else(|| {
                        ExecError::Gpu(format!("{at}: fewer inputs than read bindings"))
                    })?
                    .as_entire_binding(),
                Slot::Write => next_write
                    .next()
                    .ok_or_else(|| {
                        ExecError::Gpu(format!("{at}: fewer outputs than write bindings"))
                    })?
                    .as_entire_binding(),
            };
            entries.push(wgpu::BindGroupEntry { binding, resource });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(name),
            layout: &compiled.layout,
            entries: &entries,
        });
        let command = tape::Command {
            pipeline: compiled.pipeline.clone(),
            bind_group,
            grid: (gx, gy, gz),
            kind: name,
        };
        if let Some(scope) = scope {
            // Encode this dispatch on its own (never submitted): a pass's errors surface when
            // its encoder finishes.
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(name) });
            Self::encode(&mut encoder, std::slice::from_ref(&command), None);
            drop(encoder.finish());
            if let Some(e) = pollster::block_on(scope.pop()) {
                return Err(ExecError::Gpu(format!("{at}: {e}")));
            }
        }
        self.commands.push(command);
        Ok(())
    }

    /// The parameters, stages and output size of the fused kernel `f` whose root is node `i`.
    fn fused_setup(
        &self,
        graph: &Graph,
        i: usize,
        f: &fusion::Fused,
        at: &Site,
    ) -> Result<FusedSetup, ExecError> {
        let node = &graph.nodes()[i];
        let numel = node.shape.numel();
        // The expression's shape: the map's output, or the reduction's input.
        let expr_shape = match &f.reduce {
            None => node.shape.dims(),
            Some(r) => graph.shape(r.input).dims(),
        };
        let mut map = kernels::FusedParams {
            total: expr_shape.iter().product::<usize>() as u32,
            rank: expr_shape.len() as u32,
            ..Default::default()
        };
        put(&mut map.shape, expr_shape);
        map.views = f.views.len() as u32;
        map.words = f.words(expr_shape.len());
        // A fused reduction's axes are its reduction node's (the root, or below an epilogue).
        let reduce_op = f.reduce.as_ref().map(|r| &graph.nodes()[r.node.0].op);
        match (&f.reduce, reduce_op) {
            (None, _) => Ok(FusedSetup {
                params: bytemuck::bytes_of(&map).to_vec(),
                stages: vec![("fused", (numel as u32).div_ceil(WORKGROUP_SIZE))],
                out_numel: numel,
            }),
            (Some(r), Some(Op::ReduceSum { axes } | Op::ReduceMax { axes })) => {
                // One dispatch, or the two of a split reduction, whose partial results follow
                // the output in its buffer.
                let p = reduce_params(expr_shape, axes, numel);
                let (specs, out_numel) = self.reduce_stages(&p, r.max);
                let params = kernels::FusedReduceParams { reduce: p, map };
                Ok(FusedSetup {
                    params: bytemuck::bytes_of(&params).to_vec(),
                    stages: specs.iter().map(|(k, g)| (k.entry, *g)).collect(),
                    out_numel,
                })
            }
            (Some(_), op) => Err(ExecError::Gpu(format!(
                "{at}: a fused reduction's node is {}, not a reduction",
                op.map_or("none".into(), |op| op.name())
            ))),
        }
    }

    /// Records the fused kernels rooted at `members` (one batch of the schedule: the same
    /// kernel text, none reading another's value) and returns their output buffers in order;
    /// [`Self::flush_pending`] batches their dispatches.
    fn record_fused(
        &mut self,
        graph: &Graph,
        members: &[usize],
        plan: &fusion::FusionPlan,
        vals: &[Option<Rc<wgpu::Buffer>>],
    ) -> Result<Vec<Rc<wgpu::Buffer>>, ExecError> {
        let nodes = graph.nodes();
        let mut outs = Vec::with_capacity(members.len());
        let mut held = Vec::new();
        for (m, &i) in members.iter().enumerate() {
            // Each member's own kernel: the text of the batch, its own leaves and views.
            let f = &plan.fused[&i];
            let at = Site {
                kernel: "fused",
                fused_ops: Some(f.ops),
                id: i,
                node: &nodes[i],
                part: Part::Whole,
            };
            let setup = self.fused_setup(graph, i, f, &at)?;
            let mut reads = Vec::with_capacity(f.leaves.len());
            for &leaf in &f.leaves {
                let buf = vals[leaf.0]
                    .as_deref()
                    .ok_or(ExecError::UnknownNode(leaf))?;
                reads.push(buf.clone());
            }
            let out = self.alloc(
                setup.out_numel,
                &BufferLabel {
                    id: i,
                    node: &nodes[i],
                },
            );
            for (entry, groups) in setup.stages {
                held.push(Pending {
                    member: m,
                    kernel: Kernel::Fused {
                        source: f.source.clone(),
                        hash: f.hash,
                        leaves: f.leaves.len(),
                        reduce: f.reduce.is_some(),
                        entry,
                    },
                    params: setup.params.clone(),
                    reads: reads.clone(),
                    write: (*out).clone(),
                    groups,
                    at: at.held(),
                });
            }
            outs.push(out);
        }
        self.flush_pending(graph, members.len(), held)?;
        Ok(outs)
    }

    /// Dispatches the held dispatches of a batch of `members` kernels: members whose dispatches
    /// have the same kernels in the same order run them as batched dispatches (stage by stage,
    /// up to [`Self::batch_cap`] instances in powers of two; src/exec/gpu/batch.rs); any other
    /// member runs its own in order. Members are independent, so only each member's order
    /// matters.
    fn flush_pending(
        &mut self,
        graph: &Graph,
        members: usize,
        held: Vec<Pending>,
    ) -> Result<(), ExecError> {
        let mut per: Vec<Vec<Pending>> = (0..members).map(|_| Vec::new()).collect();
        for p in held {
            per[p.member].push(p);
        }
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for m in 0..members {
            let same = |g: &Vec<usize>| {
                let (a, b) = (&per[g[0]], &per[m]);
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.kernel.same(&y.kernel))
            };
            match groups.iter_mut().find(|g| same(g)) {
                Some(g) => g.push(m),
                None => groups.push(vec![m]),
            }
        }
        for group in groups {
            let cap = per[group[0]]
                .iter()
                .map(|p| self.kernel_cap(&p.kernel, p.params.len()))
                .min()
                .unwrap_or(1);
            let mut rest = &group[..];
            while !rest.is_empty() {
                let k = 1 << rest.len().min(cap).ilog2();
                let (chunk, tail) = rest.split_at(k);
                rest = tail;
                for (s, first) in per[chunk[0]].iter().enumerate() {
                    let bytes = first.params.len();
                    let (compiled, kind) = match &first.kernel {
                        Kernel::Spec(spec) if k == 1 => {
                            (self.cache.get(&self.device, spec), spec.name)
                        }
                        Kernel::Spec(spec) => (
                            self.cache.get_batched(&self.device, spec, k, bytes),
                            spec.name,
                        ),
                        Kernel::Fused {
                            source,
                            hash,
                            leaves,
                            reduce,
                            entry,
                        } => (
                            self.cache.get_fused(
                                &self.device,
                                (source, *hash),
                                *leaves,
                                *reduce,
                                entry,
                                k,
                            ),
                            fused_kind(*reduce, entry, k > 1),
                        ),
                    };
                    let at = &first.at.at(graph);
                    let compiled = compiled
                        .map_err(|e| ExecError::Gpu(format!("{at}: {e}")))?
                        .clone();
                    let stage: Vec<&Pending> = chunk.iter().map(|&m| &per[m][s]).collect();
                    let params = batch_params(stage.iter().map(|p| &p.params[..]));
                    let reads: Vec<&wgpu::Buffer> =
                        stage.iter().flat_map(|p| p.reads.iter()).collect();
                    let writes: Vec<&wgpu::Buffer> = stage.iter().map(|p| &p.write).collect();
                    let groups = stage.iter().map(|p| p.groups).max().unwrap_or(0);
                    self.dispatch_compiled(&compiled, kind, &params, &reads, &writes, groups, at)?;
                }
            }
        }
        Ok(())
    }

    /// Most instances of `kernel` with `params_bytes` of parameters in one batched dispatch
    /// ([`Self::batch_cap`] with the buffers its module declares: a fused kernel's leaves and
    /// output, a single-op kernel's storage bindings).
    fn kernel_cap(&self, kernel: &Kernel, params_bytes: usize) -> usize {
        let buffers = match kernel {
            Kernel::Spec(spec) => spec.source.matches("var<storage").count().max(1),
            Kernel::Fused { leaves, .. } => leaves + 1,
        };
        self.batch_cap(buffers, params_bytes)
    }

    /// Most instances of a kernel binding `buffers` storage buffers and `params_bytes` of
    /// parameters in one batched dispatch: the executor's maximum (`set_max_instances`), within
    /// the device's storage buffers per stage, bindings per bind group and uniform binding
    /// size; 1 with batching off.
    fn batch_cap(&self, buffers: usize, params_bytes: usize) -> usize {
        if !self.batching {
            return 1;
        }
        let l = &self.limits;
        let storage = l.max_storage_buffers_per_shader_stage as usize / buffers;
        let bindings = (l.max_bindings_per_bind_group as usize).saturating_sub(1) / buffers;
        let stride = batch::params_stride(params_bytes).max(16);
        let uniform = l.max_uniform_buffer_binding_size as usize / stride;
        self.max_instances
            .min(storage)
            .min(bindings)
            .min(uniform)
            .max(1)
    }

    /// Records the kernel for node `i` and returns its output buffer. A convolution with a
    /// ReLU `prologue` (fusion rule 6) reads the ReLU's input and applies it on load.
    fn record(
        &mut self,
        graph: &Graph,
        i: usize,
        vals: &[Option<Rc<wgpu::Buffer>>],
        prologue: Option<&[NodeId; 2]>,
    ) -> Result<Rc<wgpu::Buffer>, ExecError> {
        let node = &graph.nodes()[i];
        let input = |k: usize| -> Result<Rc<wgpu::Buffer>, ExecError> {
            vals[node.inputs[k].0]
                .clone()
                .ok_or(ExecError::UnknownNode(node.inputs[k]))
        };
        let shape = node.shape.dims();
        let numel = node.shape.numel();
        let label = BufferLabel { id: i, node };
        let ew_groups = (numel as u32).div_ceil(WORKGROUP_SIZE);
        let out = match &node.op {
            Op::Reshape { .. } => return input(0),
            Op::Const { value, .. } => {
                let out = self.alloc(numel, &label);
                let mut p = EwParams {
                    total: numel as u32,
                    ..Default::default()
                };
                p.set_value(T::of(*value));
                let at = site(&kernels::FILL, i, node);
                self.dispatch(
                    &kernels::FILL,
                    bytemuck::bytes_of(&p),
                    &[],
                    &out,
                    ew_groups,
                    &at,
                )?;
                out
            }
            Op::Unary(u) => {
                let x = input(0)?;
                let out = self.alloc(numel, &label);
                let p = EwParams {
                    total: numel as u32,
                    op: unary_code(*u),
                    ..Default::default()
                };
                let at = site(&kernels::UNARY, i, node);
                self.dispatch(
                    &kernels::UNARY,
                    bytemuck::bytes_of(&p),
                    &[&x],
                    &out,
                    ew_groups,
                    &at,
                )?;
                out
            }
            Op::Binary(b) => {
                let (x, y) = (input(0)?, input(1)?);
                let out = self.alloc(numel, &label);
                let mut p = EwParams {
                    total: numel as u32,
                    rank: shape.len() as u32,
                    op: binary_code(*b),
                    ..Default::default()
                };
                put(&mut p.shape, shape);
                put(
                    &mut p.a_strides,
                    &broadcast_strides(graph.shape(node.inputs[0]).dims(), shape),
                );
                put(
                    &mut p.b_strides,
                    &broadcast_strides(graph.shape(node.inputs[1]).dims(), shape),
                );
                let at = site(&kernels::BINARY, i, node);
                self.dispatch(
                    &kernels::BINARY,
                    bytemuck::bytes_of(&p),
                    &[&x, &y],
                    &out,
                    ew_groups,
                    &at,
                )?;
                out
            }
            Op::Broadcast { .. } => {
                let x = input(0)?;
                let out = self.alloc(numel, &label);
                let mut p = EwParams {
                    total: numel as u32,
                    rank: shape.len() as u32,
                    ..Default::default()
                };
                put(&mut p.shape, shape);
                put(
                    &mut p.a_strides,
                    &broadcast_strides(graph.shape(node.inputs[0]).dims(), shape),
                );
                let at = site(&kernels::BROADCAST, i, node);
                self.dispatch(
                    &kernels::BROADCAST,
                    bytemuck::bytes_of(&p),
                    &[&x],
                    &out,
                    ew_groups,
                    &at,
                )?;
                out
            }
            Op::ReduceSum { axes } | Op::ReduceMax { axes } => {
                let x = input(0)?;
                let p = reduce_params(graph.shape(node.inputs[0]).dims(), axes, numel);
                let max = matches!(node.op, Op::ReduceMax { .. });
                let (stages, out_numel) = self.reduce_stages(&p, max);
                let out = self.alloc(out_numel, &label);
                for (spec, groups) in stages {
                    let at = site(spec, i, node);
                    self.dispatch(spec, bytemuck::bytes_of(&p), &[&x], &out, groups, &at)?;
                }
                out
            }
            Op::MatMul => {
                let (a, b) = (input(0)?, input(1)?);
                let out = self.alloc(numel, &label);
                let (m, k) = (
                    graph.shape(node.inputs[0]).dims()[0],
                    graph.shape(node.inputs[0]).dims()[1],
                );
                let n = shape[1];
                let tiles_n = (n as u32).div_ceil(MATMUL_TILE);
                let p = MatmulParams {
                    m: m as u32,
                    k: k as u32,
                    n: n as u32,
                    tiles_n,
                };
                let groups = (m as u32)
                    .div_ceil(MATMUL_TILE)
                    .checked_mul(tiles_n)
                    .ok_or_else(|| {
                        ExecError::Gpu(format!(
                            "{}: too many output tiles",
                            site(&kernels::MATMUL, i, node)
                        ))
                    })?;
                let at = site(&kernels::MATMUL, i, node);
                self.dispatch(
                    &kernels::MATMUL,
                    bytemuck::bytes_of(&p),
                    &[&a, &b],
                    &out,
                    groups,
                    &at,
                )?;
                out
            }
            Op::Input { name, shape } => {
                return Err(ExecError::MissingFeed {
                    name: name.clone(),
                    shape: shape.clone(),
                })
            }
            Op::Select => {
                let (c, a, b) = (input(0)?, input(1)?, input(2)?);
                let out = self.alloc(numel, &label);
                let p = EwParams {
                    total: numel as u32,
                    ..Default::default()
                };
                let at = site(&kernels::SELECT, i, node);
                self.dispatch(
                    &kernels::SELECT,
                    bytemuck::bytes_of(&p),
                    &[&c, &a, &b],
                    &out,
                    ew_groups,
                    &at,
                )?;
                out
            }
            Op::Permute { .. } | Op::Slice { .. } | Op::Pad { .. } => {
                let x = input(0)?;
                let out = self.alloc(numel, &label);
                let in_shape = graph.shape(node.inputs[0]);
                let strides = in_shape.strides();
                let mut p = copy_params(shape);
                match &node.op {
                    Op::Permute { perm } => {
                        for (d, &a) in perm.iter().enumerate() {
                            p.in_strides[d] = strides[a] as u32;
                        }
                    }
                    Op::Slice {
                        axis, start, step, ..
                    } => {
                        put(&mut p.in_strides, &strides);
                        p.in_strides[*axis] = (strides[*axis] * step) as u32;
                        p.base = (start * strides[*axis]) as u32;
                    }
                    Op::Pad {
                        axis,
                        before,
                        interior,
                        ..
                    } => {
                        put(&mut p.in_strides, &strides);
                        p.lo[*axis] = *before as u32;
                        p.div[*axis] = (interior + 1) as u32;
                        p.extent[*axis] = in_shape.dims()[*axis] as u32;
                    }
                    _ => {}
                }
                let at = site(&kernels::COPY, i, node);
                self.dispatch(
                    &kernels::COPY,
                    bytemuck::bytes_of(&p),
                    &[&x],
                    &out,
                    ew_groups,
                    &at,
                )?;
                out
            }
            Op::Concat { axis } => {
                let out = self.alloc(numel, &label);
                let at = site(&kernels::COPY, i, node);
                let mut off = 0;
                for k in 0..node.inputs.len() {
                    let x = input(k)?;
                    let in_shape = graph.shape(node.inputs[k]);
                    let mut p = copy_params(shape);
                    put(&mut p.in_strides, &in_shape.strides());
                    p.skip_outside = 1;
                    p.lo[*axis] = off as u32;
                    p.extent[*axis] = in_shape.dims()[*axis] as u32;
                    off += in_shape.dims()[*axis];
                    self.dispatch(
                        &kernels::COPY,
                        bytemuck::bytes_of(&p),
                        &[&x],
                        &out,
                        ew_groups,
                        &Site {
                            part: Part::ConcatInput(k),
                            ..at
                        },
                    )?;
                }
                out
            }
            Op::Conv2d(cp)
            | Op::Conv2dInputGrad { p: cp, .. }
            | Op::Conv2dWeightGrad { p: cp, .. } => {
                let a = match prologue {
                    Some(p) => vals[p[0].0].clone().ok_or(ExecError::UnknownNode(p[0]))?,
                    None => input(0)?,
                };
                let b = input(1)?;
                let s0 = graph.shape(node.inputs[0]).dims();
                let s1 = graph.shape(node.inputs[1]).dims();
                // (x shape, weight shape, y shape) of the forward convolution.
                let (xs, ws, ys, spec) = match &node.op {
                    Op::Conv2d(_) => (s0, s1, shape, &kernels::CONV2D),
                    Op::Conv2dInputGrad { .. } => (shape, s1, s0, &kernels::CONV2D_INPUT_GRAD),
                    _ => (s0, shape, s1, &kernels::CONV2D_WEIGHT_GRAD),
                };
                // A weight gradient sums n oh ow terms per element: a long sum gets a
                // workgroup per element, or (split) several per element and a second
                // dispatch that adds their partial sums (see shaders/conv.wgsl).
                let terms = ys[0] * ys[2] * ys[3];
                let weight_grad = matches!(node.op, Op::Conv2dWeightGrad { .. });
                let chunks = if weight_grad {
                    self.weight_grad_chunks(numel, terms)
                } else {
                    1
                };
                let mut stages = vec![if chunks > 1 {
                    (&kernels::CONV2D_WEIGHT_GRAD_SPLIT, numel as u32 * chunks)
                } else if weight_grad && terms >= self.workgroup_min as usize {
                    (&kernels::CONV2D_WEIGHT_GRAD_WORKGROUP, numel as u32)
                } else {
                    (spec, ew_groups)
                }];
                if chunks > 1 {
                    stages.push((&kernels::CONV2D_WEIGHT_GRAD_FINISH, numel as u32));
                }
                // A split one's partial sums follow the output in its buffer.
                let extra = if chunks > 1 { chunks as usize } else { 0 };
                let out = self.alloc(numel * (1 + extra), &label);
                let p = kernels::ConvParams {
                    total: numel as u32,
                    n: xs[0] as u32,
                    c: xs[1] as u32,
                    h: xs[2] as u32,
                    w: xs[3] as u32,
                    o: ws[0] as u32,
                    oh: ys[2] as u32,
                    ow: ys[3] as u32,
                    kh: ws[2] as u32,
                    kw: ws[3] as u32,
                    groups: cp.groups as u32,
                    stride_h: cp.stride[0] as u32,
                    stride_w: cp.stride[1] as u32,
                    pad_h: cp.padding[0] as u32,
                    pad_w: cp.padding[1] as u32,
                    dil_h: cp.dilation[0] as u32,
                    dil_w: cp.dilation[1] as u32,
                    chunks,
                    relu_a: u32::from(prologue.is_some()),
                    ..Default::default()
                };
                for (spec, groups) in stages {
                    let at = site(spec, i, node);
                    self.dispatch(spec, bytemuck::bytes_of(&p), &[&a, &b], &out, groups, &at)?;
                }
                out
            }
            Op::AvgPool2d(pp)
            | Op::AvgPool2dGrad { p: pp, .. }
            | Op::MaxPool2d(pp)
            | Op::MaxPool2dGrad(pp)
            | Op::MaxPool2dGather(pp) => {
                let s0 = graph.shape(node.inputs[0]).dims();
                // (x shape, y shape) of the forward pooling, the kernel and its reads.
                let (xs, ys, spec, reads) = match &node.op {
                    Op::AvgPool2d(_) => (s0, shape, &kernels::AVG_POOL, vec![input(0)?]),
                    Op::AvgPool2dGrad { .. } => {
                        (shape, s0, &kernels::AVG_POOL_GRAD, vec![input(0)?])
                    }
                    Op::MaxPool2d(_) => (
                        s0,
                        shape,
                        &kernels::MAX_POOL_GATHER,
                        vec![input(0)?, input(0)?],
                    ),
                    Op::MaxPool2dGrad(_) => (
                        s0,
                        graph.shape(node.inputs[1]).dims(),
                        &kernels::MAX_POOL_GRAD,
                        vec![input(0)?, input(1)?],
                    ),
                    _ => (
                        s0,
                        shape,
                        &kernels::MAX_POOL_GATHER,
                        vec![input(0)?, input(1)?],
                    ),
                };
                let out = self.alloc(numel, &label);
                let p = kernels::PoolParams {
                    total: numel as u32,
                    planes: (xs[0] * xs[1]) as u32,
                    h: xs[2] as u32,
                    w: xs[3] as u32,
                    oh: ys[2] as u32,
                    ow: ys[3] as u32,
                    kh: pp.kernel[0] as u32,
                    kw: pp.kernel[1] as u32,
                    stride_h: pp.stride[0] as u32,
                    stride_w: pp.stride[1] as u32,
                    pad_h: pp.padding[0] as u32,
                    pad_w: pp.padding[1] as u32,
                };
                let refs: Vec<&wgpu::Buffer> = reads.iter().map(|b| b.as_ref()).collect();
                let at = site(spec, i, node);
                self.dispatch(spec, bytemuck::bytes_of(&p), &refs, &out, ew_groups, &at)?;
                out
            }
            Op::Gather | Op::ScatterAdd { .. } => {
                let (a, b) = (input(0)?, input(1)?);
                let out = self.alloc(numel, &label);
                let (spec, rows, n) = match &node.op {
                    Op::Gather => (
                        &kernels::GATHER,
                        graph.shape(node.inputs[0]).dims()[0],
                        graph.shape(node.inputs[1]).numel(),
                    ),
                    _ => (
                        &kernels::SCATTER_ADD,
                        shape[0],
                        graph.shape(node.inputs[0]).numel(),
                    ),
                };
                let d: usize = shape[1..].iter().product();
                let p = GatherParams {
                    total: numel as u32,
                    rows: rows as u32,
                    n: n as u32,
                    d: d.max(1) as u32,
                };
                let at = site(spec, i, node);
                self.dispatch(
                    spec,
                    bytemuck::bytes_of(&p),
                    &[&a, &b],
                    &out,
                    ew_groups,
                    &at,
                )?;
                out
            }
            Op::LogSoftmax { axis } => {
                let x = input(0)?;
                let out = self.alloc(numel, &label);
                let n = shape[*axis];
                let inner: usize = shape[axis + 1..].iter().product();
                let lanes = numel.checked_div(n).unwrap_or(0);
                let p = SoftmaxParams {
                    lanes: lanes as u32,
                    n: n as u32,
                    inner: inner.max(1) as u32,
                    _pad: 0,
                };
                let at = site(&kernels::LOG_SOFTMAX, i, node);
                self.dispatch(
                    &kernels::LOG_SOFTMAX,
                    bytemuck::bytes_of(&p),
                    &[&x],
                    &out,
                    (lanes as u32).div_ceil(WORKGROUP_SIZE),
                    &at,
                )?;
                out
            }
        };
        Ok(out)
    }

    /// Records `graph`'s run into a new tape: the feeds' buffers, every dispatch (pipeline,
    /// bind group, grid) and its parameters, the output staging buffers and the assigned
    /// values. Nothing runs; [`Self::execute_tape`] does. With `scope_each` set, each dispatch
    /// is also encoded on its own inside a validation scope, to name the kernel of an error.
    fn build_tape(
        &mut self,
        graph: &Graph,
        key: tape::TapeKey,
        needed: Rc<Vec<bool>>,
        plan: Rc<fusion::FusionPlan>,
    ) -> Result<tape::Tape, ExecError> {
        self.commands.clear();
        let built = self.record_tape(graph, &key, &needed, &plan);
        let commands = std::mem::take(&mut self.commands);
        let (feeds, outputs, assigned) = built?;
        // The arena is written once; the tape's bind groups keep it alive.
        if let (Some(arena), true) = (self.params.buffer.take(), self.params.active) {
            self.queue.write_buffer(&arena, 0, &self.params.staging);
        }
        Ok(tape::Tape {
            key,
            needed,
            plan,
            commands,
            feeds,
            outputs,
            assigned,
        })
    }

    /// The body of [`Self::build_tape`]: returns the feeds, outputs and assigned buffers.
    #[allow(clippy::type_complexity)]
    fn record_tape(
        &mut self,
        graph: &Graph,
        key: &tape::TapeKey,
        needed: &[bool],
        plan: &fusion::FusionPlan,
    ) -> Result<
        (
            Vec<(String, crate::graph::Shape, wgpu::Buffer)>,
            Vec<tape::Output>,
            Vec<wgpu::Buffer>,
        ),
        ExecError,
    > {
        let mut vals: Vec<Option<Rc<wgpu::Buffer>>> = vec![None; graph.len()];
        let mut feeds = Vec::new();
        let mut sources = key.inputs.iter();
        for (i, node) in graph.nodes().iter().enumerate() {
            if let (true, Op::Input { name, shape }) = (needed[i], &node.op) {
                vals[i] = Some(match sources.next() {
                    // A variable: already on the device, bound where it is.
                    Some(tape::Source::Var(_)) => self
                        .vars
                        .get(name)
                        .map(|v| v.buf.clone())
                        .ok_or_else(|| ExecError::NoVar(name.clone()))?,
                    _ => {
                        let buf = self.alloc(shape.numel(), &format!("%{i} input '{name}'"));
                        feeds.push((name.clone(), shape.clone(), (*buf).clone()));
                        buf
                    }
                });
            }
        }
        self.prepare_params_arena(graph, needed, plan, key.assign.len());
        let schedule = fusion::schedule(graph, needed, plan, self.batching);
        for (b, members) in schedule.batches.iter().enumerate() {
            let i = members[0];
            if plan.fused.contains_key(&i) {
                let outs = self.record_fused(graph, members, plan, &vals)?;
                for (&m, out) in members.iter().zip(outs) {
                    vals[m] = Some(out);
                }
            } else if members.len() == 1 {
                vals[i] = Some(self.record(graph, i, &vals, plan.relu_prologue.get(&i))?);
            } else {
                // Single-op kernels of one kind: each member records as usual, its dispatches
                // are held, then run batched where their kernels match.
                self.pending = Some((0, Vec::new()));
                for (m, &i) in members.iter().enumerate() {
                    if let Some(p) = self.pending.as_mut() {
                        p.0 = m;
                    }
                    let out = self.record(graph, i, &vals, plan.relu_prologue.get(&i));
                    if out.is_err() {
                        self.pending = None;
                    }
                    vals[i] = Some(out?);
                }
                let held = self.pending.take().map(|p| p.1).unwrap_or_default();
                self.flush_pending(graph, members.len(), held)?;
            }
            // Buffers whose last reader was in this batch go back to the pool (after every
            // member's output was taken from it, so no member writes what another reads).
            for &m in members {
                for j in plan.reads(graph, m) {
                    if schedule.last_batch[j.0] == b {
                        if let Some(buf) = vals[j.0].take() {
                            self.release(buf);
                        }
                    }
                }
            }
        }
        // Only the requested outputs come back, through MAP_READ staging buffers.
        let mut outputs = Vec::with_capacity(key.outputs.len());
        for &o in &key.outputs {
            let numel = graph.shape(o).numel();
            let src = vals[o.0].as_ref().ok_or(ExecError::UnknownNode(o))?;
            let staged = (numel > 0).then(|| {
                let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("darts readback"),
                    size: numel as u64 * Self::ELEM,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                ((**src).clone(), staging)
            });
            outputs.push((graph.shape(o).dims().to_vec(), staged));
        }
        // Assigned values are tape buffers; an assigned variable (an Input left as it is) is
        // first copied into one, so that the assignments, copies into variables, commute.
        let mut assigned = Vec::with_capacity(key.assign.len());
        for (node, _) in &key.assign {
            let buf = vals[node.0].clone().ok_or(ExecError::UnknownNode(*node))?;
            let is_var = self.vars.values().any(|v| *v.buf == *buf);
            if !is_var {
                assigned.push((*buf).clone());
                continue;
            }
            let numel = graph.shape(*node).numel();
            let n = &graph.nodes()[node.0];
            let copy = self.alloc(
                numel,
                &BufferLabel {
                    id: node.0,
                    node: n,
                },
            );
            let mut p = copy_params(graph.shape(*node).dims());
            put(&mut p.in_strides, &graph.shape(*node).strides());
            let at = Site {
                part: Part::Assignment,
                ..site(&kernels::COPY, node.0, n)
            };
            self.dispatch(
                &kernels::COPY,
                bytemuck::bytes_of(&p),
                &[&buf],
                &copy,
                (numel as u32).div_ceil(WORKGROUP_SIZE),
                &at,
            )?;
            assigned.push((*copy).clone());
        }
        Ok((feeds, outputs, assigned))
    }

    /// Runs a tape: writes the feeds, submits the dispatches in chunks of `submit_every` (the
    /// device starts on a chunk while the host encodes the next), copies the outputs to their
    /// staging buffers and reads them back.
    fn execute_tape(
        &mut self,
        tape: &tape::Tape,
        feeds: &Feeds<T>,
        timing: &mut RunTiming,
    ) -> Result<Vec<ArrayD<T>>, ExecError> {
        let mut since = std::time::Instant::now();
        let lap = |t: &mut f64, since: &mut std::time::Instant| {
            *t = since.elapsed().as_secs_f64();
            *since = std::time::Instant::now();
        };
        // Queue writes land before the next submit's commands; nothing of an earlier run is
        // still reading these buffers except assignment copies, which the queue orders first.
        for (name, shape, buf) in &tape.feeds {
            let v = check_feed(name, shape, feeds)?;
            if let Some(s) = v.as_slice().filter(|s| !s.is_empty()) {
                self.queue.write_buffer(buf, 0, bytemuck::cast_slice(s));
            }
        }
        lap(&mut timing.upload, &mut since);
        let chunks: Vec<&[tape::Command]> = if tape.commands.is_empty() {
            vec![&[]]
        } else {
            // A query set holds at most 4096 timestamps: one per dispatch and one more.
            let every = match self.profile {
                true => self
                    .submit_every
                    .clamp(1, wgpu::QUERY_SET_MAX_QUERIES as usize - 1),
                false => self.submit_every.max(1),
            };
            tape.commands.chunks(every).collect()
        };
        let (submit_seconds, encode_seconds, stamps) = self.encode_and_submit(tape, &chunks)?;
        timing.encode = encode_seconds;
        lap(&mut timing.record, &mut since);
        timing.record -= submit_seconds;
        timing.submit = submit_seconds;
        let (tx, rx) = std::sync::mpsc::channel();
        for (k, (_, out)) in tape.outputs.iter().enumerate() {
            if let Some((_, staging)) = out {
                let tx = tx.clone();
                // map_async completes only inside device.poll below.
                staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                    let _ = tx.send((k, r));
                });
            }
        }
        drop(tx);
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| ExecError::Gpu(format!("waiting for the run: {e}")))?;
        lap(&mut timing.wait, &mut since);
        for (k, r) in rx.try_iter() {
            r.map_err(|e| {
                ExecError::Gpu(format!(
                    "mapping output {} for reading: {e}",
                    tape.key.outputs[k]
                ))
            })?;
        }
        let mut result = Vec::with_capacity(tape.outputs.len());
        for ((shape, out), &o) in tape.outputs.iter().zip(&tape.key.outputs) {
            let data = match out {
                None => Vec::new(),
                Some((_, staging)) => {
                    let view = staging
                        .slice(..)
                        .get_mapped_range()
                        .map_err(|e| ExecError::Gpu(format!("reading output {o}: {e}")))?;
                    let v = bytemuck::pod_collect_to_vec::<u8, T>(&view);
                    drop(view);
                    staging.unmap();
                    v
                }
            };
            result
                .push(ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| {
                    ExecError::Gpu(format!("output {o} has the wrong length: {e}"))
                })?);
        }
        lap(&mut timing.readback, &mut since);
        timing.dispatches = tape.commands.len();
        if !stamps.is_empty() {
            timing.profile = self.read_profile(&chunks, &stamps)?;
        }
        Ok(result)
    }

    /// Device seconds by kernel from the chunks' timestamps (see [`RunTiming::profile`]).
    fn read_profile(
        &self,
        chunks: &[&[tape::Command]],
        stamps: &[wgpu::Buffer],
    ) -> Result<Vec<(&'static str, usize, f64)>, ExecError> {
        let period = self.timestamp_period.unwrap_or(1.0) * 1e-9;
        let (tx, rx) = std::sync::mpsc::channel();
        for b in stamps {
            let tx = tx.clone();
            b.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        }
        drop(tx);
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| ExecError::Gpu(format!("waiting for the profile: {e}")))?;
        for r in rx.try_iter() {
            r.map_err(|e| ExecError::Gpu(format!("mapping the profile's timestamps: {e}")))?;
        }
        let mut by: HashMap<&'static str, (usize, f64)> = HashMap::new();
        for (chunk, b) in chunks.iter().zip(stamps) {
            let view = b
                .slice(..)
                .get_mapped_range()
                .map_err(|e| ExecError::Gpu(format!("reading the profile: {e}")))?;
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&view);
            drop(view);
            b.unmap();
            for (c, t) in chunk.iter().zip(ticks.windows(2)) {
                let e = by.entry(c.kind).or_default();
                e.0 += 1;
                e.1 += t[1].saturating_sub(t[0]) as f64 * period;
            }
        }
        let mut rows: Vec<_> = by.into_iter().map(|(k, (n, s))| (k, n, s)).collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(b.0)));
        Ok(rows)
    }

    /// Encodes and finishes `chunks` (the output copies after the last) on up to
    /// `encode_threads` threads, and submits them in order as they become ready, so the device
    /// runs one chunk while the host encodes the next ones. Returns the seconds spent in the
    /// driver's submits and the seconds of encoding summed over the threads. The chunks' commands and their order are those of one thread, so the
    /// results are identical (claim 6 of proofs/gpu-kernel-choices.md).
    fn encode_and_submit(
        &self,
        tape: &tape::Tape,
        chunks: &[&[tape::Command]],
    ) -> Result<Submitted, ExecError> {
        let (device, queue) = (&self.device, &self.queue);
        let (n, outputs) = (chunks.len(), &tape.outputs);
        let profile = self.profile;
        // Encodes and finishes chunk k inside a validation scope of the encoding thread
        // (wgpu's error scopes are per thread).
        let build = |k: usize| -> Built {
            let t = std::time::Instant::now();
            let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("darts run"),
            });
            let stamps = chunks[k].len() as u32 + 1;
            let queries = profile.then(|| {
                device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("darts profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count: stamps,
                })
            });
            Self::encode(&mut encoder, chunks[k], queries.as_ref());
            let readback = queries.map(|q| {
                let bytes = 8 * stamps as u64;
                let buffer = |usage| {
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("darts profile"),
                        size: bytes,
                        usage,
                        mapped_at_creation: false,
                    })
                };
                let resolved =
                    buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
                let readback = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
                encoder.resolve_query_set(&q, 0..stamps, &resolved, 0);
                encoder.copy_buffer_to_buffer(&resolved, 0, &readback, 0, Some(bytes));
                readback
            });
            if k + 1 == n {
                for (src, staging) in outputs.iter().filter_map(|o| o.1.as_ref()) {
                    encoder.copy_buffer_to_buffer(src, 0, staging, 0, Some(staging.size()));
                }
            }
            let commands = encoder.finish();
            let error = pollster::block_on(scope.pop());
            (commands, error, t.elapsed().as_secs_f64(), readback)
        };
        let (mut submit_seconds, mut encode_seconds) = (0.0, 0.0);
        let mut stamps = Vec::new();
        let mut submit = |k: usize, built: Built| {
            encode_seconds += built.2;
            stamps.extend(built.3);
            let at = || {
                format!(
                    "chunk {} of {n} of the run ({} dispatches)",
                    k + 1,
                    tape.commands.len()
                )
            };
            if let Some(e) = built.1 {
                return Err(ExecError::Gpu(format!("encoding {}: {e}", at())));
            }
            let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let t = std::time::Instant::now();
            queue.submit([built.0]);
            submit_seconds += t.elapsed().as_secs_f64();
            match pollster::block_on(scope.pop()) {
                Some(e) => Err(ExecError::Gpu(format!("submitting {}: {e}", at()))),
                None => Ok(()),
            }
        };
        let threads = self.encode_threads.min(n);
        if threads <= 1 {
            for k in 0..n {
                submit(k, build(k))?;
            }
            return Ok((submit_seconds, encode_seconds, stamps));
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| -> Result<(), ExecError> {
            let (tx, rx) = std::sync::mpsc::channel();
            for _ in 0..threads {
                let (tx, next, build) = (tx.clone(), &next, &build);
                s.spawn(move || loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // A closed channel: the submitting side failed and stopped.
                    if k >= n || tx.send((k, build(k))).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            // Chunks finish in any order; they are submitted in order.
            let mut ready = std::collections::BTreeMap::new();
            let mut due = 0;
            for (k, built) in rx {
                ready.insert(k, built);
                while let Some(b) = ready.remove(&due) {
                    submit(due, b)?;
                    due += 1;
                }
            }
            Ok(())
        })?;
        Ok((submit_seconds, encode_seconds, stamps))
    }

    /// Makes a parameter arena for the tape being built, large enough for every dispatch
    /// `graph` can record (one per needed node that fusion does not skip, two per split
    /// reduction or weight gradient, one per input of a Concat, one per assignment), unless that exceeds the device's largest buffer, in which
    /// case each dispatch gets a buffer of its own.
    fn prepare_params_arena(
        &mut self,
        graph: &Graph,
        needed: &[bool],
        plan: &fusion::FusionPlan,
        assignments: usize,
    ) {
        let align = self.limits.min_uniform_buffer_offset_alignment.max(4) as u64;
        let stride = MAX_PARAMS_BYTES.next_multiple_of(align);
        let dispatches: u64 = graph
            .nodes()
            .iter()
            .enumerate()
            .filter(|(i, _)| needed[*i] && !plan.skipped[*i])
            .map(|(i, n)| {
                // A reduction's input, fused or not: a split one is two dispatches.
                let reduced = match (plan.fused.get(&i), &n.op) {
                    (Some(f), _) => f.reduce.map(|r| r.input),
                    (None, Op::ReduceSum { .. } | Op::ReduceMax { .. }) => Some(n.inputs[0]),
                    _ => None,
                };
                match (&n.op, reduced) {
                    (Op::Concat { .. }, _) => n.inputs.len() as u64,
                    (Op::Conv2dWeightGrad { .. }, _) => {
                        let gy = graph.shape(n.inputs[1]).dims();
                        let terms = gy[0] * gy[2] * gy[3];
                        1 + u64::from(self.weight_grad_chunks(n.shape.numel(), terms) > 1)
                    }
                    (_, Some(x)) => {
                        let total_out = n.shape.numel();
                        let n_red = graph.shape(x).numel() / total_out.max(1);
                        1 + u64::from(self.splits(total_out, n_red))
                    }
                    _ => 1,
                }
            })
            .sum();
        let bytes = ((dispatches + assignments as u64) * stride).max(stride);
        self.params.staging.clear();
        self.params.dispatches = 0;
        self.params.active = bytes <= self.limits.max_buffer_size;
        self.params.buffer = self.params.active.then(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("darts kernel parameters"),
                size: bytes,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
    }

    /// Copies `numel` elements from `src` into a MAP_READ buffer and reads them (one submit).
    fn read_back(
        &mut self,
        src: &wgpu::Buffer,
        numel: usize,
        what: &str,
    ) -> Result<Vec<T>, ExecError> {
        if numel == 0 {
            return Ok(Vec::new());
        }
        let bytes = numel as u64 * Self::ELEM;
        let dst = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("darts readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("darts readback"),
            });
        encoder.copy_buffer_to_buffer(src, 0, &dst, 0, Some(bytes));
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        dst.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| ExecError::Gpu(format!("waiting to read {what}: {e}")))?;
        rx.try_recv()
            .map_err(|_| ExecError::Gpu(format!("reading {what}: the map never completed")))?
            .map_err(|e| ExecError::Gpu(format!("mapping {what} for reading: {e}")))?;
        let view = dst
            .slice(..)
            .get_mapped_range()
            .map_err(|e| ExecError::Gpu(format!("reading {what}: {e}")))?;
        let v = bytemuck::pod_collect_to_vec::<u8, T>(&view);
        drop(view);
        dst.unmap();
        Ok(v)
    }
}

/// The `op` code of a unary primitive in shaders/elementwise.wgsl (graph::UnaryOp order).
pub fn unary_code(op: UnaryOp) -> u32 {
    match op {
        UnaryOp::Neg => 0,
        UnaryOp::Exp => 1,
        UnaryOp::Log => 2,
        UnaryOp::Sqrt => 3,
        UnaryOp::Rsqrt => 4,
        UnaryOp::Recip => 5,
        UnaryOp::Square => 6,
        UnaryOp::Tanh => 7,
        UnaryOp::Sigmoid => 8,
        UnaryOp::Relu => 9,
        UnaryOp::Softplus => 10,
        UnaryOp::Step => 11,
    }
}

/// The `op` code of a binary primitive in shaders/elementwise.wgsl (graph::BinaryOp order).
pub fn binary_code(op: BinaryOp) -> u32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Max => 4,
        BinaryOp::Greater => 5,
        BinaryOp::Equal => 6,
    }
}

/// Element strides of an input of shape `input` read at each axis of `out` under NumPy
/// broadcasting: 0 where the input lacks the axis or has extent 1, its row-major stride
/// otherwise.
pub fn broadcast_strides(input: &[usize], out: &[usize]) -> Vec<usize> {
    let lead = out.len() - input.len();
    let mut s = vec![0; out.len()];
    let mut m = 1;
    for d in (0..input.len()).rev() {
        s[lead + d] = if input[d] == 1 { 0 } else { m };
        m *= input[d];
    }
    s
}

/// The `ReduceParams` of a reduction of an input of shape `in_shape` over `axes` into
/// `numel` outputs (shaders/reduce.wgsl).
fn reduce_params(in_shape: &[usize], axes: &[usize], numel: usize) -> ReduceParams {
    let mut strides = vec![1usize; in_shape.len()];
    for d in (0..in_shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * in_shape[d + 1];
    }
    // (extent, stride) of the kept and of the reduced axes.
    let mut kept: Vec<(u32, u32)> = Vec::new();
    let mut red: Vec<(u32, u32)> = Vec::new();
    for (d, &n) in in_shape.iter().enumerate() {
        let v = if axes.contains(&d) {
            &mut red
        } else {
            &mut kept
        };
        // Axes of extent 1 add nothing to any offset; an axis whose stride is the next
        // one's stride times its extent enumerates, with it, one run of offsets: merged,
        // they list the same offsets in the same order with one division less per axis.
        if n == 1 {
            continue;
        }
        match v.last_mut() {
            Some(last) if last.1 as usize == strides[d] * n => {
                *last = (last.0 * n as u32, strides[d] as u32);
            }
            _ => v.push((n as u32, strides[d] as u32)),
        }
    }
    let n_red: usize = red.iter().map(|&(n, _)| n as usize).product();
    let mut p = ReduceParams {
        total_out: numel as u32,
        n_red: n_red as u32,
        kept_rank: kept.len() as u32,
        red_rank: red.len() as u32,
        ..Default::default()
    };
    for (d, &(n, s)) in kept.iter().enumerate() {
        p.kept_shape[d] = n;
        p.kept_strides[d] = s;
    }
    for (d, &(n, s)) in red.iter().enumerate() {
        p.red_shape[d] = n;
        p.red_strides[d] = s;
    }
    p
}

/// `MoveParams` (shaders/movement.wgsl) of a plain copy onto an output of shape `shape`:
/// lo = 0, div = 1, extent = shape, write 0 outside; the caller sets the input strides and
/// the primitive's axis.
fn copy_params(shape: &[usize]) -> MoveParams {
    let mut p = MoveParams {
        total: shape.iter().product::<usize>() as u32,
        rank: shape.len() as u32,
        ..Default::default()
    };
    put(&mut p.shape, shape);
    put(&mut p.extent, shape);
    p.div = [1; MAX_RANK];
    p
}

/// The row index an index value names, or the error the CPU executor returns for it.
fn row_index<T: Scalar>(v: T, rows: usize, node: &Node) -> Result<(), ExecError> {
    let f = v.as_f64();
    if f >= 0.0 && f.fract() == 0.0 && (f as usize) < rows {
        Ok(())
    } else {
        Err(ExecError::IndexOutOfRange {
            op: node.op.name(),
            label: node.label.clone(),
            index: f,
            rows,
        })
    }
}

/// Checks on the host, before any work, the indices of every Gather and ScatterAdd whose
/// index tensor is a fed graph Input (its fed values) or Const (its fill value). Indices
/// computed on the device or held in a device variable are not checked: shaders/gather.wgsl documents what the kernels do with them.
fn check_indices<T: Scalar, V>(
    graph: &Graph,
    feeds: &Feeds<T>,
    vars: &HashMap<String, V>,
    needed: &[bool],
) -> Result<(), ExecError> {
    for (i, node) in graph.nodes().iter().enumerate() {
        if !needed[i] {
            continue;
        }
        let (idx, rows) = match &node.op {
            Op::Gather => (node.inputs[1], graph.shape(node.inputs[0]).dims()[0]),
            Op::ScatterAdd { rows } => (node.inputs[0], *rows),
            _ => continue,
        };
        match &graph.node(idx).op {
            Op::Input { name, .. } if feeds.get(name).is_none() && vars.contains_key(name) => {}
            Op::Input { name, shape } => {
                let v = check_feed(name, shape, feeds)?;
                for &x in v.iter() {
                    row_index(x, rows, node)?;
                }
            }
            Op::Const { value, shape } if shape.numel() > 0 => {
                row_index(T::of(*value), rows, node)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn put(dst: &mut [u32; MAX_RANK], src: &[usize]) {
    for (d, &v) in src.iter().enumerate() {
        dst[d] = v as u32;
    }
}

impl<T: GpuScalar> Executor<T> for GpuExecutor<T> {
    fn name(&self) -> String {
        format!("gpu-{} ({})", T::NAME, self.adapter.get_info().name)
    }

    fn run_assign(
        &mut self,
        graph: &Graph,
        feeds: &Feeds<T>,
        outputs: &[NodeId],
        assign: &[(NodeId, String)],
    ) -> Result<Vec<ArrayD<T>>, ExecError> {
        let planning = std::time::Instant::now();
        check_assign(graph, assign, |n| self.var_shape(n))?;
        let mut keep = outputs.to_vec();
        keep.extend(assign.iter().map(|(n, _)| *n));
        // The same graph with the same outputs every step: plan once (see `PlanKey`), from a
        // cached tape of the graph, or the last plan, or afresh.
        let key = PlanKey {
            graph: graph.version(),
            keep: keep.clone(),
            fusion: self.fusion,
        };
        let cached = self
            .tapes
            .iter()
            .find(|t| t.key.plan == key)
            .map(|t| (t.needed.clone(), t.plan.clone()))
            .or_else(|| match &self.plan_cache {
                Some((k, needed, plan)) if *k == key => Some((needed.clone(), plan.clone())),
                _ => None,
            });
        let (needed, plan) = match cached {
            Some(cached) => cached,
            None => {
                let (needed, _) = liveness(graph, &keep)?;
                self.check_supported(graph, &needed)?;
                let max_leaves = (self.limits.max_storage_buffers_per_shader_stage as usize)
                    .saturating_sub(1)
                    .min(fusion::MAX_LEAVES);
                let plan = fusion::plan(
                    graph,
                    &needed,
                    &keep,
                    |v| T::of(v).as_f64(),
                    max_leaves,
                    self.fusion && max_leaves >= 3,
                );
                let planned = (Rc::new(needed), Rc::new(plan));
                self.plan_cache = Some((key.clone(), planned.0.clone(), planned.1.clone()));
                planned
            }
        };
        check_indices(graph, feeds, &self.vars, &needed)?;
        // Where each needed input comes from: a feed wins over a variable of the same name.
        let inputs = graph
            .nodes()
            .iter()
            .zip(needed.iter())
            .filter_map(|(node, &k)| match (&node.op, k) {
                (Op::Input { name, .. }, true) => Some(match self.vars.get(name) {
                    Some(v) if feeds.get(name).is_none() => tape::Source::Var(v.serial),
                    _ => tape::Source::Feed,
                }),
                _ => None,
            })
            .collect();
        let tape_key = tape::TapeKey {
            plan: key,
            outputs: outputs.to_vec(),
            assign: assign.to_vec(),
            inputs,
        };
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut timing = RunTiming {
            plan: planning.elapsed().as_secs_f64(),
            fused_away: plan.saved(),
            ..Default::default()
        };
        let fresh_before = self.fresh_buffers;
        let found = self.tapes.iter().position(|t| t.key == tape_key);
        timing.replayed = found.is_some();
        let built = match found {
            Some(k) => Ok(self.tapes.remove(k)),
            None => {
                let t = std::time::Instant::now();
                let built = self.build_tape(graph, tape_key, needed.clone(), plan.clone());
                timing.build = t.elapsed().as_secs_f64();
                built
            }
        };
        let result = built.map(|tape| {
            let r = self.execute_tape(&tape, feeds, &mut timing);
            (tape, r)
        });
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        let (tape, result) = result?;
        match (v, o) {
            (Some(e), _) => {
                // Name the kernel: record again (no assignments: the variables stay as they
                // were) with a validation scope around every dispatch; that tape is not kept.
                let mut key = tape.key.clone();
                key.assign.clear();
                drop(tape);
                self.scope_each = true;
                let located = self.build_tape(graph, key, needed, plan);
                self.scope_each = false;
                Err(match located {
                    Err(at) => at,
                    Ok(_) => ExecError::Gpu(format!("during the run: {e}")),
                })
            }
            (None, Some(e)) => Err(ExecError::Gpu(format!("during the run: {e}"))),
            (None, None) => {
                let r = result.and_then(|r| {
                    self.take_uncaptured()?;
                    let shapes: Vec<Vec<usize>> = assign
                        .iter()
                        .map(|(n, _)| graph.shape(*n).dims().to_vec())
                        .collect();
                    self.commit(&tape, assign, &shapes)?;
                    Ok(r)
                });
                self.keep_tape(tape);
                timing.fresh_buffers = self.fresh_buffers - fresh_before;
                self.timing = timing;
                r
            }
        }
    }

    /// Writes `value` into the variable's buffer when it has that shape; otherwise makes a
    /// fresh buffer (never a pooled one, see [`tape`]) and gives the old one back to the pool
    /// (the tapes that bound it are dropped).
    fn set_var(&mut self, name: &str, value: &ArrayD<T>) -> Result<(), ExecError> {
        let v = value.as_standard_layout();
        let buf = match self.vars.get(name) {
            Some(var) if var.shape == value.shape() => var.buf.clone(),
            _ => {
                let size = (v.len() as u64 * Self::ELEM).max(Self::ELEM);
                let buf = self.fresh_buffer(size, &format!("variable '{name}'"));
                self.new_var(name, buf.clone(), value.shape().to_vec());
                buf
            }
        };
        if let Some(s) = v.as_slice().filter(|s| !s.is_empty()) {
            self.queue.write_buffer(&buf, 0, bytemuck::cast_slice(s));
        }
        Ok(())
    }

    fn var(&mut self, name: &str) -> Result<ArrayD<T>, ExecError> {
        let (buf, shape) = self
            .vars
            .get(name)
            .map(|v| (v.buf.clone(), v.shape.clone()))
            .ok_or_else(|| ExecError::NoVar(name.to_string()))?;
        let data = self.read_back(&buf, shape.iter().product(), &format!("variable '{name}'"))?;
        self.take_uncaptured()?;
        ArrayD::from_shape_vec(IxDyn(&shape), data)
            .map_err(|e| ExecError::Gpu(format!("variable '{name}' has the wrong length: {e}")))
    }

    fn last_run_timing(&self) -> Option<String> {
        Some(self.timing.to_string())
    }

    fn var_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.vars.get(name).map(|v| v.shape.clone())
    }

    fn clear_vars(&mut self) {
        self.forget_tapes();
        for (_, v) in std::mem::take(&mut self.vars) {
            self.release(v.buf);
        }
    }
}

impl<T: GpuScalar> GpuExecutor<T> {
    /// Makes `buf` the variable `name`'s buffer with a new serial; the old buffer, if any,
    /// goes back to the pool and the tapes that bound it are dropped.
    fn new_var(&mut self, name: &str, buf: Rc<wgpu::Buffer>, shape: Vec<usize>) {
        let serial = self.next_serial;
        self.next_serial += 1;
        let var = Var { buf, shape, serial };
        if let Some(old) = self.vars.insert(name.to_string(), var) {
            self.forget_tapes_reading(old.serial);
            self.release(old.buf);
        }
    }

    /// Errors wgpu reported outside any scope since the last call, as one error.
    fn take_uncaptured(&self) -> Result<(), ExecError> {
        if let Ok(mut u) = self.uncaptured.lock() {
            if !u.is_empty() {
                let msg = u.join("; ");
                u.clear();
                return Err(ExecError::Gpu(format!("uncaptured: {msg}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameter arena's stride covers every kernel's parameter block.
    #[test]
    fn params_arena_stride_covers_every_params_block() {
        use std::mem::size_of;
        for size in [
            size_of::<EwParams>(),
            size_of::<ReduceParams>(),
            size_of::<MatmulParams>(),
            size_of::<MoveParams>(),
            size_of::<kernels::ConvParams>(),
            size_of::<kernels::PoolParams>(),
            size_of::<GatherParams>(),
            size_of::<SoftmaxParams>(),
            size_of::<kernels::ProbeParams>(),
            size_of::<kernels::FusedParams>(),
            size_of::<kernels::FusedReduceParams>(),
        ] {
            assert!(size as u64 <= MAX_PARAMS_BYTES, "{size}");
        }
        assert_eq!(
            size_of::<kernels::FusedReduceParams>() as u64,
            MAX_PARAMS_BYTES
        );
    }

    /// The offsets reduce.wgsl computes from `ReduceParams` (base_offset, red_offset).
    fn offsets(p: &ReduceParams, o: u32, r: u32) -> u32 {
        let walk = |mut rem: u32, rank: u32, shape: &[u32], strides: &[u32]| {
            let mut off = 0;
            for d in (0..rank as usize).rev() {
                off += (rem % shape[d]) * strides[d];
                rem /= shape[d];
            }
            off
        };
        walk(o, p.kept_rank, &p.kept_shape, &p.kept_strides)
            + walk(r, p.red_rank, &p.red_shape, &p.red_strides)
    }

    /// Merged axes (extent-1 axes dropped, contiguous runs of kept or of reduced axes joined)
    /// enumerate exactly the offsets of the plain row-major definition, in the same order, for
    /// every subset of axes of a few shapes with extent-1 and contiguous axes.
    #[test]
    fn reduce_params_enumerate_the_same_offsets() {
        for shape in [
            vec![2usize, 3, 4, 5],
            vec![3, 1, 4, 1],
            vec![1, 2, 1, 3, 2],
            vec![4, 4],
            vec![5],
        ] {
            let rank = shape.len();
            for mask in 0u32..(1 << rank) {
                let axes: Vec<usize> = (0..rank).filter(|d| mask >> d & 1 == 1).collect();
                let kept: Vec<usize> = (0..rank).filter(|d| !axes.contains(d)).collect();
                let numel: usize = kept.iter().map(|&d| shape[d]).product();
                let p = reduce_params(&shape, &axes, numel);
                let n_red: usize = axes.iter().map(|&d| shape[d]).product();
                assert_eq!(p.n_red as usize, n_red, "{shape:?} {axes:?}");
                let strides: Vec<usize> =
                    (0..rank).map(|d| shape[d + 1..].iter().product()).collect();
                // Row-major coordinates of o over the kept axes and r over the reduced ones.
                let coords = |mut i: usize, over: &[usize]| {
                    let mut c = vec![0usize; over.len()];
                    for (k, &d) in over.iter().enumerate().rev() {
                        c[k] = i % shape[d];
                        i /= shape[d];
                    }
                    c
                };
                for o in 0..numel {
                    for r in 0..n_red {
                        let want: usize = coords(o, &kept)
                            .iter()
                            .zip(&kept)
                            .chain(coords(r, &axes).iter().zip(&axes))
                            .map(|(c, &d)| c * strides[d])
                            .sum();
                        assert_eq!(
                            offsets(&p, o as u32, r as u32) as usize,
                            want,
                            "{shape:?} axes {axes:?}, o {o}, r {r}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn broadcast_strides_follow_numpy() {
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), vec![0, 1, 0]);
        assert_eq!(broadcast_strides(&[2, 3, 4], &[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(broadcast_strides(&[], &[5]), vec![0]);
        assert_eq!(broadcast_strides(&[4], &[2, 4]), vec![0, 1]);
    }

    /// The op codes are the ones listed in the header of shaders/elementwise.wgsl.
    #[test]
    fn op_codes_match_shader_header() {
        // UnaryOp::ALL holds every op once: its codes are 0, 1, ..., 11 in order.
        let codes: Vec<u32> = UnaryOp::ALL.iter().map(|&u| unary_code(u)).collect();
        assert_eq!(codes, (0..UnaryOp::ALL.len() as u32).collect::<Vec<_>>());
        for u in UnaryOp::ALL {
            let tag = format!("{} {}", unary_code(u), format!("{u:?}").to_lowercase());
            assert!(kernels::ELEMENTWISE_WGSL.contains(&tag), "{tag}");
        }
        use BinaryOp::*;
        for b in [Add, Sub, Mul, Div, Max, Greater, Equal] {
            let tag = format!("{} {}", binary_code(b), format!("{b:?}").to_lowercase());
            assert!(kernels::ELEMENTWISE_WGSL.contains(&tag), "{tag}");
        }
    }
}
