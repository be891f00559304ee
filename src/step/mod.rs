//! What every training step shares: the optimisers as graph nodes, in torch.optim's order of
//! operations. A search step ([`crate::search::step_graph`]) and an evaluation-training step
//! ([`crate::train`]) are each one graph built with these pieces; the executor keeps every
//! piece of state (weights, BN buffers, momentum buffers, Adam moments) in its variables
//! between steps. The host-side re-derivation of the same arithmetic, for tests only, is the
//! oracle in [`crate::check::oracle`].

pub mod optim;
