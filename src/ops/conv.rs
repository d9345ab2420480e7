//! 2-D convolution (PyTorch's `conv2d`): stride, zero padding, dilation and channel groups, with
//! rectangular kernels.

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::device::cpu::conv::{self as k, ConvGeometry};
use crate::device::gpu::conv::{self as gpu_conv, BackwardInputs, ConvPlan};
use crate::device::gpu::{DeviceBuffer, Executor};
use crate::ops::{buffer, common_device};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Stride, padding, dilation (each `[height, width]`) and groups of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Step between windows.
    pub stride: [usize; 2],
    /// Implicit zeros added on both sides of the input.
    pub padding: [usize; 2],
    /// Spacing between kernel taps (2 gives DARTS' dilated convs).
    pub dilation: [usize; 2],
    /// Channel groups: `Cin/groups` input channels feed each block of `Cout/groups` outputs
    /// (`groups == Cin == Cout` is a depthwise conv).
    pub groups: usize,
}

impl Default for Conv2dParams {
    /// Stride 1, padding 0, dilation 1, one group.
    fn default() -> Self {
        Conv2dParams {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        }
    }
}

impl Conv2dParams {
    /// Square stride and padding, dilation 1, one group.
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dParams {
            stride: [stride; 2],
            padding: [padding; 2],
            ..Conv2dParams::default()
        }
    }

    /// The same parameters with dilation `d` along both axes.
    pub fn dilation(self, d: usize) -> Self {
        Conv2dParams {
            dilation: [d; 2],
            ..self
        }
    }

    /// The same parameters with `g` channel groups.
    pub fn groups(self, g: usize) -> Self {
        Conv2dParams { groups: g, ..self }
    }

    /// The output height and width for an input of `input_hw` and a kernel of `kernel_hw`:
    /// `(in + 2·padding − dilation·(k − 1) − 1) / stride + 1` per axis. `None` when the dilated
    /// window does not fit in the padded input, or a stride, dilation or size is zero.
    pub fn output_size(&self, input_hw: [usize; 2], kernel_hw: [usize; 2]) -> Option<[usize; 2]> {
        let axis = |a: usize| -> Option<usize> {
            let (size, kernel) = (input_hw[a], kernel_hw[a]);
            let (stride, dilation) = (self.stride[a], self.dilation[a]);
            if size == 0 || kernel == 0 || stride == 0 || dilation == 0 {
                return None;
            }
            let window = dilation.checked_mul(kernel - 1)?.checked_add(1)?;
            let padded = size.checked_add(self.padding[a].checked_mul(2)?)?;
            padded.checked_sub(window).map(|room| room / stride + 1)
        };
        Some([axis(0)?, axis(1)?])
    }

    /// Checks `x: [N, Cin, H, W]`, `weight: [Cout, Cin/groups, kh, kw]` and the bias shape against
    /// these parameters and returns the convolution's geometry.
    fn geometry(
        &self,
        x: &[usize],
        weight: &[usize],
        bias: Option<&[usize]>,
    ) -> Result<ConvGeometry> {
        const OP: &str = "conv2d";
        let &[batch, c_in, h, w] = x else {
            return Err(Error::shape(OP, "input of 4 dimensions (N, C, H, W)", x));
        };
        let &[c_out, cin_g, kh, kw] = weight else {
            return Err(Error::shape(
                OP,
                "weight of 4 dimensions (Cout, Cin/groups, kh, kw)",
                weight,
            ));
        };
        if self.stride.contains(&0) || self.dilation.contains(&0) || self.groups == 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "stride {:?}, dilation {:?} and groups {} must all be positive",
                    self.stride, self.dilation, self.groups
                ),
            ));
        }
        if c_in % self.groups != 0 || c_out % self.groups != 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "groups {} must divide the input channels {c_in} and the output channels {c_out}",
                    self.groups
                ),
            ));
        }
        if cin_g * self.groups != c_in {
            return Err(Error::shape(
                OP,
                format!(
                    "weight with {} input channels per group ({c_in} channels / {} groups)",
                    c_in / self.groups,
                    self.groups
                ),
                weight,
            ));
        }
        let Some(output) = self.output_size([h, w], [kh, kw]) else {
            return Err(Error::invalid(
                OP,
                format!(
                    "a {kh}x{kw} kernel with dilation {:?} does not fit the {h}x{w} input padded by {:?}",
                    self.dilation, self.padding
                ),
            ));
        };
        if let Some(b) = bias.filter(|b| *b != [c_out]) {
            return Err(Error::shape(
                OP,
                format!("bias of shape [{c_out}] (one per output channel)"),
                b,
            ));
        }
        Ok(ConvGeometry {
            batch,
            c_in,
            c_out,
            input: [h, w],
            kernel: [kh, kw],
            output,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
        })
    }
}

/// A geometry's kernels on one device: the CPU reference's functions, or a GPU launch plan with
/// the executor that runs it. Every tensor handed to it lives on that device.
enum Runner {
    Cpu(ConvGeometry),
    Gpu(ConvPlan, &'static dyn Executor, Device),
}

impl Runner {
    fn new(g: ConvGeometry, device: Device) -> Result<Runner> {
        Ok(match device.executor()? {
            None => Runner::Cpu(g),
            Some(exec) => Runner::Gpu(ConvPlan::new(&g)?, exec, device),
        })
    }

    fn geometry(&self) -> &ConvGeometry {
        match self {
            Runner::Cpu(g) => g,
            Runner::Gpu(plan, ..) => plan.geometry(),
        }
    }

    fn forward(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let g = self.geometry();
        let shape = [g.batch, g.c_out, g.output[0], g.output[1]];
        match self {
            Runner::Cpu(g) => Tensor::from_vec(
                k::forward(g, x.data(), w.data(), b.map(Tensor::data)),
                &shape,
            ),
            Runner::Gpu(plan, exec, device) => Tensor::from_buffer(
                plan.forward(*exec, buffer(x), buffer(w), b.map(buffer))?,
                &shape,
                *device,
            ),
        }
    }

    /// The gradients with respect to `x` and `w` that `needs` asks for (`[input, weight]`).
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        needs: [bool; 2],
    ) -> Result<[Option<Tensor>; 2]> {
        let (x_shape, w_shape) = (x.shape(), w.shape());
        match self {
            Runner::Cpu(g) => {
                let dx = match needs[0] {
                    true => {
                        let dx = k::backward_input(g, w.data(), dy.data());
                        Some(Tensor::from_vec(dx, x_shape)?)
                    }
                    false => None,
                };
                let dw = match needs[1] {
                    true => {
                        let dw = k::backward_weight(g, x.data(), dy.data());
                        Some(Tensor::from_vec(dw, w_shape)?)
                    }
                    false => None,
                };
                Ok([dx, dw])
            }
            Runner::Gpu(plan, exec, device) => {
                let [dx, dw] = plan.backward(*exec, buffer(x), buffer(w), buffer(dy), needs)?;
                Ok([
                    on_device(dx, x_shape, *device)?,
                    on_device(dw, w_shape, *device)?,
                ])
            }
        }
    }

    fn backward_bias(&self, dy: &Tensor) -> Result<Tensor> {
        let c_out = self.geometry().c_out;
        match self {
            Runner::Cpu(g) => Tensor::from_vec(k::backward_bias(g, dy.data()), &[c_out]),
            Runner::Gpu(plan, exec, device) => {
                Tensor::from_buffer(plan.backward_bias(*exec, buffer(dy))?, &[c_out], *device)
            }
        }
    }
}

/// A gradient computed on a GPU, as a tensor of `shape` on `device`.
fn on_device(
    grad: Option<DeviceBuffer<f32>>,
    shape: &[usize],
    device: Device,
) -> Result<Option<Tensor>> {
    grad.map(|b| Tensor::from_buffer(b, shape, device))
        .transpose()
}

/// Checks the arguments and runs the forward kernel; returns the output and the runner for the
/// backward pass.
fn forward(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: Conv2dParams,
) -> Result<(Tensor, Runner)> {
    let g = params.geometry(x.shape(), weight.shape(), bias.map(Tensor::shape))?;
    let mut all = vec![x, weight];
    all.extend(bias);
    let runner = Runner::new(g, common_device("conv2d", &all)?)?;
    let y = runner.forward(x, weight, bias)?;
    Ok((y, runner))
}

/// The convolution without a tape (see [`conv2d`]): `x: [N, Cin, H, W]`,
/// `weight: [Cout, Cin/groups, kh, kw]`, `bias: [Cout]` → `[N, Cout, Ho, Wo]`.
pub fn conv2d_forward(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: Conv2dParams,
) -> Result<Tensor> {
    forward(x, weight, bias, params).map(|(y, _)| y)
}

/// `y[n, o] = b[o] + Σ_{c in o's group} Σ_{ky,kx} w[o, c, ky, kx] · x[n, c, oy·s + ky·d − p,
/// ox·s + kx·d − p]` (zeros outside the image), with `x: [N, Cin, H, W]`,
/// `weight: [Cout, Cin/groups, kh, kw]`, `bias: [Cout]` → `[N, Cout, Ho, Wo]`.
///
/// Backward: `dx` is the transposed convolution of `dy` with `w` (each output gradient scattered
/// back through the taps that read it), `dw[o, c, ky, kx] = Σ_{n,oy,ox} dy[n, o, oy, ox] · x[…]`
/// (the same input positions as the forward), and `db[o] = Σ_{n,oy,ox} dy[n, o, oy, ox]`.
pub fn conv2d(
    tape: &mut Tape,
    x: Var,
    weight: Var,
    bias: Option<Var>,
    params: Conv2dParams,
) -> Result<Var> {
    let xv = tape.value(x).clone();
    let wv = tape.value(weight).clone();
    let (y, runner) = forward(&xv, &wv, bias.map(|b| tape.value(b)), params)?;
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    Ok(tape.record("conv2d", y, &inputs, move |dy, needs| {
        let [dx, dw] = runner.backward(&xv, &wv, dy, [needs[0], needs[1]])?;
        let mut grads = vec![dx, dw];
        if bias.is_some() {
            grads.push(if needs[2] {
                Some(runner.backward_bias(dy)?)
            } else {
                None
            });
        }
        Ok(grads)
    }))
}

/// One convolution of [`conv2d_many`]: its input, its weight and its parameters.
#[derive(Debug, Clone, Copy)]
pub struct Conv2dArgs {
    /// The input, `[N, Cin, H, W]`.
    pub x: Var,
    /// The weight, `[Cout, Cin/groups, kh, kw]`.
    pub weight: Var,
    /// Stride, padding, dilation and groups.
    pub params: Conv2dParams,
}

/// Several convolutions of one shape (no bias) as one op: `y_s = conv2d(x_s, w_s)` for every `s`.
/// Either all depthwise (`groups == Cin == Cout`) with the same batch, channels and input and
/// output sizes (their windows may differ), or all of one geometry; several may read the same
/// input. A DARTS search edge computes its candidates' convolutions stage by stage with it: the
/// first depthwise convolutions of its separable and dilated candidates (which all read `ReLU(x)`),
/// then their 1×1 convolutions, then the separable ones' second depthwise and 1×1 convolutions.
///
/// The values and gradients are those of [`conv2d`] on each, with the same bits: on a GPU the
/// kernels are the same, with four convolutions to a launch (`device::gpu::conv::forward_group`);
/// on the CPU they run one by one. The gradients of an input read by several of them reach it last
/// convolution first, as they would from separate ops.
pub fn conv2d_many(tape: &mut Tape, convs: &[Conv2dArgs]) -> Result<Vec<Var>> {
    const OP: &str = "conv2d_many";
    if convs.is_empty() {
        return Err(Error::invalid(OP, "no convolution given"));
    }
    let xs: Vec<Tensor> = convs.iter().map(|c| tape.value(c.x).clone()).collect();
    let ws: Vec<Tensor> = convs.iter().map(|c| tape.value(c.weight).clone()).collect();
    let device = common_device(OP, &xs.iter().chain(&ws).collect::<Vec<_>>())?;
    let mut runners: Vec<Runner> = Vec::with_capacity(convs.len());
    for (s, conv) in convs.iter().enumerate() {
        let g = conv.params.geometry(xs[s].shape(), ws[s].shape(), None)?;
        if let Some(first) = runners.first().map(Runner::geometry) {
            let sizes = |g: &ConvGeometry| (g.batch, g.c_in, g.c_out, g.input, g.output);
            let same = match first.is_depthwise() {
                true => g.is_depthwise() && sizes(&g) == sizes(first),
                false => g == *first,
            };
            if !same {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "convolution {s} ({g:?}) is not of convolution 0's shape ({first:?}): \
                         depthwise ones need the same sizes, others the same geometry"
                    ),
                ));
            }
        }
        runners.push(Runner::new(g, device)?);
    }
    let ys = match &runners[0] {
        Runner::Cpu(_) => (runners.iter().zip(&xs).zip(&ws))
            .map(|((runner, x), w)| runner.forward(x, w, None))
            .collect::<Result<Vec<_>>>()?,
        Runner::Gpu(_, exec, device) => {
            let plans = gpu_plans(&runners);
            let x_buffers: Vec<_> = xs.iter().map(buffer).collect();
            let w_buffers: Vec<_> = ws.iter().map(buffer).collect();
            let g = runners[0].geometry();
            let shape = [g.batch, g.c_out, g.output[0], g.output[1]];
            (gpu_conv::forward_group(*exec, &plans, &x_buffers, &w_buffers)?.into_iter())
                .map(|y| Tensor::from_buffer(y, &shape, *device))
                .collect::<Result<Vec<_>>>()?
        }
    };
    let inputs: Vec<Var> = convs.iter().flat_map(|c| [c.x, c.weight]).collect();
    Ok(tape.record_many(OP, ys, &inputs, move |dys, needs| {
        // The convolutions whose output has a gradient and whose input or weight needs one.
        let wanted: Vec<(usize, &Tensor, [bool; 2])> = (dys.iter().enumerate())
            .filter_map(|(s, dy)| Some((s, dy.as_ref()?, [needs[2 * s], needs[2 * s + 1]])))
            .filter(|(_, _, need)| need.contains(&true))
            .collect();
        let mut grads: Vec<Option<Tensor>> = vec![None; needs.len()];
        if wanted.is_empty() {
            return Ok(grads);
        }
        let results: Vec<[Option<Tensor>; 2]> = match &runners[0] {
            Runner::Cpu(_) => (wanted.iter())
                .map(|&(s, dy, need)| runners[s].backward(&xs[s], &ws[s], dy, need))
                .collect::<Result<_>>()?,
            Runner::Gpu(_, exec, device) => {
                let all = gpu_plans(&runners);
                let plans: Vec<&ConvPlan> = wanted.iter().map(|&(s, ..)| all[s]).collect();
                let buffers: Vec<BackwardInputs> = (wanted.iter())
                    .map(|&(s, dy, _)| BackwardInputs {
                        x: buffer(&xs[s]),
                        w: buffer(&ws[s]),
                        dy: buffer(dy),
                    })
                    .collect();
                let needs: Vec<[bool; 2]> = wanted.iter().map(|&(.., need)| need).collect();
                (gpu_conv::backward_group(*exec, &plans, &buffers, &needs)?.into_iter())
                    .zip(&wanted)
                    .map(|([dx, dw], &(s, ..))| {
                        Ok([
                            on_device(dx, xs[s].shape(), *device)?,
                            on_device(dw, ws[s].shape(), *device)?,
                        ])
                    })
                    .collect::<Result<_>>()?
            }
        };
        for (&(s, ..), [dx, dw]) in wanted.iter().zip(results) {
            grads[2 * s] = dx;
            grads[2 * s + 1] = dw;
        }
        Ok(grads)
    }))
}

/// The GPU plans of runners made for one GPU device.
fn gpu_plans(runners: &[Runner]) -> Vec<&ConvPlan> {
    runners
        .iter()
        .filter_map(|r| match r {
            Runner::Gpu(plan, ..) => Some(plan),
            Runner::Cpu(_) => None,
        })
        .collect()
}
