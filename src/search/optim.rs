//! Optimisers of the bilevel loop.
