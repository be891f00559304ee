//! The bilevel search: the architecture gradient (first order, the paper's second order by
//! finite differences, and exact) as graph pieces, the one search step graph that advances
//! every search on every executor, the loop around it with checkpoints, and the
//! `darts gradients` graph.

pub mod alpha_hessian;
pub mod architect;
pub mod audit;
pub mod checkpoint;
pub mod early_stop;
pub mod gradients;
pub mod options;
pub mod recurrent;
pub mod recurrent_run;
pub mod recurrent_step;
pub mod run;
pub mod step_graph;
pub mod stepper;
