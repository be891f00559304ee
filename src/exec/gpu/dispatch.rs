//! Recording dispatches into the tape being built: the pooled buffers they write, one
//! dispatch's bind group and parameters, the dispatches held while a batch is recorded and
//! their flush as batched dispatches ([`super::batch`]), and the sites that name a kernel and
//! its node in errors.

use super::kernels::{self, KernelSpec, Slot};
use super::{batch, tape, GpuExecutor, GpuScalar, POOL_PER_SIZE};
use crate::exec::ExecError;
use crate::graph::{Graph, Node};
use std::rc::Rc;
use wgpu::util::DeviceExt;

/// Where a kernel runs, for error messages: "kernel 'k' for node %i (op at 'label')", or
/// "fused kernel of n ops for node %i (op at 'label')". Formatted only when a message needs
/// it (a run records a dispatch every few microseconds); a held dispatch keeps its
/// [`HeldSite`] and borrows the node back from the graph when its batch is dispatched.
#[derive(Clone, Copy)]
pub(super) struct Site<'a> {
    pub(super) kernel: &'static str,
    /// Operations of a fused kernel.
    pub(super) fused_ops: Option<usize>,
    pub(super) id: usize,
    pub(super) node: &'a Node,
    /// Which of the node's dispatches, where it has several.
    pub(super) part: Part,
}

/// Which of a node's dispatches a [`Site`] is, where a node has several.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Part {
    /// The node's own kernel.
    Whole,
    /// The copy of input `k` of a concatenation into its place.
    ConcatInput(usize),
    /// The copy of an assigned variable's value.
    Assignment,
}

impl<'a> Site<'a> {
    /// Node `id`'s own dispatches; [`GpuExecutor::dispatch`] names the kernel.
    pub(super) fn node(id: usize, node: &'a Node) -> Self {
        Site {
            kernel: "",
            fused_ops: None,
            id,
            node,
            part: Part::Whole,
        }
    }

    pub(super) fn held(&self) -> HeldSite {
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
pub(super) struct HeldSite {
    pub(super) kernel: &'static str,
    pub(super) fused_ops: Option<usize>,
    pub(super) id: usize,
    pub(super) part: Part,
}

impl HeldSite {
    pub(super) fn at<'a>(&self, graph: &'a Graph) -> Site<'a> {
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
pub(super) enum Kernel {
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
    pub(super) fn same(&self, other: &Kernel) -> bool {
        match (self, other) {
            (Kernel::Spec(a), Kernel::Spec(b)) => a.name == b.name,
            (Kernel::Fused { entry: a, .. }, Kernel::Fused { entry: b, .. }) => a == b,
            _ => false,
        }
    }
}

/// A dispatch held while the other members of its batch are recorded.
pub(super) struct Pending {
    /// The batch member (index into the batch) that recorded it.
    pub(super) member: usize,
    pub(super) kernel: Kernel,
    pub(super) params: Vec<u8>,
    pub(super) reads: Vec<wgpu::Buffer>,
    pub(super) write: wgpu::Buffer,
    pub(super) groups: u32,
    /// Where it comes from, for errors.
    pub(super) at: HeldSite,
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

/// A buffer's label: "%i op at 'label'", formatted only when a fresh buffer is created.
pub(super) struct BufferLabel<'a> {
    pub(super) id: usize,
    pub(super) node: &'a Node,
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

impl<T: GpuScalar> GpuExecutor<T> {
    /// (x, y) workgroup counts covering `groups` workgroups: x = min(groups, L),
    /// y = ceil(groups / x); the kernels flatten them as y * num_workgroups.x + x.
    pub(super) fn grid(
        &self,
        groups: u32,
        site: impl Fn() -> String,
    ) -> Result<(u32, u32), ExecError> {
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

    /// A storage buffer of `numel` elements (at least one), from the pool when one of that
    /// size is free. Fresh buffers carry the node's label.
    pub(super) fn alloc(
        &mut self,
        numel: usize,
        label: &dyn std::fmt::Display,
    ) -> Rc<wgpu::Buffer> {
        let size = (numel as u64 * Self::ELEM).max(Self::ELEM);
        if let Some(b) = self.pool.get_mut(&size).and_then(|v| v.pop()) {
            return Rc::new(b);
        }
        self.fresh_buffer(size, label)
    }

    /// A new storage buffer of `size` bytes, never from the pool: every variable gets one,
    /// since a pooled buffer may be bound by a cached tape (see [`tape`]).
    pub(super) fn fresh_buffer(
        &mut self,
        size: u64,
        label: &dyn std::fmt::Display,
    ) -> Rc<wgpu::Buffer> {
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
    pub(super) fn release(&mut self, buf: Rc<wgpu::Buffer>) {
        if let Ok(b) = Rc::try_unwrap(buf) {
            let list = self.pool.entry(b.size()).or_default();
            if list.len() < POOL_PER_SIZE {
                list.push(b);
            }
        }
    }

    /// Records one dispatch of `spec` with its bindings taken from the kernel's table:
    /// the Params slot gets `params`, Read slots get `reads` in order, the Write slot `write`.
    /// Errors name `at` with `spec`'s kernel.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dispatch(
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
        let at = &Site {
            kernel: spec.name,
            ..*at
        };
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
    pub(super) fn dispatch_compiled(
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

    /// Dispatches the held dispatches of a batch of `members` kernels: members whose dispatches
    /// have the same kernels in the same order run them as batched dispatches (stage by stage,
    /// up to [`Self::batch_cap`] instances in powers of two; src/exec/gpu/batch.rs); any other
    /// member runs its own in order. Members are independent, so only each member's order
    /// matters.
    pub(super) fn flush_pending(
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
}
