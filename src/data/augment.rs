//! The image transform of the original DARTS (spec §9.2), as torchvision computes it:
//!
//! 1. optional random crop back to the input size from the image zero-padded by `p` pixels on every
//!    side (torchvision `RandomCrop(size, padding=p)`; the padding is black, i.e. pixel value 0,
//!    before normalisation),
//! 2. optional horizontal flip with probability 0.5,
//! 3. to float in [0, 1] (`v / 255`) and per-channel normalisation `(x - mean) / std`,
//!    so a padded pixel reads `-mean / std`,
//! 4. optional Cutout(length) on the normalised image: one square hole, centre uniform over all
//!    pixels, rows `[y - length/2, y + length/2)` and the same for columns, clipped to the image,
//!    set to 0 in every channel.
//!
//! Random draws, in this order per image: crop top, crop left (each uniform in `0..=2p`), flip
//! (`u < 0.5`), Cutout centre row, then column. All come from the [`Rng`] passed in, so a given
//! stream always yields the same image.

use crate::data::dataset::DatasetKind;
use crate::{Error, Result, Rng};

/// A per-image transform from CHW uint8 pixels to normalised CHW f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    mean: Vec<f32>,
    std: Vec<f32>,
    crop_padding: Option<usize>,
    flip: bool,
    cutout: Option<usize>,
    /// `lut[c * 256 + v] = (v / 255 - mean[c]) / std[c]`, computed in f32 as torchvision does.
    lut: Vec<f32>,
}

impl Transform {
    /// Normalisation only: `(v / 255 - mean[c]) / std[c]` for channel `c`. One mean and one
    /// positive std per channel.
    pub fn normalize(mean: &[f32], std: &[f32]) -> Result<Transform> {
        if mean.is_empty() || mean.len() != std.len() {
            return Err(Error::invalid(
                "Transform::normalize",
                format!(
                    "need one mean and one std per channel, got {} and {}",
                    mean.len(),
                    std.len()
                ),
            ));
        }
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::invalid(
                "Transform::normalize",
                format!("std must be positive and finite, got {s}"),
            ));
        }
        if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
            return Err(Error::invalid(
                "Transform::normalize",
                format!("mean must be finite, got {m}"),
            ));
        }
        let lut = mean
            .iter()
            .zip(std)
            .flat_map(|(&m, &s)| (0..256).map(move |v| (v as f32 / 255.0 - m) / s))
            .collect();
        Ok(Transform {
            mean: mean.to_vec(),
            std: std.to_vec(),
            crop_padding: None,
            flip: false,
            cutout: None,
            lut,
        })
    }

    /// The test/"infer" transform of `kind`: normalisation only.
    pub fn eval(kind: DatasetKind) -> Transform {
        Transform::normalize(kind.mean(), kind.std()).expect("built-in constants are valid")
    }

    /// The training transform of `kind`: random crop with 4 pixels of zero padding, then a random
    /// horizontal flip (not for MNIST, whose digits change meaning when mirrored), then
    /// normalisation. Cutout is off, as in the DARTS search; add it with
    /// [`Transform::with_cutout`].
    pub fn train(kind: DatasetKind) -> Transform {
        let t = Transform::eval(kind).with_random_crop(4);
        match kind {
            DatasetKind::Cifar10 | DatasetKind::FashionMnist => t.with_flip(),
            DatasetKind::Mnist => t,
        }
    }

    /// Adds a random crop to the input size from the image zero-padded by `padding` pixels.
    pub fn with_random_crop(mut self, padding: usize) -> Transform {
        self.crop_padding = Some(padding);
        self
    }

    /// Adds a horizontal flip with probability 0.5.
    pub fn with_flip(mut self) -> Transform {
        self.flip = true;
        self
    }

    /// Adds Cutout with a square hole of side `length` (DARTS uses 16).
    pub fn with_cutout(mut self, length: usize) -> Transform {
        self.cutout = Some(length);
        self
    }

    /// Number of channels the transform normalises.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Per-channel means.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// Per-channel standard deviations.
    pub fn std(&self) -> &[f32] {
        &self.std
    }

    /// Padding of the random crop, if any.
    pub fn crop_padding(&self) -> Option<usize> {
        self.crop_padding
    }

    /// Whether images are flipped at random.
    pub fn flips(&self) -> bool {
        self.flip
    }

    /// Cutout hole side, if any.
    pub fn cutout(&self) -> Option<usize> {
        self.cutout
    }

    /// Transforms one image: `pixels` holds `channels * height * width` bytes (CHW), `out`
    /// receives as many f32 values. Random choices are drawn from `rng`.
    pub fn apply(
        &self,
        pixels: &[u8],
        [channels, height, width]: [usize; 3],
        rng: &mut Rng,
        out: &mut [f32],
    ) -> Result<()> {
        let numel = channels * height * width;
        if channels != self.channels() {
            return Err(Error::invalid(
                "Transform::apply",
                format!(
                    "image has {channels} channels, the normalisation {}",
                    self.channels()
                ),
            ));
        }
        if numel == 0 || pixels.len() != numel || out.len() != numel {
            return Err(Error::invalid(
                "Transform::apply",
                format!(
                    "a {channels}x{height}x{width} image needs {numel} pixels and outputs, got \
                     {} and {}",
                    pixels.len(),
                    out.len()
                ),
            ));
        }
        self.fill(pixels, [channels, height, width], rng, out);
        Ok(())
    }

    /// [`Transform::apply`] without the argument checks, for callers that checked once.
    pub(crate) fn fill(
        &self,
        pixels: &[u8],
        [channels, height, width]: [usize; 3],
        rng: &mut Rng,
        out: &mut [f32],
    ) {
        // Shift from output to source coordinates: source = output + offset - padding.
        let (dy, dx) = match self.crop_padding {
            Some(p) => {
                let top = rng.below(2 * p + 1) as isize;
                let left = rng.below(2 * p + 1) as isize;
                (top - p as isize, left - p as isize)
            }
            None => (0, 0),
        };
        let flip = self.flip && rng.next_f32() < 0.5;
        let plane = height * width;
        for c in 0..channels {
            let lut = &self.lut[c * 256..(c + 1) * 256];
            let src = &pixels[c * plane..(c + 1) * plane];
            for oy in 0..height {
                let row = &mut out[c * plane + oy * width..c * plane + (oy + 1) * width];
                let sy = oy as isize + dy;
                if sy < 0 || sy >= height as isize {
                    row.fill(lut[0]);
                    continue;
                }
                let src_row = &src[sy as usize * width..(sy as usize + 1) * width];
                for (ox, value) in row.iter_mut().enumerate() {
                    let cx = if flip { width - 1 - ox } else { ox };
                    let sx = cx as isize + dx;
                    *value = if sx < 0 || sx >= width as isize {
                        lut[0]
                    } else {
                        lut[src_row[sx as usize] as usize]
                    };
                }
            }
        }
        if let Some(length) = self.cutout {
            let y = rng.below(height);
            let x = rng.below(width);
            let half = length / 2;
            let (y1, y2) = (y.saturating_sub(half), (y + half).min(height));
            let (x1, x2) = (x.saturating_sub(half), (x + half).min(width));
            for c in 0..channels {
                for row in y1..y2 {
                    let start = c * plane + row * width;
                    out[start + x1..start + x2].fill(0.0);
                }
            }
        }
    }
}
