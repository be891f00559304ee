//! View algebra: a read of a buffer through slices, pads (without interior zeros),
//! broadcasts and reshapes composes into one affine read plus bounds ([`Affine`]; rule 4 of
//! the module documentation, claim 8 of proofs/gpu-kernel-choices.md).

use crate::graph::Op;

/// An affine read of a buffer through views: coordinate `c` of `shape` reads element
/// `offset + sum_d c_d strides[d]` when `lo[d] <= c_d < hi[d]` on every axis, else 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Affine {
    pub shape: Vec<usize>,
    pub offset: i64,
    pub strides: Vec<usize>,
    pub lo: Vec<usize>,
    pub hi: Vec<usize>,
}

fn ceil_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b) + i64::from(a.rem_euclid(b) != 0)
}

impl Affine {
    /// A buffer of `shape` read in row-major order.
    pub fn identity(shape: &[usize]) -> Affine {
        let mut strides = vec![0; shape.len()];
        let mut m = 1;
        for d in (0..shape.len()).rev() {
            strides[d] = m;
            m *= shape[d];
        }
        Affine {
            shape: shape.to_vec(),
            offset: 0,
            strides,
            lo: vec![0; shape.len()],
            hi: shape.to_vec(),
        }
    }

    /// Whether some coordinate of `shape` is outside the bounds.
    pub fn bounded(&self) -> bool {
        (0..self.shape.len()).any(|d| self.lo[d] != 0 || self.hi[d] != self.shape[d])
    }

    /// The read of `op`'s output (of shape `out`) when `self` is the read of its input, if
    /// affine: slice, pad without interior zeros, broadcast, and a reshape of an unbounded read
    /// whose strides allow it.
    pub fn apply(mut self, op: &Op, out: &[usize]) -> Option<Affine> {
        match op {
            Op::Slice {
                axis, start, step, ..
            } => {
                let (a, start, step) = (*axis, *start as i64, *step as i64);
                // Input coordinate start + step c'.
                self.offset += start * self.strides[a] as i64;
                self.strides[a] *= step as usize;
                let m = out[a] as i64;
                let lo = ceil_div(self.lo[a] as i64 - start, step).clamp(0, m);
                let hi = ceil_div(self.hi[a] as i64 - start, step).clamp(lo, m);
                self.lo[a] = lo as usize;
                self.hi[a] = hi as usize;
            }
            Op::Pad {
                axis,
                before,
                interior: 0,
                ..
            } => {
                // Input coordinate c' - before.
                let a = *axis;
                self.offset -= (*before * self.strides[a]) as i64;
                self.lo[a] += before;
                self.hi[a] += before;
            }
            Op::Reshape { .. } => {
                if self.bounded() {
                    return None;
                }
                self.strides = reshape_strides(&self.shape, &self.strides, out)?;
                self.lo = vec![0; out.len()];
                self.hi = out.to_vec();
            }
            Op::Broadcast { .. } => return self.broadcast(out),
            _ => return None,
        }
        self.shape = out.to_vec();
        Some(self)
    }

    /// The read of `self` broadcast (NumPy) to `out`; None if a stretched axis is bounded.
    pub fn broadcast(self, out: &[usize]) -> Option<Affine> {
        let lead = out.len().checked_sub(self.shape.len())?;
        let mut b = Affine {
            shape: out.to_vec(),
            offset: self.offset,
            strides: vec![0; out.len()],
            lo: vec![0; out.len()],
            hi: out.to_vec(),
        };
        for d in 0..self.shape.len() {
            let o = lead + d;
            if self.shape[d] == out[o] {
                b.strides[o] = self.strides[d];
                b.lo[o] = self.lo[d];
                b.hi[o] = self.hi[d];
            } else if self.shape[d] != 1 || self.lo[d] != 0 || self.hi[d] != 1 {
                return None;
            }
        }
        Some(b)
    }

    /// Stride 0 on axes of extent 1 (their coordinate is 0), so equal reads compare equal.
    pub(super) fn canonical(mut self) -> Affine {
        for d in 0..self.shape.len() {
            if self.shape[d] == 1 {
                self.strides[d] = 0;
            }
        }
        self
    }
}

/// Strides of a read of `shape` with `strides` reshaped (row-major) to `new`, if a strided read
/// expresses it (PyTorch's `computeStride`): axes merge only where the strides are contiguous.
fn reshape_strides(shape: &[usize], strides: &[usize], new: &[usize]) -> Option<Vec<usize>> {
    let mut out = vec![0; new.len()];
    if shape.is_empty() {
        return new.iter().all(|&n| n == 1).then_some(out);
    }
    let mut view_d = new.len() as isize - 1;
    let mut base = *strides.last()?;
    let (mut numel, mut view_numel) = (1usize, 1usize);
    for d in (0..shape.len()).rev() {
        numel *= shape[d];
        if d == 0 || (shape[d - 1] != 1 && strides[d - 1] != numel * base) {
            while view_d >= 0 && (view_numel < numel || new[view_d as usize] == 1) {
                out[view_d as usize] = view_numel * base;
                view_numel *= new[view_d as usize];
                view_d -= 1;
            }
            if view_numel != numel {
                return None;
            }
            if d > 0 {
                base = strides[d - 1];
                numel = 1;
                view_numel = 1;
            }
        }
    }
    (view_d == -1).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_strides_follow_pytorch() {
        assert_eq!(reshape_strides(&[2, 3], &[3, 1], &[6]), Some(vec![1]));
        assert_eq!(reshape_strides(&[6], &[1], &[2, 3]), Some(vec![3, 1]));
        assert_eq!(reshape_strides(&[3, 4], &[0, 1], &[12]), None);
        assert_eq!(reshape_strides(&[1, 1], &[8, 1], &[]), Some(vec![]));
        assert_eq!(reshape_strides(&[], &[], &[1, 1]), Some(vec![0, 0]));
        // Every other column (2 per column) of rows of 8: contiguous at step 2.
        assert_eq!(reshape_strides(&[3, 4], &[8, 2], &[12]), Some(vec![2]));
        // A column slice of rows of 10: rows and columns stay apart.
        assert_eq!(reshape_strides(&[3, 4], &[10, 2], &[12]), None);
        assert_eq!(
            reshape_strides(&[3, 4], &[10, 2], &[3, 2, 2]),
            Some(vec![10, 4, 2])
        );
    }

    #[test]
    fn ceil_div_rounds_up_for_negatives() {
        assert_eq!(ceil_div(-3, 2), -1);
        assert_eq!(ceil_div(3, 2), 2);
        assert_eq!(ceil_div(4, 2), 2);
        assert_eq!(ceil_div(0, 3), 0);
    }
}
