//! The recurrent-node family on a GPU executor (`kernels/rnn.cu`): the DARTS recurrent node after
//! its matmul, forward and backward, shared by CUDA and the emulator. Each function mirrors its
//! CPU reference in `device::cpu::rnn` (same arguments, same result), checks lengths, allocates
//! its outputs and launches.

use super::kernels;
use super::{DeviceBuffer, Executor, GpuError, LaunchConfig, int, invalid};
use crate::device::cpu::rnn::NodeActivation;

/// Threads per block: a multiple of 32, small enough that several blocks share an SM.
const THREADS: u32 = 256;

/// The kernels' `int` code of an activation (the `switch` in `kernels/rnn.cu`).
fn code(act: NodeActivation) -> i32 {
    match act {
        NodeActivation::Tanh => 0,
        NodeActivation::Relu => 1,
        NodeActivation::Sigmoid => 2,
        NodeActivation::Identity => 3,
    }
}

/// The kernels' `(n, hidden)` for `ch` of `[rows, 2·hidden]` and `h_prev` of `[rows, hidden]`,
/// refusing other lengths and sizes a kernel cannot index.
fn node_dims(
    op: &'static str,
    ch: &DeviceBuffer<f32>,
    h_prev: &DeviceBuffer<f32>,
    hidden: usize,
) -> Result<(i32, i32), GpuError> {
    if hidden == 0 || !h_prev.len().is_multiple_of(hidden) || ch.len() != 2 * h_prev.len() {
        return Err(invalid(
            op,
            format!(
                "ch of {} and h_prev of {} elements are not [rows, 2·{hidden}] and [rows, {hidden}]",
                ch.len(),
                h_prev.len()
            ),
        ));
    }
    int(op, ch.len())?;
    Ok((int(op, h_prev.len())?, int(op, hidden)?))
}

/// The node's output `y = h_prev + c ⊙ (act(b) − h_prev)` with `c = σ(a)`, where each row of `ch`
/// (`[rows, 2·hidden]`) is `[a | b]` and `h_prev` is `[rows, hidden]`; `y` has `h_prev`'s shape.
pub fn node_forward(
    exec: &dyn Executor,
    ch: &DeviceBuffer<f32>,
    h_prev: &DeviceBuffer<f32>,
    hidden: usize,
    act: NodeActivation,
) -> Result<DeviceBuffer<f32>, GpuError> {
    let (n, hidden) = node_dims("node_forward", ch, h_prev, hidden)?;
    let mut y = exec.alloc(h_prev.len())?;
    let config = LaunchConfig::grid_stride(h_prev.len(), THREADS);
    // SAFETY: the kernel reads ch[0..2n) and h_prev[0..n) and writes y[0..n), with
    // n = rows · hidden; the buffers hold 2n, n and n elements.
    unsafe { kernels::rnn_node_fwd_f32(exec, config, ch, h_prev, &mut y, n, hidden, code(act)) }?;
    Ok(y)
}

/// The gradients of [`node_forward`] for the output gradient `dy` (`[rows, hidden]`): `dch` in
/// `ch`'s layout (`da = dy · (act(b) − h_prev) · c · (1 − c)` in the first half of each row,
/// `db = dy · c · act′(b)` in the second) and `dh_prev = dy · (1 − c)`.
pub fn node_backward(
    exec: &dyn Executor,
    ch: &DeviceBuffer<f32>,
    h_prev: &DeviceBuffer<f32>,
    dy: &DeviceBuffer<f32>,
    hidden: usize,
    act: NodeActivation,
) -> Result<(DeviceBuffer<f32>, DeviceBuffer<f32>), GpuError> {
    let op = "node_backward";
    let (n, hidden) = node_dims(op, ch, h_prev, hidden)?;
    if dy.len() != h_prev.len() {
        return Err(invalid(
            op,
            format!(
                "dy of {} elements does not match h_prev of {}",
                dy.len(),
                h_prev.len()
            ),
        ));
    }
    let mut dch = exec.alloc(ch.len())?;
    let mut dh_prev = exec.alloc(h_prev.len())?;
    let config = LaunchConfig::grid_stride(h_prev.len(), THREADS);
    // SAFETY: the kernel reads ch[0..2n), h_prev[0..n) and dy[0..n) and writes dch[0..2n) and
    // dh_prev[0..n), with n = rows · hidden; the buffers hold that many elements.
    unsafe {
        kernels::rnn_node_bwd_f32(
            exec,
            config,
            ch,
            h_prev,
            dy,
            &mut dch,
            &mut dh_prev,
            n,
            hidden,
            code(act),
        )
    }?;
    Ok((dch, dh_prev))
}
