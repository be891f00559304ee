//! Tensor shapes and NumPy-style broadcasting.

use std::fmt;

/// The dimensions of a tensor, outermost first (row-major, NCHW for images).
///
/// Rank 0 (`[]`) is a scalar.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    pub fn scalar() -> Self {
        Shape(Vec::new())
    }

    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut s = vec![1; self.rank()];
        for i in (0..self.rank().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * self.0[i + 1];
        }
        s
    }

    /// NumPy broadcasting of two shapes: align on the right, each pair of dimensions must be
    /// equal or one of them 1. Returns `None` when they do not broadcast.
    pub fn broadcast(a: &Shape, b: &Shape) -> Option<Shape> {
        let r = a.rank().max(b.rank());
        let mut out = vec![0; r];
        for (i, o) in out.iter_mut().enumerate() {
            let da = if i + a.rank() >= r {
                a.0[i + a.rank() - r]
            } else {
                1
            };
            let db = if i + b.rank() >= r {
                b.0[i + b.rank() - r]
            } else {
                1
            };
            *o = if da == db || db == 1 {
                da
            } else if da == 1 {
                db
            } else {
                return None;
            };
        }
        Some(Shape(out))
    }

    /// True when `self` broadcasts to `target` (without `target` changing).
    pub fn broadcasts_to(&self, target: &Shape) -> bool {
        Shape::broadcast(self, target).as_ref() == Some(target)
    }

    /// The axes of `target` over which a tensor of shape `self` was broadcast to reach
    /// `target` (leading axes that `self` lacks, and axes where `self` has 1 and `target` not).
    pub fn broadcast_axes(&self, target: &Shape) -> Vec<usize> {
        let lead = target.rank() - self.rank();
        (0..target.rank())
            .filter(|&i| i < lead || (self.0[i - lead] == 1 && target.0[i] != 1))
            .collect()
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        let s = |d: &[usize]| Shape::from(d);
        assert_eq!(
            Shape::broadcast(&s(&[2, 1, 3]), &s(&[4, 1])),
            Some(s(&[2, 4, 3]))
        );
        assert_eq!(Shape::broadcast(&s(&[]), &s(&[5])), Some(s(&[5])));
        assert_eq!(Shape::broadcast(&s(&[2, 3]), &s(&[3, 2])), None);
        assert_eq!(s(&[1, 3]).broadcast_axes(&s(&[2, 4, 3])), vec![0, 1]);
        assert_eq!(s(&[2, 3]).strides(), vec![3, 1]);
    }
}
