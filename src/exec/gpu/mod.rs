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
//! [`MAX_RANK`](kernels::MAX_RANK) axes is refused before any work with [`ExecError::Unsupported`] naming the op
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
//!
//! **Layout.** `device.rs`: adapter, device, f64 self-test, settings. [`kernels`]: the WGSL
//! sources, their parameter blocks and the pipeline cache. `record/`: what each op records
//! (single-op kernels, one file per op family, and fused kernels). `dispatch.rs`: one
//! dispatch's bind group, buffer pooling, held dispatches and their batched flush ([`batch`]).
//! [`fusion`]: which ops fuse, the schedule of batches and the generated kernels. [`tape`] and
//! `run.rs`: record once, replay, submit, read back. [`probe`]: the f64 operations checked
//! against the host.

pub mod batch;
mod device;
mod dispatch;
pub mod fusion;
pub mod kernels;
pub mod probe;
mod record;
mod run;
pub mod tape;

pub use device::f64_support;
use dispatch::Pending;
use record::check_indices;
pub use record::{binary_code, broadcast_strides, unary_code};
use run::ParamsArena;
pub use run::{RunTiming, ENCODE_THREADS_MAX, SUBMIT_EVERY};

use super::{check_assign, liveness, ExecError, Executor, Feeds, Scalar};
use crate::graph::{Graph, NodeId, Op};
use kernels::PipelineCache;
use ndarray::{ArrayD, IxDyn};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

/// Pooled buffers kept per byte size. A buffer is created only when none of its size is free,
/// so the buffers of one size never outnumber the most that were alive at once (in any run):
/// the pool holds at most the working set of the runs so far, and a repeated run (a search
/// step) creates none (a small cap made many allocations fresh buffers:
/// benches/results/gpu-design-measurements.md).
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
    /// ([`REDUCE_WORKGROUP_MIN`](kernels::REDUCE_WORKGROUP_MIN) unless set).
    workgroup_min: u32,
    /// Reductions of at most [`REDUCE_SPLIT_MAX_OUT`](kernels::REDUCE_SPLIT_MAX_OUT) outputs and at least this many terms per
    /// output are split over `SPLIT` workgroups per output ([`REDUCE_SPLIT_MIN`](kernels::REDUCE_SPLIT_MIN) on a GPU,
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

impl<T: GpuScalar> GpuExecutor<T> {
    /// Bytes per element.
    const ELEM: u64 = std::mem::size_of::<T>() as u64;
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
