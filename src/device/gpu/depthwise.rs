//! The depthwise path of the conv family (`conv_depthwise_*` in `kernels/conv.cu`): several
//! depthwise convolutions of one shape per launch, [`GROUP_SLOTS`] at a time, one per row of
//! the grid. A plain depthwise [`ConvPlan`] runs as a group of one; a DARTS search edge runs the
//! first depthwise convolutions of its four separable and dilated candidates (which read the same
//! input) as one group, and the second ones of its two separable convolutions as another. Each
//! convolution of a group gets exactly the values, with the same bits, that it gets alone.

use super::conv::{self, BackwardInputs, ConvPlan};
use super::kernels;
use super::{
    DeviceBuffer, Executor, GROUP_SLOTS, GpuError, LaunchConfig, check_len, slot_or_first,
};

/// Threads per block of the forward's grid-stride loop.
const THREADS: u32 = 256;

const OP: &str = "depthwise conv2d";

fn invalid(message: String) -> GpuError {
    GpuError::Argument { op: OP, message }
}

/// `n` as the kernels' `int` (every length was checked to fit when its plan was made).
fn int(n: usize) -> Result<i32, GpuError> {
    i32::try_from(n).map_err(|_| invalid(format!("{n} is more than a kernel indexes")))
}

/// Checks that `plans` is a group the kernels can run: [`conv::first_of_group`]'s checks, and every
/// plan on the depthwise path with the first one's batch, channels and input and output sizes
/// (their windows may differ).
fn check_group(plans: &[&ConvPlan], counts: &[(&str, usize)]) -> Result<(), GpuError> {
    let first = conv::first_of_group(plans, counts)?;
    let shape = |p: &ConvPlan| {
        let g = p.geometry();
        (g.batch, g.c_in, g.input, g.output)
    };
    for (s, plan) in plans.iter().enumerate() {
        if !plan.is_depthwise() {
            return Err(invalid(format!(
                "convolution {s} is not depthwise: {:?}",
                plan.geometry()
            )));
        }
        if shape(plan) != shape(first) {
            return Err(invalid(format!(
                "convolution {s} has another shape than the first: {:?} and {:?}",
                plan.geometry(),
                first.geometry()
            )));
        }
    }
    Ok(())
}

/// The forwards `y_s = conv_s(x_s, w_s)` of a group of depthwise convolutions of one shape (see
/// [`ConvPlan::forward`] for one), in launches of [`GROUP_SLOTS`].
pub fn forward(
    exec: &dyn Executor,
    plans: &[&ConvPlan],
    xs: &[&DeviceBuffer<f32>],
    ws: &[&DeviceBuffer<f32>],
) -> Result<Vec<DeviceBuffer<f32>>, GpuError> {
    check_group(plans, &[("inputs", xs.len()), ("weights", ws.len())])?;
    for (s, plan) in plans.iter().enumerate() {
        check_len(OP, &format!("x {s}"), xs[s], plan.lens().x)?;
        check_len(OP, &format!("weight {s}"), ws[s], plan.lens().w)?;
    }
    let mut ys = Vec::with_capacity(plans.len());
    for ((plans, xs), ws) in plans
        .chunks(GROUP_SLOTS)
        .zip(xs.chunks(GROUP_SLOTS))
        .zip(ws.chunks(GROUP_SLOTS))
    {
        let (g, lens) = (plans[0].geometry(), plans[0].lens());
        let mut out = (0..plans.len())
            .map(|_| exec.alloc(lens.y))
            .collect::<Result<Vec<_>, _>>()?;
        let mut config = LaunchConfig::grid_stride(lens.y, THREADS);
        config.grid[1] = plans.len() as u32;
        let window = |s: usize| slot_or_first(plans, s).window();
        let xs_slot = |s: usize| *slot_or_first(xs, s);
        let ws_slot = |s: usize| *slot_or_first(ws, s);
        let mut outs = out.iter_mut();
        let [y0, y1, y2, y3] = std::array::from_fn(|_| outs.next());
        // SAFETY: row s < K of the grid (K = plans.len(), at most GROUP_SLOTS) writes ys[s] at
        // [0..N·C·Ho·Wo), allocated here at that length, and reads xs[s] inside its (n, c) planes
        // of H·W at bounds-checked positions and ws[s] at [0..C·kh·kw), both checked above to hold
        // those lengths; the slots past K are never read, and their outputs are null. Every plan
        // checked its sizes to fit an int.
        unsafe {
            kernels::conv_depthwise_fwd_f32(
                exec,
                config,
                xs_slot(0),
                xs_slot(1),
                xs_slot(2),
                xs_slot(3),
                ws_slot(0),
                ws_slot(1),
                ws_slot(2),
                ws_slot(3),
                y0,
                y1,
                y2,
                y3,
                int(g.batch)?,
                int(g.c_in)?,
                window(0),
                window(1),
                window(2),
                window(3),
            )
        }?;
        ys.extend(out);
    }
    Ok(ys)
}

/// The gradients `[dx_s, dw_s]` that `needs[s]` asks for (`[input, weight]`) of a group of
/// depthwise convolutions of one shape (see [`ConvPlan::backward`] for one), in launches of
/// [`GROUP_SLOTS`]. In each launch, every row of the grid starts with one block per
/// (channel, tap) of its weight gradient (a fixed block tree each, so the same bits on every
/// run), as many as the widest window needs, then a grid-stride share of the input elements.
pub fn backward(
    exec: &dyn Executor,
    plans: &[&ConvPlan],
    inputs: &[BackwardInputs],
    needs: &[[bool; 2]],
) -> Result<Vec<[Option<DeviceBuffer<f32>>; 2]>, GpuError> {
    check_group(
        plans,
        &[("sets of buffers", inputs.len()), ("needs", needs.len())],
    )?;
    for (s, (plan, b)) in plans.iter().zip(inputs).enumerate() {
        let lens = plan.lens();
        check_len(OP, &format!("x {s}"), b.x, lens.x)?;
        check_len(OP, &format!("weight {s}"), b.w, lens.w)?;
        check_len(OP, &format!("dy {s}"), b.dy, lens.y)?;
    }
    let mut grads = Vec::with_capacity(plans.len());
    for ((plans, inputs), needs) in plans
        .chunks(GROUP_SLOTS)
        .zip(inputs.chunks(GROUP_SLOTS))
        .zip(needs.chunks(GROUP_SLOTS))
    {
        let mut out = plans
            .iter()
            .zip(needs)
            .map(|(plan, &[input, weight])| {
                let lens = plan.lens();
                let dx = input.then(|| exec.alloc(lens.x)).transpose()?;
                let dw = weight.then(|| exec.alloc(lens.w)).transpose()?;
                Ok([dx, dw])
            })
            .collect::<Result<Vec<_>, GpuError>>()?;
        let weight_blocks = (plans.iter().zip(needs))
            .filter(|(_, need)| need[1])
            .map(|(plan, _)| plan.lens().w)
            .max()
            .unwrap_or(0);
        let (g, lens) = (plans[0].geometry(), plans[0].lens());
        let threads = plans[0].depthwise_backward_threads();
        let input_blocks = match needs.iter().any(|need| need[0]) {
            true => LaunchConfig::grid_stride(lens.x, threads).grid[0] as usize,
            false => 0,
        };
        if weight_blocks + input_blocks > 0 {
            let mut config =
                LaunchConfig::linear(int(weight_blocks + input_blocks)? as u32, threads);
            config.grid[1] = plans.len() as u32;
            let x = |s: usize| slot_or_first(inputs, s).x;
            let w = |s: usize| slot_or_first(inputs, s).w;
            let dy = |s: usize| slot_or_first(inputs, s).dy;
            let window = |s: usize| slot_or_first(plans, s).window();
            let (dxs, dws): (Vec<_>, Vec<_>) = out
                .iter_mut()
                .map(|[dx, dw]| (dx.as_mut(), dw.as_mut()))
                .unzip();
            let (mut dxs, mut dws) = (dxs.into_iter(), dws.into_iter());
            let [dx0, dx1, dx2, dx3] = std::array::from_fn(|_| dxs.next().flatten());
            let [dw0, dw1, dw2, dw3] = std::array::from_fn(|_| dws.next().flatten());
            // SAFETY: in row s < K of the grid (K = plans.len() ≤ GROUP_SLOTS), the blocks
            // below weight_blocks (the largest C·kh·kw of the rows that want dw) write dw_s[job]
            // for job < C·kh·kw of slot s, reading x_s and dy_s inside the (n, c) planes at
            // bounds-checked positions; the others write dx_s[0..N·C·H·W) and read dy_s and
            // w_s[c·kh·kw + tap] likewise. Every buffer was checked above against its plan's
            // lengths, dx_s and dw_s were allocated at them, a gradient not wanted is null, the
            // slots past K are never read, and the sizes fit an int.
            unsafe {
                kernels::conv_depthwise_bwd_f32(
                    exec,
                    config,
                    x(0),
                    x(1),
                    x(2),
                    x(3),
                    dy(0),
                    dy(1),
                    dy(2),
                    dy(3),
                    w(0),
                    w(1),
                    w(2),
                    w(3),
                    dx0,
                    dx1,
                    dx2,
                    dx3,
                    dw0,
                    dw1,
                    dw2,
                    dw3,
                    int(g.batch)?,
                    int(g.c_in)?,
                    window(0),
                    window(1),
                    window(2),
                    window(3),
                    int(weight_blocks)?,
                )
            }?;
        }
        grads.extend(out);
    }
    Ok(grads)
}
