//! Executors: anything that runs a [`Graph`] on fed values.
//!
//! The DARTS and search layers are generic over [`Executor`], so choosing CPU or GPU is one
//! flag, never two code paths.

pub mod cpu;
pub mod gpu;

use crate::graph::{Graph, NodeId, Shape};
use ndarray::ArrayD;
use std::collections::HashMap;

/// Which executor runs the graphs: the CPU reference, or the wgpu GPU path (f32).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Cpu,
    Gpu,
}

/// The element type an executor computes in.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    F64,
}

/// What to do with an executor once it is open: the one place a caller's code becomes
/// generic over the element type. [`open`] calls [`ExecutorUser::with`] with the executor
/// behind the [`Executor`] trait, so nothing above this module names a concrete executor.
pub trait ExecutorUser {
    type Output;
    fn with<T: Scalar>(self, exec: Box<dyn Executor<T>>) -> Self::Output;
}

/// An element type an executor can be opened in: how the GPU executor starts in it.
pub trait Opens: Scalar {
    fn open_gpu() -> Result<Box<dyn Executor<Self>>, ExecError>;
}

impl Opens for f32 {
    fn open_gpu() -> Result<Box<dyn Executor<f32>>, ExecError> {
        Ok(Box::new(gpu::GpuExecutor::<f32>::new()?))
    }
}

impl Opens for f64 {
    /// f64 kernels exist only where the adapter offers SHADER_F64 and passes the f64
    /// self-check of every f64 operation they use (proofs/gpu-f64-math.md).
    fn open_gpu() -> Result<Box<dyn Executor<f64>>, ExecError> {
        Ok(Box::new(gpu::GpuExecutor::<f64>::new_f64()?))
    }
}

/// Opens the executor of `backend` computing in `T`: the CPU reference, or the GPU. This and
/// [`open`] (the same for a dtype chosen at run time) are the only places an executor is
/// opened; nothing above this module names a concrete executor.
pub fn open_as<T: Opens>(backend: Backend) -> Result<Box<dyn Executor<T>>, ExecError> {
    match backend {
        Backend::Cpu => Ok(Box::new(cpu::CpuExecutor::<T>::new())),
        Backend::Gpu => T::open_gpu(),
    }
}

/// Opens the executor for (`backend`, `dtype`) ([`open_as`]) and hands it to `user`.
pub fn open<U: ExecutorUser>(
    backend: Backend,
    dtype: Dtype,
    user: U,
) -> Result<U::Output, ExecError> {
    Ok(match dtype {
        Dtype::F64 => user.with(open_as::<f64>(backend)?),
        Dtype::F32 => user.with(open_as::<f32>(backend)?),
    })
}

/// Floating-point element types the executors run in.
pub trait Scalar: ndarray::NdFloat + Default + bytemuck::Pod + std::iter::Sum {
    const NAME: &'static str;
    /// Unit roundoff u = 2^-(p) (half the machine epsilon): 2^-53 for f64, 2^-24 for f32.
    const UNIT_ROUNDOFF: f64;
    fn of(v: f64) -> Self;
    fn as_f64(self) -> f64;
}

impl Scalar for f64 {
    const NAME: &'static str = "f64";
    const UNIT_ROUNDOFF: f64 = 1.1102230246251565e-16;
    fn of(v: f64) -> Self {
        v
    }
    fn as_f64(self) -> f64 {
        self
    }
}

impl Scalar for f32 {
    const NAME: &'static str = "f32";
    const UNIT_ROUNDOFF: f64 = 5.960464477539063e-8;
    fn of(v: f64) -> Self {
        v as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
}

/// Values for the graph's input nodes, by input name.
#[derive(Clone, Debug, Default)]
pub struct Feeds<T> {
    values: HashMap<String, ArrayD<T>>,
}

impl<T: Scalar> Feeds<T> {
    pub fn new() -> Self {
        Feeds {
            values: HashMap::new(),
        }
    }

    pub fn insert(&mut self, name: impl Into<String>, value: ArrayD<T>) -> &mut Self {
        self.values.insert(name.into(), value);
        self
    }

    pub fn get(&self, name: &str) -> Option<&ArrayD<T>> {
        self.values.get(name)
    }

    pub fn remove(&mut self, name: &str) -> Option<ArrayD<T>> {
        self.values.remove(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.values.keys()
    }

    /// The same feeds converted to another element type.
    pub fn cast<U: Scalar>(&self) -> Feeds<U> {
        Feeds {
            values: self
                .values
                .iter()
                .map(|(k, v)| (k.clone(), v.mapv(|x| U::of(x.as_f64()))))
                .collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("no value fed for input '{name}' (shape {shape})")]
    MissingFeed { name: String, shape: Shape },
    #[error("input '{name}' was fed shape {got}, the graph expects {expected}")]
    FeedShape {
        name: String,
        expected: Shape,
        got: Shape,
    },
    #[error("{op} at '{label}': index {index} is not a valid row of a table with {rows} rows")]
    IndexOutOfRange {
        op: String,
        label: String,
        index: f64,
        rows: usize,
    },
    #[error("the {backend} executor has no kernel for {op} (node at '{label}')")]
    Unsupported {
        backend: String,
        op: String,
        label: String,
    },
    #[error("no variable '{0}' (set it with set_var, or assign it in a run)")]
    NoVar(String),
    #[error("assigning variable '{name}': {why}")]
    Assign { name: String, why: String },
    #[error("node {0} is not in the graph")]
    UnknownNode(NodeId),
    #[error("GPU: {0}")]
    Gpu(String),
    /// The adapter offers `SHADER_F64`, but one f64 operation the f64 kernels use gave a
    /// wrong result in the executor's self-check ([`gpu::GpuExecutor::check_probes`]): a
    /// legitimate refusal (this adapter runs f32 only), not a failure of the executor.
    #[error(
        "GPU: adapter {adapter} failed the f64 self-check: {failure}; the f64 kernels rely on \
         it, so this adapter runs f32 only"
    )]
    F64SelfCheck {
        adapter: String,
        /// The first probe outside its bound.
        probe: gpu::probe::Probe,
        /// The operation, the input, both results and the allowed difference, in words.
        failure: String,
    },
    #[error("GPU: no adapter offers {feature}, which {needed_for} need (adapters: {adapter})")]
    MissingGpuFeature {
        adapter: String,
        feature: String,
        needed_for: String,
    },
}

/// Runs graphs. `outputs` are returned in the order asked, in row-major standard layout.
///
/// **Variables.** An executor also keeps named tensors between runs (`set_var`): on the GPU
/// they stay in device memory, so weights, alphas and optimiser state are uploaded once and
/// never travel per step. A graph input with no feed of its name reads the variable of that
/// name (a feed, when given, wins). `run_assign` runs a graph and then makes each listed
/// node's value the new value of a variable: every read in the run sees the old values (the
/// assignments happen after the last kernel), so `w <- w - lr buf` is one run. Assigned values
/// are not read back; `var` reads one when the host needs it (checkpoints, genotypes).
pub trait Executor<T: Scalar> {
    fn name(&self) -> String;

    /// Run `graph` and return `outputs`; inputs come from `feeds`, else from variables.
    fn run(
        &mut self,
        graph: &Graph,
        feeds: &Feeds<T>,
        outputs: &[NodeId],
    ) -> Result<Vec<ArrayD<T>>, ExecError> {
        self.run_assign(graph, feeds, outputs, &[])
    }

    /// Run `graph`, return `outputs`, then set variable `name` to the value of `node` for each
    /// `(node, name)` in `assign` (creating it, or replacing one of the same shape).
    fn run_assign(
        &mut self,
        graph: &Graph,
        feeds: &Feeds<T>,
        outputs: &[NodeId],
        assign: &[(NodeId, String)],
    ) -> Result<Vec<ArrayD<T>>, ExecError>;

    /// Create or replace variable `name` (uploaded to the device on the GPU).
    fn set_var(&mut self, name: &str, value: &ArrayD<T>) -> Result<(), ExecError>;

    /// Read variable `name` back (from the device on the GPU).
    fn var(&mut self, name: &str) -> Result<ArrayD<T>, ExecError>;

    /// The shape of variable `name`, if it exists.
    fn var_shape(&self, name: &str) -> Option<Vec<usize>>;

    /// Drop every variable.
    fn clear_vars(&mut self);

    /// Where the last successful run's time went, in one line, where the executor measures
    /// it (the GPU executor: see `gpu::RunTiming`); `None` otherwise.
    fn last_run_timing(&self) -> Option<String> {
        None
    }
}

/// Checks an assignment list before a run: every node exists, no variable is assigned twice,
/// and a variable that exists keeps its shape.
pub fn check_assign(
    graph: &Graph,
    assign: &[(NodeId, String)],
    shape_of: impl Fn(&str) -> Option<Vec<usize>>,
) -> Result<(), ExecError> {
    let mut seen = std::collections::HashSet::new();
    for (node, name) in assign {
        if node.0 >= graph.len() {
            return Err(ExecError::UnknownNode(*node));
        }
        if !seen.insert(name.as_str()) {
            return Err(ExecError::Assign {
                name: name.clone(),
                why: "assigned twice in one run".into(),
            });
        }
        let got = graph.shape(*node);
        if let Some(s) = shape_of(name) {
            if s != got.dims() {
                return Err(ExecError::Assign {
                    name: name.clone(),
                    why: format!(
                        "holds shape {}, node {node} has shape {got}",
                        Shape::from(s.as_slice())
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Which nodes must be computed for `outputs`, and the last node index that reads each one
/// (outputs live to the end). Shared by executors for liveness-based buffer reuse.
pub fn liveness(graph: &Graph, outputs: &[NodeId]) -> Result<(Vec<bool>, Vec<usize>), ExecError> {
    let n = graph.len();
    let mut needed = vec![false; n];
    for &o in outputs {
        if o.0 >= n {
            return Err(ExecError::UnknownNode(o));
        }
        needed[o.0] = true;
    }
    for i in (0..n).rev() {
        if needed[i] {
            for j in &graph.nodes()[i].inputs {
                needed[j.0] = true;
            }
        }
    }
    let mut last_use = vec![0usize; n];
    for (i, node) in graph.nodes().iter().enumerate() {
        if needed[i] {
            for j in &node.inputs {
                last_use[j.0] = i;
            }
        }
    }
    for &o in outputs {
        last_use[o.0] = usize::MAX;
    }
    Ok((needed, last_use))
}

/// The row an index value of a Gather or ScatterAdd names: a whole number in 0..rows, or
/// [`ExecError::IndexOutOfRange`] naming the node (both executors check alike).
pub fn row_index<T: Scalar>(
    v: T,
    rows: usize,
    node: &crate::graph::Node,
) -> Result<usize, ExecError> {
    let f = v.as_f64();
    if f >= 0.0 && f.fract() == 0.0 && (f as usize) < rows {
        Ok(f as usize)
    } else {
        Err(ExecError::IndexOutOfRange {
            op: node.op.name(),
            label: node.label.clone(),
            index: f,
            rows,
        })
    }
}

/// Checks a feed against its input node's shape.
pub fn check_feed<T: Scalar>(
    name: &str,
    shape: &Shape,
    feeds: &Feeds<T>,
) -> Result<ArrayD<T>, ExecError> {
    let v = feeds.get(name).ok_or_else(|| ExecError::MissingFeed {
        name: name.to_string(),
        shape: shape.clone(),
    })?;
    if v.shape() != shape.dims() {
        return Err(ExecError::FeedShape {
            name: name.to_string(),
            expected: shape.clone(),
            got: Shape::from(v.shape()),
        });
    }
    Ok(v.as_standard_layout().into_owned())
}
