//! The bilevel search: the architecture gradient (first order, the paper's second order by
//! finite differences, and exact), the architect step and the weight optimiser.

pub mod architect;
pub mod checkpoint;
pub mod optim;
pub mod run;
