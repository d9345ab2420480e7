//! Philox4x32-10, a counter-based random number generator (Salmon et al., SC'11).
//!
//! A counter-based generator maps (key, counter) to random bits with no hidden state, so the
//! value at position `i` of a stream depends only on `(seed, i)`. That is what lets a dropout mask
//! be identical on the CPU and on any GPU, whatever order the threads run in. [`Rng`] wraps it in
//! a sequential stream for initialisation and data shuffling.

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Ten rounds of Philox4x32 on `counter` under `key`: four independent 32-bit random words.
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(PHILOX_W0);
            k[1] = k[1].wrapping_add(PHILOX_W1);
        }
        let p0 = (PHILOX_M0 as u64) * (c[0] as u64);
        let p1 = (PHILOX_M1 as u64) * (c[2] as u64);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// The `index`-th uniform number in [0, 1) of the stream named by `seed`: word `index % 4` of
/// block `index / 4`. Uses the top 24 bits, so every value is an exact f32.
pub fn uniform_at(seed: u64, index: u64) -> f32 {
    let block = index / 4;
    let words = philox4x32(
        [block as u32, (block >> 32) as u32, 0, 0],
        [seed as u32, (seed >> 32) as u32],
    );
    (words[(index % 4) as usize] >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// A seeded sequential random stream on top of Philox: `next_*` walks the counter forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    seed: u64,
    counter: u64,
}

impl Rng {
    /// A stream that starts at position 0 of the Philox stream named by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { seed, counter: 0 }
    }

    /// The seed and position, for checkpoints: `Rng::resume(seed, position)` continues exactly.
    pub fn state(&self) -> (u64, u64) {
        (self.seed, self.counter)
    }

    /// A stream positioned where [`Rng::state`] said.
    pub fn resume(seed: u64, position: u64) -> Rng {
        Rng {
            seed,
            counter: position,
        }
    }

    /// A uniform f32 in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        let u = uniform_at(self.seed, self.counter);
        self.counter += 1;
        u
    }

    /// A uniform f32 in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next_f32()
    }

    /// A standard normal sample by the Box-Muller transform (two uniforms per sample).
    pub fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.next_f32() as f64; // in (0, 1], so ln is finite
        let u2 = self.next_f32() as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// A uniform integer in [0, n), for n > 0 (multiply-shift on 32 random bits).
    pub fn below(&mut self, n: usize) -> usize {
        let bits = (self.next_f32() * 16_777_216.0) as u64;
        ((bits * n as u64) >> 24) as usize
    }

    /// A fresh seed for a sub-stream (e.g. one dropout mask), drawn from this stream.
    pub fn next_seed(&mut self) -> u64 {
        let hi = (self.next_f32() * 16_777_216.0) as u64;
        let lo = (self.next_f32() * 16_777_216.0) as u64;
        (hi << 24) | lo
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer test from the Random123 distribution (philox4x32_10, all-ones input).
    #[test]
    fn philox_known_answer() {
        let out = philox4x32([0xffff_ffff; 4], [0xffff_ffff; 2]);
        assert_eq!(out, [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]);
        let out = philox4x32([0; 4], [0; 2]);
        assert_eq!(out, [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
    }

    #[test]
    fn uniform_is_in_range_and_roughly_flat() {
        let mut rng = Rng::new(7);
        let xs: Vec<f32> = (0..20_000).map(|_| rng.next_f32()).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut rng = Rng::new(3);
        let xs: Vec<f64> = (0..20_000).map(|_| rng.normal() as f64).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
