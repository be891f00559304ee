//! One run of a graph: its tape is recorded once ([`super::tape`]: inputs bound, batches of
//! the fusion schedule recorded, outputs staged) and replayed while the same graph runs with
//! inputs from the same places; replay writes the feeds, encodes the dispatches in chunks of
//! [`SUBMIT_EVERY`] on up to [`ENCODE_THREADS_MAX`] threads, submits them and reads back the
//! requested outputs. Also where the time of a run went ([`RunTiming`]).

use super::dispatch::{BufferLabel, Part, Site};
use super::kernels::{self, WORKGROUP_SIZE};
use super::record::{copy_params, put};
use super::{fusion, tape, GpuExecutor, GpuScalar};
use crate::exec::{check_feed, ExecError, Feeds};
use crate::graph::{Graph, Op};
use ndarray::{ArrayD, IxDyn};
use std::collections::HashMap;
use std::rc::Rc;

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
pub(super) struct ParamsArena {
    pub(super) buffer: Option<wgpu::Buffer>,
    /// Host copy of the tape's parameters, written into `buffer` when the tape is complete.
    pub(super) staging: Vec<u8>,
    /// Whether this tape uses the arena (false: one buffer per dispatch, when the tape would
    /// need more than the device's largest buffer).
    pub(super) active: bool,
    /// Dispatches recorded in this tape.
    pub(super) dispatches: usize,
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

impl<T: GpuScalar> GpuExecutor<T> {
    /// Records `graph`'s run into a new tape: the feeds' buffers, every dispatch (pipeline,
    /// bind group, grid) and its parameters, the output staging buffers and the assigned
    /// values. Nothing runs; [`Self::execute_tape`] does. With `scope_each` set, each dispatch
    /// is also encoded on its own inside a validation scope, to name the kernel of an error.
    pub(super) fn build_tape(
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
                ..Site::node(node.0, n)
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
    pub(super) fn execute_tape(
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
    /// driver's submits and the seconds of encoding summed over the threads. The chunks'
    /// commands and their order are those of one thread, so the results are identical (claim 6
    /// of proofs/gpu-kernel-choices.md).
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
    pub(super) fn read_back(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::gpu::kernels::{
        EwParams, GatherParams, MatmulParams, MoveParams, ReduceParams, SoftmaxParams,
    };

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
}
