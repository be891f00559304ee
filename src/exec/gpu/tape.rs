//! Tapes: a run recorded once, then replayed while the same graph runs again.
//!
//! A search step runs the same graph every step with new batches. Recording a dispatch costs
//! the host a bind group created and destroyed, the parameters packed, buffers taken from and
//! returned to the pool, then wgpu's validation of the pass, about as long as a small kernel
//! takes on a real GPU (benches/results/gpu-design-measurements.md). What is recorded
//! depends only on the graph, the nodes kept and where each input comes from, never on the
//! values; so the first run builds a [`Tape`] (the pipeline, bind group and grid of each
//! dispatch, the parameters in a uniform buffer written once, the feeds' buffers and the
//! output staging buffers) and a later run with the same [`TapeKey`] only writes the feeds,
//! encodes the recorded dispatches and reads the outputs back.
//!
//! **Why a replay computes what a fresh recording would** (proofs/gpu-kernel-choices.md,
//! claim 7). Runs are sequential: each waits for the device before it returns, and anything
//! it leaves on the queue (the copies into variables) is ordered before the next run's work.
//! A run's kernels read only (a) its feeds, written into the tape's feed buffers before its
//! first submit, (b) variables, whose buffers are bound by identity (their serials are part
//! of the key), and (c) values written earlier in the same run. Replaying the dispatches in
//! the recorded order therefore gives every buffer, at every dispatch, the value it had when
//! recorded, whatever other runs wrote into the same pooled buffers in between; two values of
//! one run share a buffer only where liveness allowed it when the tape was built. So tapes
//! share the pool (memory is the largest working set, not the sum), with one exception:
//! a variable's buffer must never be a pooled one, since a replay would overwrite it, so
//! variables get fresh buffers.
//!
//! **Variables keep their buffers.** A variable's buffer is made once (by `set_var` or the
//! first assignment) and then written in place: `set_var` of the same shape writes it, and an
//! assignment copies the run's value into it on the device, after the run's validation has
//! passed (so a failed run leaves every variable as it was). A value assigned to several
//! variables, or a variable assigned another variable's old value (a swap), works because the
//! assigned values are never variable buffers (an assigned Input is first copied into a pooled
//! buffer by a copy kernel), so the copies commute.
//!
//! **Cache.** At most [`TAPES_KEPT`] tapes are kept, least recently used first out. A tape
//! binding a variable buffer that is replaced (`set_var` of another shape, `clear_vars`) is
//! dropped, and so is every tape when a setting that changes the recording changes (the
//! reduction threshold, the grid cap; fusion is part of the key).

use super::{GpuExecutor, GpuScalar, PlanKey};
use crate::graph::{NodeId, Shape};
use std::rc::Rc;

/// Most tapes kept (the step graph of a search and the few evaluation graphs it alternates
/// with).
pub const TAPES_KEPT: usize = 4;

/// One recorded dispatch.
pub(super) struct Command {
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    /// Workgroups in x, y and z (z: the instances of a batched kernel, else 1).
    pub grid: (u32, u32, u32),
    /// The kernel's name, for profiles.
    pub kind: &'static str,
}

/// Where a run's input comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// Fed with the run (written into the tape's buffer before each replay).
    Feed,
    /// A variable, by the serial of its buffer (a new buffer gets a new serial).
    Var(u64),
}

/// Everything a tape's recording depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TapeKey {
    pub plan: PlanKey,
    pub outputs: Vec<NodeId>,
    pub assign: Vec<(NodeId, String)>,
    /// The source of each needed input node, in node order.
    pub inputs: Vec<Source>,
}

/// A requested output: its shape, and (unless empty) its buffer and a MAP_READ staging buffer.
pub(super) type Output = (Vec<usize>, Option<(wgpu::Buffer, wgpu::Buffer)>);

/// A recorded run (see the module documentation).
pub(super) struct Tape {
    pub key: TapeKey,
    /// The liveness of the graph's nodes and its fusion plan (shared with the plan cache).
    pub needed: Rc<Vec<bool>>,
    pub plan: Rc<super::fusion::FusionPlan>,
    pub commands: Vec<Command>,
    /// Fed inputs: name, shape, and the buffer each replay writes the feed into.
    pub feeds: Vec<(String, Shape, wgpu::Buffer)>,
    /// Per requested output: its shape, the buffer holding it and a MAP_READ staging buffer
    /// (none for an empty output).
    pub outputs: Vec<Output>,
    /// Per assignment: the (pooled) buffer holding the new value.
    pub assigned: Vec<wgpu::Buffer>,
}

impl<T: GpuScalar> GpuExecutor<T> {
    /// Caches `tape` as the most recently used one, dropping the least recently used beyond
    /// [`TAPES_KEPT`].
    pub(super) fn keep_tape(&mut self, tape: Tape) {
        self.tapes.push(tape);
        while self.tapes.len() > TAPES_KEPT {
            let old = self.tapes.remove(0);
            drop(old);
        }
    }

    /// Drops every cached tape (a setting that changes the recording changed).
    pub(super) fn forget_tapes(&mut self) {
        for t in std::mem::take(&mut self.tapes) {
            drop(t);
        }
    }

    /// Drops the cached tapes that bind the variable buffer with `serial` (it is being
    /// replaced, so their keys can no longer match).
    pub(super) fn forget_tapes_reading(&mut self, serial: u64) {
        let (stale, kept): (Vec<Tape>, Vec<Tape>) = std::mem::take(&mut self.tapes)
            .into_iter()
            .partition(|t| t.key.inputs.contains(&Source::Var(serial)));
        self.tapes = kept;
        for t in stale {
            drop(t);
        }
    }

    /// Encodes `commands` into one compute pass of `encoder`, setting a pipeline only when it
    /// changes; with `timestamps` (a query set of `commands.len() + 1`), timestamp 0 before
    /// the first dispatch and timestamp k + 1 after dispatch k.
    pub(super) fn encode(
        encoder: &mut wgpu::CommandEncoder,
        commands: &[Command],
        timestamps: Option<&wgpu::QuerySet>,
    ) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("darts graph"),
            timestamp_writes: None,
        });
        if let Some(q) = timestamps {
            pass.write_timestamp(q, 0);
        }
        let mut current: Option<&wgpu::ComputePipeline> = None;
        for (k, c) in commands.iter().enumerate() {
            if current != Some(&c.pipeline) {
                pass.set_pipeline(&c.pipeline);
                current = Some(&c.pipeline);
            }
            pass.set_bind_group(0, &c.bind_group, &[]);
            pass.dispatch_workgroups(c.grid.0, c.grid.1, c.grid.2);
            if let Some(q) = timestamps {
                pass.write_timestamp(q, k as u32 + 1);
            }
        }
    }

    /// Copies each assigned value into its variable's buffer (made on the first assignment),
    /// after the run that computed them succeeded. One submit, not waited for: later work on
    /// the queue runs after it.
    pub(super) fn commit(
        &mut self,
        tape: &Tape,
        assign: &[(NodeId, String)],
        shapes: &[Vec<usize>],
    ) -> Result<(), crate::exec::ExecError> {
        if assign.is_empty() {
            return Ok(());
        }
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("darts assignments"),
            });
        for (((_, name), src), shape) in assign.iter().zip(&tape.assigned).zip(shapes) {
            let dst = match self.vars.get(name) {
                Some(v) if &v.shape == shape => v.buf.clone(),
                _ => {
                    let size =
                        (shape.iter().product::<usize>() as u64 * Self::ELEM).max(Self::ELEM);
                    let buf = self.fresh_buffer(size, &format!("variable '{name}'"));
                    self.new_var(name, buf.clone(), shape.clone());
                    buf
                }
            };
            let bytes = shape.iter().product::<usize>() as u64 * Self::ELEM;
            if bytes > 0 {
                encoder.copy_buffer_to_buffer(src, 0, &dst, 0, Some(bytes));
            }
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        self.queue.submit([encoder.finish()]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(crate::exec::ExecError::Gpu(format!(
                "copying the run's {} assigned values into their variables: {e}",
                assign.len()
            )));
        }
        Ok(())
    }
}
