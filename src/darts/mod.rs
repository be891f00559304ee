//! DARTS itself: the candidate operations, MixedOp, cells and the search network (built as
//! graphs of primitives), named parameters with the reference's state_dict names, and genotype
//! derivation. Facts matched: ../shared/reference/REFERENCE_NOTES.md sections 1-3.

pub mod batch_file;
pub mod eval_network;
pub mod genotype;
pub mod init;
pub mod names;
pub mod network;
pub mod npz;
pub mod ops;
pub mod params;
pub mod rnn;

/// The candidate operations of the conv search space, in the reference's column order of
/// the alpha matrices (cnn/genotypes.py PRIMITIVES).
pub const PRIMITIVES: [&str; 8] = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
];

/// Number of edges (alpha rows) of a cell with `steps` intermediate nodes:
/// k = sum_{i < steps} (2 + i).
pub fn num_edges(steps: usize) -> usize {
    (0..steps).map(|i| 2 + i).sum()
}
