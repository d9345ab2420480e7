//! The CNN search space: candidate operations and the search network.

pub mod ops;
pub mod search;
