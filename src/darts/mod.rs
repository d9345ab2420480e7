//! DARTS on the engine: genotypes, the CNN search space and network, the architect.

pub mod genotype;
