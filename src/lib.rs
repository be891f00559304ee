//! darts: a reference implementation of DARTS (Liu, Simonyan & Yang, ICLR 2019).
//!
//! Layers (data flows down): `graph` (op graph, shape rules, VJP rules) -> `autodiff`
//! (grad as a graph transform, HVPs) -> `exec` (CPU reference and wgpu executors) -> `check`
//! (finite differences, adjoint tests, dense Hessians) -> DARTS and the CLI.

pub mod autodiff;
pub mod check;
pub mod darts;
pub mod data;
pub mod exec;
pub mod graph;
pub mod io;
pub mod linalg;
pub mod report;
pub mod search;
pub mod step;
pub mod train;
