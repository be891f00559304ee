//! Row gather (embedding lookup) and its transpose, scatter-add.
//!
//! Derivation: proofs/elementwise.md (linear maps and their transposes).

use crate::graph::Shape;

pub fn gather_shape(table: &Shape, idx: &Shape) -> std::result::Result<Shape, String> {
    if table.rank() < 1 {
        return Err("the table must have rank >= 1".into());
    }
    if idx.rank() != 1 {
        return Err("indices must have rank 1".into());
    }
    let mut d = vec![idx.dims()[0]];
    d.extend_from_slice(&table.dims()[1..]);
    Ok(Shape(d))
}

pub fn scatter_shape(idx: &Shape, src: &Shape, rows: usize) -> std::result::Result<Shape, String> {
    if idx.rank() != 1 || src.rank() < 1 || src.dims()[0] != idx.dims()[0] {
        return Err("indices must be [n] and the source [n, ...]".into());
    }
    if rows == 0 {
        return Err("scatter target needs at least one row".into());
    }
    let mut d = vec![rows];
    d.extend_from_slice(&src.dims()[1..]);
    Ok(Shape(d))
}
