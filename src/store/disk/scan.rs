//! The start-up scan: rebuilds the index from the files, removes what a crash left.

use super::format::Footer;
use super::index::ChunkId;
use super::DiskStore;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

impl DiskStore {
    /// Walks `root/<origin>/<hash>/<file>`: removes temp files and invalid chunks, indexes the
    /// rest. Runs on its own thread; the store serves while it runs.
    pub(super) fn scan(&self) {
        let started = std::time::Instant::now();
        let mut found = 0u64;
        let own_tmp = format!(".tmp-{}-", self.inner.instance);
        let dirs = |p: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        for origin_dir in dirs(&self.inner.root) {
            let Some(origin_id) = origin_dir
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned)
            else {
                continue;
            };
            // Dot-directories are not origins (a cluster's `.hot` cache lives there).
            if !origin_dir.is_dir() || origin_id.starts_with('.') {
                continue;
            }

            for obj_dir in dirs(&origin_dir) {
                let Some(hash) = obj_dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                else {
                    continue;
                };
                for f in dirs(&obj_dir) {
                    let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if name.starts_with(".tmp-") && !name.starts_with(&own_tmp) {
                        let _ = std::fs::remove_file(&f);
                        continue;
                    }
                    let Ok(index) = name.parse::<u64>() else {
                        continue;
                    };
                    match File::open(&f).and_then(|fh| Footer::read(&fh)) {
                        Ok(Some(footer)) => {
                            let id = ChunkId {
                                origin: origin_id.as_str().into(),
                                hash: hash.as_str().into(),
                                index,
                            };
                            if !self.inner.index.contains_key(&id) {
                                self.inner.index.insert(id, footer.file_size());
                            }
                            found += 1;
                        }
                        _ => {
                            let _ = std::fs::remove_file(&f);
                        }
                    }
                }
                let _ = std::fs::remove_dir(&obj_dir); // only succeeds when empty
            }
        }
        self.inner.index.run_pending_tasks();
        self.inner.scanning.store(false, Ordering::Release);
        tracing::info!(
            chunks = found,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "disk store index rebuilt"
        );
    }
}
