//! The op graph: nodes of primitive ops with shape inference at construction.
//!
//! Nodes are appended after their inputs, so node order is a topological order. Every builder
//! method runs the primitive's shape rule and returns a [`GraphError`] naming the op, the
//! caller's label scope and the input shapes when the node would be ill-formed; executors never
//! see a graph with bad shapes.

pub mod compose;
mod op;
pub mod ops;
mod shape;

pub use op::{BinaryOp, ConvParams, Op, PoolParams, UnaryOp};
pub use shape::Shape;

use std::collections::HashMap;
use std::fmt;

/// Index of a node in its [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// One primitive application.
#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<NodeId>,
    pub shape: Shape,
    /// The caller's label scope when the node was built (e.g. `cells.0._ops.3`).
    pub label: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("{op} at '{label}': {reason} (input shapes: {shapes})")]
    Shape {
        op: String,
        label: String,
        shapes: String,
        reason: String,
    },
    #[error("node {0} does not exist in this graph")]
    UnknownNode(NodeId),
    #[error("input name '{0}' is used twice")]
    DuplicateInput(String),
    #[error("grad of '{label}': the output must be a scalar (one element), it has shape {shape}")]
    NonScalarOutput { label: String, shape: Shape },
}

pub type Result<T> = std::result::Result<T, GraphError>;

/// A computation graph of primitive ops.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// Unique to this graph value (a clone gets its own); with [`Graph::len`] it names the
    /// node list exactly, since nodes are only ever appended.
    id: GraphId,
    nodes: Vec<Node>,
    scope: Vec<String>,
    inputs: HashMap<String, NodeId>,
}

/// A process-unique graph identity: every new or cloned graph draws the next number.
#[derive(Debug, PartialEq, Eq)]
struct GraphId(u64);

impl GraphId {
    fn next() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        GraphId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl Default for GraphId {
    fn default() -> Self {
        GraphId::next()
    }
}

impl Clone for GraphId {
    fn clone(&self) -> Self {
        GraphId::next()
    }
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    /// `(identity, length)`: equal for two calls exactly when they see the same graph value
    /// with the same nodes (graphs only grow, and a clone has its own identity), so an
    /// executor may cache what it derives from a graph under this key.
    pub fn version(&self) -> (u64, usize) {
        (self.id.0, self.nodes.len())
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    pub fn shape(&self, id: NodeId) -> &Shape {
        &self.nodes[id.0].shape
    }

    /// The input node fed under `name`, if any.
    pub fn input_id(&self, name: &str) -> Option<NodeId> {
        self.inputs.get(name).copied()
    }

    /// All input nodes, in creation order.
    pub fn input_nodes(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.inputs.values().copied().collect();
        v.sort();
        v
    }

    /// Enter a label scope: nodes built until the matching [`Graph::pop_scope`] carry it,
    /// joined to outer scopes with '.'.
    pub fn push_scope(&mut self, name: impl Into<String>) {
        self.scope.push(name.into());
    }

    pub fn pop_scope(&mut self) {
        self.scope.pop();
    }

    /// Run `f` inside the label scope `name`.
    pub fn scoped<T>(&mut self, name: impl Into<String>, f: impl FnOnce(&mut Self) -> T) -> T {
        self.push_scope(name);
        let r = f(self);
        self.pop_scope();
        r
    }

    pub fn current_label(&self) -> String {
        self.scope.join(".")
    }

    /// Append a node after checking its inputs exist and running the op's shape rule.
    pub fn add(&mut self, op: Op, inputs: &[NodeId]) -> Result<NodeId> {
        for &i in inputs {
            if i.0 >= self.nodes.len() {
                return Err(GraphError::UnknownNode(i));
            }
        }
        let shapes: Vec<&Shape> = inputs.iter().map(|&i| &self.nodes[i.0].shape).collect();
        let shape = ops::infer_shape(&op, &shapes).map_err(|reason| GraphError::Shape {
            op: op.name(),
            label: self.current_label(),
            shapes: shapes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            reason,
        })?;
        if let Op::Input { name, .. } = &op {
            if self.inputs.contains_key(name) {
                return Err(GraphError::DuplicateInput(name.clone()));
            }
            self.inputs.insert(name.clone(), NodeId(self.nodes.len()));
        }
        self.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            shape,
            label: self.current_label(),
        });
        Ok(NodeId(self.nodes.len() - 1))
    }

    // ----- leaves -----

    /// A named input (data, parameter or direction) of the given shape.
    pub fn input(&mut self, name: impl Into<String>, shape: impl Into<Shape>) -> Result<NodeId> {
        self.add(
            Op::Input {
                name: name.into(),
                shape: shape.into(),
            },
            &[],
        )
    }

    pub fn constant(&mut self, value: f64, shape: impl Into<Shape>) -> Result<NodeId> {
        self.add(
            Op::Const {
                value,
                shape: shape.into(),
            },
            &[],
        )
    }

    pub fn scalar(&mut self, value: f64) -> Result<NodeId> {
        self.constant(value, Shape::scalar())
    }

    pub fn zeros_like(&mut self, x: NodeId) -> Result<NodeId> {
        let s = self.shape(x).clone();
        self.constant(0.0, s)
    }

    // ----- elementwise -----

    pub fn unary(&mut self, op: UnaryOp, x: NodeId) -> Result<NodeId> {
        self.add(Op::Unary(op), &[x])
    }

    pub fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.add(Op::Binary(op), &[a, b])
    }

    pub fn neg(&mut self, x: NodeId) -> Result<NodeId> {
        self.unary(UnaryOp::Neg, x)
    }
    pub fn exp(&mut self, x: NodeId) -> Result<NodeId> {
        self.unary(UnaryOp::Exp, x)
    }
    pub fn log(&mut self, x: NodeId) -> Result<NodeId> {
        self.unary(UnaryOp::Log, x)
    }
    pub fn relu(&mut self, x: NodeId) -> Result<NodeId> {
        self.unary(UnaryOp::Relu, x)
    }
    pub fn square(&mut self, x: NodeId) -> Result<NodeId> {
        self.unary(UnaryOp::Square, x)
    }
    pub fn add2(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Add, a, b)
    }
    pub fn sub(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Sub, a, b)
    }
    pub fn mul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Mul, a, b)
    }
    pub fn div(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Div, a, b)
    }
    /// x * c for a constant c.
    pub fn scale(&mut self, x: NodeId, c: f64) -> Result<NodeId> {
        let k = self.scalar(c)?;
        self.mul(x, k)
    }

    pub fn select(&mut self, cond: NodeId, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.add(Op::Select, &[cond, a, b])
    }

    // ----- reductions -----

    /// Sum over `axes`, keeping them as size-1 axes.
    pub fn reduce_sum(&mut self, x: NodeId, axes: &[usize]) -> Result<NodeId> {
        self.add(
            Op::ReduceSum {
                axes: axes.to_vec(),
            },
            &[x],
        )
    }

    pub fn reduce_max(&mut self, x: NodeId, axes: &[usize]) -> Result<NodeId> {
        self.add(
            Op::ReduceMax {
                axes: axes.to_vec(),
            },
            &[x],
        )
    }

    /// Sum of all elements, as a scalar (shape []).
    pub fn sum_all(&mut self, x: NodeId) -> Result<NodeId> {
        let axes: Vec<usize> = (0..self.shape(x).rank()).collect();
        let s = self.reduce_sum(x, &axes)?;
        self.reshape(s, Shape::scalar())
    }

    /// Inner product <a, b> of two tensors of the same shape, as a scalar.
    pub fn dot(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        let p = self.mul(a, b)?;
        self.sum_all(p)
    }

    // ----- movement -----

    pub fn broadcast_to(&mut self, x: NodeId, shape: impl Into<Shape>) -> Result<NodeId> {
        let shape = shape.into();
        if *self.shape(x) == shape {
            return Ok(x);
        }
        self.add(Op::Broadcast { shape }, &[x])
    }

    pub fn reshape(&mut self, x: NodeId, shape: impl Into<Shape>) -> Result<NodeId> {
        let shape = shape.into();
        if *self.shape(x) == shape {
            return Ok(x);
        }
        self.add(Op::Reshape { shape }, &[x])
    }

    pub fn permute(&mut self, x: NodeId, perm: &[usize]) -> Result<NodeId> {
        self.add(
            Op::Permute {
                perm: perm.to_vec(),
            },
            &[x],
        )
    }

    /// Swap the last two axes.
    pub fn transpose(&mut self, x: NodeId) -> Result<NodeId> {
        let r = self.shape(x).rank();
        if r < 2 {
            return self.permute(x, &[9]); // triggers the shape rule's error
        }
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.permute(x, &perm)
    }

    pub fn slice(
        &mut self,
        x: NodeId,
        axis: usize,
        start: usize,
        end: usize,
        step: usize,
    ) -> Result<NodeId> {
        self.add(
            Op::Slice {
                axis,
                start,
                end,
                step,
            },
            &[x],
        )
    }

    pub fn pad(
        &mut self,
        x: NodeId,
        axis: usize,
        before: usize,
        after: usize,
        interior: usize,
    ) -> Result<NodeId> {
        self.add(
            Op::Pad {
                axis,
                before,
                after,
                interior,
            },
            &[x],
        )
    }

    pub fn concat(&mut self, xs: &[NodeId], axis: usize) -> Result<NodeId> {
        if xs.len() == 1 {
            return Ok(xs[0]);
        }
        self.add(Op::Concat { axis }, xs)
    }

    // ----- contractions -----

    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.add(Op::MatMul, &[a, b])
    }

    pub fn conv2d(&mut self, x: NodeId, w: NodeId, p: ConvParams) -> Result<NodeId> {
        self.add(Op::Conv2d(p), &[x, w])
    }

    pub fn avg_pool2d(&mut self, x: NodeId, p: PoolParams) -> Result<NodeId> {
        self.add(Op::AvgPool2d(p), &[x])
    }

    pub fn max_pool2d(&mut self, x: NodeId, p: PoolParams) -> Result<NodeId> {
        self.add(Op::MaxPool2d(p), &[x])
    }

    pub fn gather(&mut self, table: NodeId, idx: NodeId) -> Result<NodeId> {
        self.add(Op::Gather, &[table, idx])
    }

    pub fn log_softmax(&mut self, x: NodeId, axis: usize) -> Result<NodeId> {
        self.add(Op::LogSoftmax { axis }, &[x])
    }
}
