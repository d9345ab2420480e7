//! `--profile`: where a step's time goes, per op (forward and backward) and per phase of the
//! search step. Off by default; when off, the tape pays one relaxed atomic load per op.
//!
//! An op's forward time is the wall time from the previous op recorded on the same tape to this
//! one, so it includes the (small) model code in between; its backward time is the time its
//! backward closure ran. On a GPU these are the times to queue the work (launches return before
//! the kernels finish), so there the timeline of Nsight Systems is the truth: while profiling,
//! each phase and each op's backward is also an NVTX range, and each op's forward an NVTX mark,
//! when the NVTX library (libnvToolsExt) can be loaded.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Calls and total time per (kind, name).
type Totals = BTreeMap<(Kind, &'static str), (u64, Duration)>;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Totals> = Mutex::new(BTreeMap::new());

/// What a measured interval was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A phase of a training step (architect, weight step, data).
    Phase,
    /// An op's forward pass.
    Forward,
    /// An op's backward pass.
    Backward,
}

/// Starts collecting (and clears what was collected).
pub fn enable() {
    TOTALS.lock().expect("profile lock").clear();
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether collection is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Adds one interval of `duration` to `name`.
pub fn add(kind: Kind, name: &'static str, duration: Duration) {
    if enabled() {
        let mut totals = TOTALS.lock().expect("profile lock");
        let entry = totals.entry((kind, name)).or_default();
        entry.0 += 1;
        entry.1 += duration;
    }
}

/// Runs `f` and, when profiling, adds its wall time to the phase `name` (an NVTX range too).
pub fn phase<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    timed(Kind::Phase, name, f)
}

/// Runs `f`, an op's backward, and when profiling adds its wall time to the op (an NVTX range
/// too).
pub fn backward<T>(op: &'static str, f: impl FnOnce() -> T) -> T {
    timed(Kind::Backward, op, f)
}

/// Records that the forward of `op` took `duration` (an NVTX mark where it ended).
pub fn forward(op: &'static str, duration: Duration) {
    if enabled() {
        nvtx::mark(op);
        add(Kind::Forward, op, duration);
    }
}

fn timed<T>(kind: Kind, name: &'static str, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    nvtx::push(name);
    let start = Instant::now();
    let result = f();
    add(kind, name, start.elapsed());
    nvtx::pop();
    result
}

/// Whether NVTX annotations reach a profiler: "on" when libnvToolsExt loads, else why not.
pub fn nvtx_status() -> &'static str {
    if nvtx::available() {
        "NVTX ranges on"
    } else {
        "NVTX ranges off (libnvToolsExt not found)"
    }
}

/// NVTX, the annotation API that Nsight Systems shows on its timeline, loaded at run time.
mod nvtx {
    use std::ffi::CString;
    use std::sync::OnceLock;

    use cudarc::nvtx::sys;

    pub fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        // SAFETY: only tries to dlopen the library; nothing in it is called.
        *AVAILABLE.get_or_init(|| unsafe { sys::is_culib_present() })
    }

    pub fn push(name: &str) {
        if let (true, Ok(name)) = (available(), CString::new(name)) {
            // SAFETY: the library is loaded and `name` is a NUL-terminated string that lives
            // through the call (NVTX copies it).
            unsafe { sys::nvtxRangePushA(name.as_ptr()) };
        }
    }

    pub fn pop() {
        if available() {
            // SAFETY: the library is loaded; it pairs this with the latest push of the thread.
            unsafe { sys::nvtxRangePop() };
        }
    }

    pub fn mark(name: &str) {
        if let (true, Ok(name)) = (available(), CString::new(name)) {
            // SAFETY: as in `push`.
            unsafe { sys::nvtxMarkA(name.as_ptr()) };
        }
    }
}

/// The collected times as a Markdown table: phases first, then ops by total time.
pub fn report() -> String {
    let totals = TOTALS.lock().expect("profile lock");
    let mut out = String::from("| phase | calls | ms |\n| --- | --- | --- |\n");
    for ((kind, name), (calls, time)) in totals.iter() {
        if *kind == Kind::Phase {
            out += &format!("| {name} | {calls} | {:.1} |\n", time.as_secs_f64() * 1e3);
        }
    }
    let mut ops: BTreeMap<&str, [(u64, Duration); 2]> = BTreeMap::new();
    for ((kind, name), value) in totals.iter() {
        match kind {
            Kind::Forward => ops.entry(name).or_default()[0] = *value,
            Kind::Backward => ops.entry(name).or_default()[1] = *value,
            Kind::Phase => {}
        }
    }
    let all: f64 = ops.values().map(|[f, b]| (f.1 + b.1).as_secs_f64()).sum();
    let mut rows: Vec<_> = ops.into_iter().collect();
    rows.sort_by(|a, b| {
        let total = |r: &[(u64, Duration); 2]| r[0].1 + r[1].1;
        total(&b.1).cmp(&total(&a.1))
    });
    out += "\n| op | calls | forward ms | backward ms | share |\n| --- | --- | --- | --- | --- |\n";
    for (name, [f, b]) in rows {
        let share = 100.0 * (f.1 + b.1).as_secs_f64() / all.max(1e-12);
        out += &format!(
            "| {name} | {} | {:.1} | {:.1} | {share:.1}% |\n",
            f.0,
            f.1.as_secs_f64() * 1e3,
            b.1.as_secs_f64() * 1e3
        );
    }
    out
}
