//! Dropout kernels. Masks come from the counter-based Philox stream ([`uniform_at`]), so a mask
//! depends only on `(seed, element index)`: any device, and any thread order, draws the same one.

use rayon::prelude::*;

use super::CHUNK;
use crate::rng::uniform_at;

/// The multipliers of an inverted-dropout mask of `n` elements: element `i` is `1/(1−p)` when
/// `uniform_at(seed, i) ≥ p` (kept) and 0 otherwise (dropped).
pub fn mask(n: usize, p: f32, seed: u64) -> Vec<f32> {
    let scale = 1.0 / (1.0 - p);
    let mut mask = vec![0.0; n];
    mask.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (k, m) in chunk.iter_mut().enumerate() {
                let kept = uniform_at(seed, (c * CHUNK + k) as u64) >= p;
                *m = if kept { scale } else { 0.0 };
            }
        });
    mask
}

/// `y[i] = x[i] · mask[(i / inner) % mask.len()]`: the mask broadcast over `x` seen as
/// `[outer, mask.len(), inner]` (plain dropout: `outer = inner = 1`; a mask shared over the time
/// steps of `[T, B, F]`: `outer = T`; one multiplier per sample of `[N, ...]`: `outer = 1`).
pub fn apply_mask(x: &[f32], mask: &[f32], inner: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (y, x))| {
            // The position in the [outer, mask.len(), inner] view, advanced without dividing.
            let start = c * CHUNK;
            let (mut m, mut k) = ((start / inner) % mask.len(), start % inner);
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x * mask[m];
                k += 1;
                if k == inner {
                    k = 0;
                    m = if m + 1 == mask.len() { 0 } else { m + 1 };
                }
            }
        });
    y
}
