//! Reading and writing the state's JSON files: a checkpoint or plan index parsed after
//! its format version alone (a newer format is named as such, not as damage), and
//! [`write_atomic`], a whole file replaced so a crash leaves the old or the new one.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{StoreError, io};
use super::{FORMAT_VERSION, PlanIndex, RunRecord};

/// Parses a plan's index, refusing a newer format. `path` names it in errors.
pub(crate) fn parse_index(bytes: &[u8], path: &Path) -> Result<PlanIndex, StoreError> {
    parse_versioned(bytes, path)
}

/// Parses a checkpoint, refusing a newer format. `path` names it in errors.
pub(crate) fn parse_checkpoint(bytes: &[u8], path: &Path) -> Result<RunRecord, StoreError> {
    parse_versioned(bytes, path)
}

/// Parses `T` out of a checkpoint after reading its format version alone (the rest
/// skipped, no tree of the whole run built), so a newer format is named as such rather
/// than as damage.
pub(crate) fn parse_versioned<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T, StoreError> {
    #[derive(Deserialize)]
    struct Version {
        #[serde(default)]
        format_version: u64,
    }
    let corrupt = |e: serde_json::Error| StoreError::Corrupt { path: path.to_owned(), message: e.to_string() };
    let found = serde_json::from_slice::<Version>(bytes).map_err(corrupt)?.format_version as u32;
    if found > FORMAT_VERSION {
        return Err(StoreError::NewerFormat { path: path.to_owned(), found });
    }
    serde_json::from_slice(bytes).map_err(corrupt)
}

/// Writes `value` as JSON to `path` so that a crash leaves either the old file or the
/// new one: an owner-only temporary file in the same dir, fsync, rename, fsync the dir
/// ([`crate::private_fs::AtomicFile`]).
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let mut file = crate::private_fs::AtomicFile::create(path).map_err(io(path))?;
    let tmp = file.temp_path().to_path_buf();
    // Streamed: a large run (or simulated world) is never held as one buffer.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, file.file());
    serde_json::to_writer_pretty(&mut out, value).map_err(|e| {
        if e.is_io() {
            io(&tmp)(e.into())
        } else {
            StoreError::Corrupt { path: path.to_owned(), message: e.to_string() }
        }
    })?;
    std::io::Write::flush(&mut out).map_err(io(&tmp))?;
    drop(out);
    file.commit().map_err(io(path))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    crate::private_fs::sync_dir(dir).map_err(io(dir))
}
