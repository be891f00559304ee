//! Round-off bounds of graph outputs: the library's model (darts::check::bounds), evaluated
//! from feeds on the CPU in f64.

pub use darts::check::bounds::GraphBounds;
