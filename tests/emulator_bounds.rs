//! The bounds-checked emulator, which the kernel tests run on: a kernel that writes outside a
//! buffer (past its end, or before its start through a pointer table) fails its launch with an
//! error naming it, a read just past a buffer reads NaN, and one far past it faults with a report
//! naming the kernel. Each case launches a real kernel with a count or a table that lies about the
//! buffers, which is what an indexing bug in a kernel looks like from outside.

use std::process::Command;

use darts::device::gpu::multi::SLOTS;
use darts::device::gpu::{DeviceBuffer, EmuExecutor, Executor, GpuError, LaunchConfig, kernels};

/// Elements of the buffers: 132 bytes, so 60 bytes of poison follow each before its guard page.
const N: usize = 33;

/// Runs `elementwise_scale_fwd_f32` (`y[i] = 2 x[i]` for `i < count`) over `x` into `y`.
fn scale(
    exec: &dyn Executor,
    x: &DeviceBuffer<f32>,
    y: &mut DeviceBuffer<f32>,
    count: usize,
) -> Result<(), GpuError> {
    // SAFETY: on the bounds-checked emulator, an access outside x or y lands in poisoned memory or
    // a guard page of their own mappings, never in other memory; these tests count on it.
    unsafe {
        kernels::elementwise_scale_fwd_f32(
            exec,
            LaunchConfig::linear(1, 64),
            x,
            y,
            2.0,
            count as i32,
        )
    }
}

fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32 - 7.5).collect()
}

#[test]
fn a_write_past_a_buffer_fails_the_launch_and_names_the_kernel() {
    let exec: &dyn Executor = &EmuExecutor::bounds_checked();
    let x = exec.to_device(&values(N + 3)).unwrap();
    let mut y = exec.alloc::<f32>(N).unwrap();
    let error = scale(exec, &x, &mut y, N + 3).unwrap_err().to_string();
    assert!(
        error.contains("kernel elementwise_scale_fwd_f32 failed")
            && error.contains("wrote outside a buffer of 132 bytes")
            && error.contains(
                "12 bytes of the poison around it changed, the first 0 bytes past its end"
            ),
        "{error}"
    );
    // The poison is restored: the same launch within bounds succeeds and reports nothing.
    scale(exec, &x, &mut y, N).unwrap();
    let expected: Vec<f32> = values(N).iter().map(|v| 2.0 * v).collect();
    assert_eq!(exec.to_host(&y).unwrap(), expected);
}

#[test]
fn a_write_before_a_buffer_reached_through_a_pointer_table_fails_the_launch() {
    let exec: &dyn Executor = &EmuExecutor::bounds_checked();
    let w = exec.to_device(&values(N)).unwrap();
    let g = exec.to_device(&values(N)).unwrap();
    let b = exec.alloc::<f32>(N).unwrap();
    // One SGD tensor (slots w, g, b) whose momentum buffer starts two floats before b: the first
    // step writes b[i] = g[i] there, finite values over the poison.
    let mut words = vec![0u64; SLOTS + 1];
    words[0] = exec.address(w.memory()).unwrap();
    words[1] = exec.address(g.memory()).unwrap();
    words[2] = exec.address(b.memory()).unwrap() - 8;
    words[SLOTS - 1] = N as u64;
    let table = exec.to_device(&words).unwrap();
    // SAFETY: as in `scale`: the table's addresses lie in the mappings of w, g and b, b's shifted
    // into the poison before it.
    let result = unsafe {
        kernels::optim_sgd_fwd_f32(
            exec,
            LaunchConfig::linear(1, 64),
            &table,
            1,
            2048,
            0.1,
            0.9,
            0.0,
            1,
        )
    };
    let error = result.unwrap_err().to_string();
    assert!(
        error.contains("kernel optim_sgd_fwd_f32 failed")
            && error.contains("wrote outside a buffer of 132 bytes")
            && error.contains("the first 8 bytes before its start"),
        "{error}"
    );
}

#[test]
fn a_read_just_past_a_buffer_reads_nan() {
    let exec: &dyn Executor = &EmuExecutor::bounds_checked();
    let x = exec.to_device(&values(N)).unwrap();
    let mut y = exec.alloc::<f32>(N + 3).unwrap();
    scale(exec, &x, &mut y, N + 3).unwrap();
    let y = exec.to_host(&y).unwrap();
    assert_eq!(
        y[..N],
        values(N).iter().map(|v| 2.0 * v).collect::<Vec<_>>()
    );
    assert!(y[N..].iter().all(|v| v.is_nan()), "{:?}", &y[N..]);
}

/// Set in the child process of the fault test, which then does the faulting launch.
const FAULT_CHILD: &str = "DARTS_TEST_EMULATOR_FAULT_CHILD";

/// A read a few pages past the end of `x` reaches the guard page after it: the emulator names the
/// kernel and the address on stderr, and the process dies of the fault. It runs in a child process
/// (this test binary again, with only this test), which this test then examines.
#[test]
fn a_read_far_past_a_buffer_faults_and_names_the_kernel() {
    let far = N + 4096;
    if std::env::var_os(FAULT_CHILD).is_some() {
        let exec: &dyn Executor = &EmuExecutor::bounds_checked();
        let x = exec.to_device(&values(N)).unwrap();
        let mut y = exec.alloc::<f32>(far).unwrap();
        let _ = scale(exec, &x, &mut y, far);
        unreachable!("the read past x did not fault");
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "a_read_far_past_a_buffer_faults_and_names_the_kernel",
            "--exact",
            "--nocapture",
        ])
        .env(FAULT_CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(!child.status.success(), "the child survived: {stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.status.signal(), Some(11), "{stderr}"); // SIGSEGV
    }
    assert!(
        stderr.contains("darts emulator: kernel elementwise_scale_fwd_f32 faulted at address 0x")
            && stderr.contains("an access outside its buffers"),
        "{stderr}"
    );
}
