//! The bilevel search: the architecture gradient (first order, the paper's second order by
//! finite differences, and exact), the architect step and the weight optimiser; and the
//! evaluation training of a found genotype from scratch.

pub mod architect;
pub mod checkpoint;
pub mod optim;
pub mod run;
pub mod step_graph;
pub mod train_eval;
