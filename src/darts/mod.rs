//! DARTS on the engine: genotypes, the CNN search space and network, the architect.

pub mod architect;
pub mod cnn;
pub mod genotype;
pub mod searcher;
