//! Metrics as JSON lines (one object per line, `pandas.read_json(path, lines=True)` reads it),
//! appended as the run goes and cut back to the last checkpoint when a run resumes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::io::write_atomically;
use crate::{Error, Result};

/// An append-only JSON-lines log.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl MetricsLog {
    /// Starts a fresh log at `path` (replacing an old one).
    pub fn create(path: &Path) -> Result<MetricsLog> {
        write_atomically(path, b"")?;
        MetricsLog::append(path)
    }

    /// Continues the log at `path` after keeping only the lines `keep` accepts (the records up to
    /// the checkpoint being resumed), so a resumed run does not log a step twice.
    pub fn resume(path: &Path, keep: impl Fn(&serde_json::Value) -> bool) -> Result<MetricsLog> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_error(path, e)),
        };
        let kept: String = text
            .lines()
            .filter(|line| serde_json::from_str(line).is_ok_and(|v| keep(&v)))
            .map(|line| format!("{line}\n"))
            .collect();
        write_atomically(path, kept.as_bytes())?;
        MetricsLog::append(path)
    }

    fn append(path: &Path) -> Result<MetricsLog> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| io_error(path, e))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one record as a line.
    pub fn write(&mut self, record: &impl Serialize) -> Result<()> {
        let line = serde_json::to_string(record).map_err(|e| Error::Format {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        writeln!(self.file, "{line}").map_err(|e| io_error(&self.path, e))
    }
}
