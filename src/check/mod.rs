//! Verification machinery: derived tolerances, gradient checks (VJP vs finite differences,
//! adjoint identity, second order), the case suite, and reports.

pub mod bounds;
pub mod bug_zoo;
pub mod cases;
pub mod compare;
pub mod gpu_compare;
pub mod gradcheck;
pub mod hessian;
pub mod oracle;
pub mod report;
pub mod tolerance;
