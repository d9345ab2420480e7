//! Learning-rate schedules as closed forms of the epoch (PyTorch's `CosineAnnealingLR` and
//! `StepLR`), so a resumed run needs only the epoch number to get its learning rate back.

use std::f64::consts::PI;

/// Cosine annealing from `base_lr` at epoch 0 towards `eta_min` at epoch `total_epochs`:
/// `eta_min + (base_lr − eta_min)·(1 + cos(π·epoch/total_epochs))/2`, computed in f64.
/// `total_epochs = 0` means no annealing (`base_lr`).
pub fn cosine_lr(base_lr: f32, eta_min: f32, epoch: usize, total_epochs: usize) -> f32 {
    if total_epochs == 0 {
        return base_lr;
    }
    let (base, min) = (base_lr as f64, eta_min as f64);
    let phase = PI * epoch as f64 / total_epochs as f64;
    (min + (base - min) * (1.0 + phase.cos()) / 2.0) as f32
}

/// Step decay: `base_lr · gamma^⌊epoch / step_size⌋`, computed in f64. `step_size = 0` means no
/// decay (`base_lr`).
pub fn step_lr(base_lr: f32, gamma: f32, step_size: usize, epoch: usize) -> f32 {
    let Some(steps) = epoch.checked_div(step_size) else {
        return base_lr;
    };
    let steps = i32::try_from(steps).unwrap_or(i32::MAX);
    (base_lr as f64 * (gamma as f64).powi(steps)) as f32
}
