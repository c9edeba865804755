//! The project's contract with the official code: every case of a fixture folder in the
//! `golden/tiny-a` format, compared with tolerances from the fixtures' README. A library so the
//! native `bd3-wgpu verify` and the browser page (kernels compiled by the browser) run the same checks.
//!
//! A fixture folder is read through [`FixtureSource`]: a directory on disk natively, a map of fetched
//! files in the browser.

mod report;
mod verify;
mod verify_sampler;
mod verify_train;

pub use report::{Report, Tolerance};
pub use verify::verify_dir;

/// Where a fixture folder's files come from.
pub trait FixtureSource {
    /// A human-readable name (the folder path).
    fn name(&self) -> String;
    /// The bytes of `file` (e.g. "config.json", "train_case.safetensors"), if present.
    fn read(&self, file: &str) -> Option<Vec<u8>>;
    /// Sub-folders that are fixture folders of their own (they hold a config.json).
    fn subfolders(&self) -> Vec<Box<dyn FixtureSource>>;
}

/// A fixture folder on disk.
pub struct DirFixture(pub std::path::PathBuf);

impl FixtureSource for DirFixture {
    fn name(&self) -> String {
        self.0.display().to_string()
    }
    fn read(&self, file: &str) -> Option<Vec<u8>> {
        std::fs::read(self.0.join(file)).ok()
    }
    fn subfolders(&self) -> Vec<Box<dyn FixtureSource>> {
        let mut dirs: Vec<_> = std::fs::read_dir(&self.0)
            .map(|r| {
                r.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_dir() && p.join("config.json").is_file())
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        dirs.into_iter()
            .map(|d| Box::new(DirFixture(d)) as Box<dyn FixtureSource>)
            .collect()
    }
}

/// A fixture folder held in memory: file name → bytes, sub-folders as "sub/file" keys.
pub struct MemFixture {
    pub name: String,
    pub files: std::collections::BTreeMap<String, Vec<u8>>,
}

impl FixtureSource for MemFixture {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn read(&self, file: &str) -> Option<Vec<u8>> {
        self.files.get(file).cloned()
    }
    fn subfolders(&self) -> Vec<Box<dyn FixtureSource>> {
        let mut subs: Vec<String> = self
            .files
            .keys()
            .filter_map(|k| k.strip_suffix("/config.json").map(str::to_string))
            .filter(|s| !s.contains('/'))
            .collect();
        subs.sort();
        subs.into_iter()
            .map(|s| {
                let prefix = format!("{s}/");
                let files = self
                    .files
                    .iter()
                    .filter_map(|(k, v)| {
                        k.strip_prefix(&prefix).map(|r| (r.to_string(), v.clone()))
                    })
                    .collect();
                Box::new(MemFixture {
                    name: format!("{}/{s}", self.name),
                    files,
                }) as Box<dyn FixtureSource>
            })
            .collect()
    }
}
