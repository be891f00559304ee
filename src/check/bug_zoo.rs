//! The bug zoo: porting mistakes found in public DARTS ports, each as a deliberately wrong
//! variant of our architect ([`Pieces`] with one method overridden), so that the audit's
//! `darts compare` can be shown to flag every one and to name the first quantity it changes
//! (tests/compare.rs). Never on a production path.

use crate::graph::{Graph, NodeId, Result as R};
use crate::search::architect::{unrolled_weights, Pieces};
use crate::step::optim::clip_coefficient;

/// One porting mistake.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bug {
    /// `(p - n) / 2 * eps` instead of `(p - n) / (2 * eps)`: the quotient multiplied by R.
    Precedence,
    /// The weights moved along v, then restored along v with its tensors paired to the wrong
    /// weights (a parameter list zipped with a differently ordered gradient list: each tensor
    /// takes the next one of the same shape), so the weight step starts from
    /// w + R (v_other - v) instead of w.
    RestoreAlongOther,
    /// The unrolled step without the coupled weight decay lambda w.
    NoWeightDecay,
    /// The unrolled step without the momentum term mu buf.
    NoMomentum,
    /// R = 0.01 / sum_i ||v_i|| (the per-tensor norms added) instead of the 2-norm of all of v.
    WrongNorm,
    /// The finite difference taken at w' instead of w.
    FdAtUnrolled,
    /// The unrolled step from the gradient clipped to total norm `max_norm` (the weight
    /// step's clip applied too early).
    ClippedUnrolled { max_norm: f64 },
}

impl Bug {
    /// Every bug, with the settings a test gives it.
    pub fn all(max_norm: f64) -> [Bug; 7] {
        [
            Bug::Precedence,
            Bug::RestoreAlongOther,
            Bug::NoWeightDecay,
            Bug::NoMomentum,
            Bug::WrongNorm,
            Bug::FdAtUnrolled,
            Bug::ClippedUnrolled { max_norm },
        ]
    }

    /// Whether its effect shows in a `darts gradients` dump (else only after the weight step,
    /// in a `darts step` dump).
    pub fn shows_in_gradients(&self) -> bool {
        *self != Bug::RestoreAlongOther
    }
}

impl Pieces for Bug {
    fn name(&self) -> &str {
        match self {
            Bug::Precedence => "precedence",
            Bug::RestoreAlongOther => "restore-along-other",
            Bug::NoWeightDecay => "no-weight-decay",
            Bug::NoMomentum => "no-momentum",
            Bug::WrongNorm => "wrong-norm",
            Bug::FdAtUnrolled => "fd-at-unrolled",
            Bug::ClippedUnrolled { .. } => "clipped-unrolled",
        }
    }

    fn unrolled(
        &self,
        g: &mut Graph,
        (w, grad): (&[NodeId], &[NodeId]),
        buf: Option<(&[NodeId], f64)>,
        xi: NodeId,
        weight_decay: f64,
    ) -> R<Vec<NodeId>> {
        match *self {
            Bug::NoWeightDecay => unrolled_weights(g, (w, grad), buf, xi, 0.0),
            Bug::NoMomentum => unrolled_weights(g, (w, grad), None, xi, weight_decay),
            Bug::ClippedUnrolled { max_norm } => {
                let clip = clip_coefficient(g, grad, max_norm)?;
                let clipped = grad
                    .iter()
                    .map(|&gi| g.mul(gi, clip.factor))
                    .collect::<R<Vec<_>>>()?;
                unrolled_weights(g, (w, &clipped), buf, xi, weight_decay)
            }
            _ => unrolled_weights(g, (w, grad), buf, xi, weight_decay),
        }
    }

    fn fd_point<'a>(&self, w: &'a [NodeId], w_prime: &'a [NodeId]) -> &'a [NodeId] {
        if *self == Bug::FdAtUnrolled {
            w_prime
        } else {
            w
        }
    }

    fn fd_norm(&self, g: &mut Graph, d: &[NodeId]) -> R<NodeId> {
        if *self != Bug::WrongNorm {
            return crate::step::optim::total_norm(g, d, false);
        }
        let mut acc: Option<NodeId> = None;
        for &t in d {
            let n = crate::step::optim::total_norm(g, &[t], false)?;
            acc = Some(match acc {
                None => n,
                Some(a) => g.add2(a, n)?,
            });
        }
        match acc {
            Some(a) => Ok(a),
            None => g.scalar(0.0),
        }
    }

    fn fd_quotient(&self, g: &mut Graph, diff: NodeId, r: NodeId) -> R<NodeId> {
        let two = g.scalar(2.0)?;
        if *self == Bug::Precedence {
            let half = g.div(diff, two)?;
            return g.mul(half, r);
        }
        let two_r = g.mul(two, r)?;
        g.div(diff, two_r)
    }

    fn fd_restore_direction(&self, g: &mut Graph, d: &[NodeId], _at: &[NodeId]) -> R<Vec<NodeId>> {
        if *self != Bug::RestoreAlongOther {
            return Ok(d.to_vec());
        }
        let shape = |i: usize| g.shape(d[i]).dims().to_vec();
        Ok((0..d.len())
            .map(|i| {
                let next = (1..d.len())
                    .map(|k| (i + k) % d.len())
                    .find(|&j| shape(j) == shape(i));
                d[next.unwrap_or(i)]
            })
            .collect())
    }
}
