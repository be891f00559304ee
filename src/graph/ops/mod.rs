//! Primitive families: for each, its shape rule and its VJP rule, side by side.
//!
//! A VJP rule receives the node and the node id of its output cotangent and returns, for each
//! input, the id of a node computing that input's cotangent (`None` for a zero derivative). Rules
//! only add primitive nodes; they never read values, so the gradient graph can be
//! differentiated again. A rule may return a cotangent in the broadcast output shape; the
//! autodiff driver sums it back to the input's shape (one place for un-broadcasting).

pub mod conv;
pub mod elementwise;
pub mod gather;
pub mod matmul;
pub mod movement;
pub mod pool;
pub mod reduce;
pub mod softmax;

use super::{Graph, NodeId, Op, Result, Shape};

/// The output shape of `op` applied to inputs of the given shapes, or a sentence saying why
/// the node is ill-formed (the caller adds op name, label and shapes).
pub fn infer_shape(op: &Op, inputs: &[&Shape]) -> std::result::Result<Shape, String> {
    let arity = |n: usize| -> std::result::Result<(), String> {
        if inputs.len() == n {
            Ok(())
        } else {
            Err(format!("expects {n} inputs, got {}", inputs.len()))
        }
    };
    match op {
        Op::Input { shape, .. } | Op::Const { shape, .. } => {
            arity(0)?;
            Ok(shape.clone())
        }
        Op::Unary(_) => {
            arity(1)?;
            Ok(inputs[0].clone())
        }
        Op::Binary(_) => {
            arity(2)?;
            elementwise::binary_shape(inputs[0], inputs[1])
        }
        Op::Select => {
            arity(3)?;
            elementwise::select_shape(inputs)
        }
        Op::ReduceSum { axes } | Op::ReduceMax { axes } => {
            arity(1)?;
            reduce::shape(inputs[0], axes)
        }
        Op::Broadcast { shape } => {
            arity(1)?;
            movement::broadcast_shape(inputs[0], shape)
        }
        Op::Reshape { shape } => {
            arity(1)?;
            movement::reshape_shape(inputs[0], shape)
        }
        Op::Permute { perm } => {
            arity(1)?;
            movement::permute_shape(inputs[0], perm)
        }
        Op::Slice {
            axis,
            start,
            end,
            step,
        } => {
            arity(1)?;
            movement::slice_shape(inputs[0], *axis, *start, *end, *step)
        }
        Op::Pad {
            axis,
            before,
            after,
            interior,
        } => {
            arity(1)?;
            movement::pad_shape(inputs[0], *axis, *before, *after, *interior)
        }
        Op::Concat { axis } => movement::concat_shape(inputs, *axis),
        Op::MatMul => {
            arity(2)?;
            matmul::shape(inputs[0], inputs[1])
        }
        Op::Conv2d(p) => {
            arity(2)?;
            conv::conv_shape(inputs[0], inputs[1], p)
        }
        Op::Conv2dInputGrad { p, in_hw } => {
            arity(2)?;
            conv::input_grad_shape(inputs[0], inputs[1], p, *in_hw)
        }
        Op::Conv2dWeightGrad { p, kernel } => {
            arity(2)?;
            conv::weight_grad_shape(inputs[0], inputs[1], p, *kernel)
        }
        Op::AvgPool2d(p) | Op::MaxPool2d(p) => {
            arity(1)?;
            pool::pool_shape(inputs[0], p)
        }
        Op::AvgPool2dGrad { p, in_hw } => {
            arity(1)?;
            pool::avg_grad_shape(inputs[0], p, *in_hw)
        }
        Op::MaxPool2dGrad(p) => {
            arity(2)?;
            pool::max_grad_shape(inputs[0], inputs[1], p)
        }
        Op::MaxPool2dGather(p) => {
            arity(2)?;
            pool::max_gather_shape(inputs[0], inputs[1], p)
        }
        Op::Gather => {
            arity(2)?;
            gather::gather_shape(inputs[0], inputs[1])
        }
        Op::ScatterAdd { rows } => {
            arity(2)?;
            gather::scatter_shape(inputs[0], inputs[1], *rows)
        }
        Op::LogSoftmax { axis } => {
            arity(1)?;
            softmax::shape(inputs[0], *axis)
        }
    }
}

/// Cotangents of the inputs of node `id` given the cotangent `cot` of its output.
pub fn vjp(g: &mut Graph, id: NodeId, cot: NodeId) -> Result<Vec<Option<NodeId>>> {
    let node = g.node(id).clone();
    let x = &node.inputs;
    match &node.op {
        Op::Input { .. } | Op::Const { .. } => Ok(vec![]),
        Op::Unary(u) => Ok(vec![elementwise::unary_vjp(g, *u, x[0], id, cot)?]),
        Op::Binary(b) => elementwise::binary_vjp(g, *b, x[0], x[1], id, cot),
        Op::Select => elementwise::select_vjp(g, x[0], cot),
        Op::ReduceSum { .. } => Ok(vec![Some(g.broadcast_to(cot, node_shape(g, x[0]))?)]),
        Op::ReduceMax { axes } => Ok(vec![Some(reduce::max_vjp(g, x[0], id, axes, cot)?)]),
        // The driver sums the broadcast cotangent back to the input shape.
        Op::Broadcast { .. } => Ok(vec![Some(cot)]),
        Op::Reshape { .. } => Ok(vec![Some(g.reshape(cot, node_shape(g, x[0]))?)]),
        Op::Permute { perm } => Ok(vec![Some(movement::permute_vjp(g, perm, cot)?)]),
        Op::Slice {
            axis,
            start,
            end: _,
            step,
        } => Ok(vec![Some(movement::slice_vjp(
            g, x[0], *axis, *start, *step, cot,
        )?)]),
        Op::Pad {
            axis,
            before,
            interior,
            ..
        } => Ok(vec![Some(movement::pad_vjp(
            g, x[0], *axis, *before, *interior, cot,
        )?)]),
        Op::Concat { axis } => movement::concat_vjp(g, x, *axis, cot),
        Op::MatMul => matmul::vjp(g, x[0], x[1], cot),
        Op::Conv2d(p) => conv::conv_vjp(g, x[0], x[1], *p, cot),
        Op::Conv2dInputGrad { p, .. } => conv::input_grad_vjp(g, x[0], x[1], *p, cot),
        Op::Conv2dWeightGrad { p, .. } => conv::weight_grad_vjp(g, x[0], x[1], *p, cot),
        Op::AvgPool2d(p) => Ok(vec![Some(pool::avg_vjp(g, x[0], *p, cot)?)]),
        Op::AvgPool2dGrad { p, .. } => Ok(vec![Some(g.add(Op::AvgPool2d(*p), &[cot])?)]),
        Op::MaxPool2d(p) => Ok(vec![Some(g.add(Op::MaxPool2dGrad(*p), &[x[0], cot])?)]),
        // The argmax is piecewise constant in x: no derivative through it.
        Op::MaxPool2dGrad(p) => Ok(vec![
            None,
            Some(g.add(Op::MaxPool2dGather(*p), &[x[0], cot])?),
        ]),
        Op::MaxPool2dGather(p) => Ok(vec![
            None,
            Some(g.add(Op::MaxPool2dGrad(*p), &[x[0], cot])?),
        ]),
        Op::Gather => Ok(vec![
            Some(g.add(
                Op::ScatterAdd {
                    rows: node_shape(g, x[0]).dims()[0],
                },
                &[x[1], cot],
            )?),
            None,
        ]),
        Op::ScatterAdd { .. } => Ok(vec![None, Some(g.add(Op::Gather, &[cot, x[0]])?)]),
        Op::LogSoftmax { axis } => Ok(vec![Some(softmax::vjp(g, id, *axis, cot)?)]),
    }
}

fn node_shape(g: &Graph, id: NodeId) -> Shape {
    g.shape(id).clone()
}

/// Checks an axis index against a rank.
pub(crate) fn check_axis(axis: usize, rank: usize) -> std::result::Result<(), String> {
    if axis < rank {
        Ok(())
    } else {
        Err(format!("axis {axis} is out of range for rank {rank}"))
    }
}
