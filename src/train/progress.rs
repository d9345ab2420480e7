//! Progress on long work: a one-line bar redrawn in place on a terminal, and plain periodic lines
//! when the output is a file or a pipe (CI logs stay readable).

use std::io::{IsTerminal, Write};

/// A progress reporter for `total` steps of one epoch.
pub struct Progress {
    total: usize,
    report_every: usize,
    terminal: bool,
}

impl Progress {
    /// A reporter that, off a terminal, prints every `report_every` steps (and the last).
    pub fn new(total: usize, report_every: usize) -> Progress {
        Progress {
            total,
            report_every: report_every.max(1),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Shows step `done` of the total with `message` (loss, accuracy, speed).
    pub fn update(&self, done: usize, message: &str) {
        if self.terminal {
            let width = 24;
            let filled = width * done / self.total.max(1);
            let bar: String = (0..width)
                .map(|i| if i < filled { '#' } else { '.' })
                .collect();
            eprint!("\r[{bar}] {done:>5}/{}  {message}   ", self.total);
            let _ = std::io::stderr().flush();
            if done == self.total {
                eprintln!();
            }
        } else if done.is_multiple_of(self.report_every) || done == self.total {
            eprintln!("  step {done:>5}/{}  {message}", self.total);
        }
    }

    /// Ends the bar early (a run stopped by `--max-steps`).
    pub fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}

/// The peak resident memory of this process in bytes (Linux `VmHWM`), when the system says.
pub fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
