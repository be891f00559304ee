//! An independent re-derivation of the search and training steps on the host, for tests only
//! (never on a production path): ndarray arithmetic in f64 for everything the step graph
//! ([`crate::search::step_graph`], [`crate::train`]) computes as graph nodes, around graphs
//! that give each network's loss and gradients:
//!
//! * [`architect`]: the unrolled weights, the FD mixed HVP with the reference's in-place
//!   restore, the exact mixed HVP, the three architecture gradients;
//! * [`optim`]: SGD with momentum and weight decay, Adam, clip_grad_norm and the BN running
//!   statistics, in torch.optim's order of operations;
//! * [`step`]: one whole search iteration composed from those, as train_search.py runs it;
//! * [`train`]: one evaluation-training step, as train.py runs it.

pub mod architect;
pub mod optim;
pub mod step;
pub mod train;
