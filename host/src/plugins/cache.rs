//! The plugin cache: where a plugin file is copied before anything maps
//! it, under a name of its own, and what identifies a build.
//!
//! A copy per load because the dynamic loader hands back an already-mapped
//! library for a path it has seen, and because the file in the plugins
//! directory can be replaced while its build runs. Under process isolation
//! the copy lives as long as its build (every restarted projector process
//! maps it again), so a host killed with SIGKILL leaves its copies behind:
//! [`prune_stale_copies`] removes them at the next start.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_COPY: AtomicU64 = AtomicU64::new(0);

/// Copies `file` into `cache_dir` as `STEM-PID-N.so`.
pub(super) fn copy_in(file: &Path, cache_dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(cache_dir)?;
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin");
    let copy = cache_dir.join(format!(
        "{stem}-{}-{}.so",
        std::process::id(),
        NEXT_COPY.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::copy(file, &copy)?;
    Ok(copy)
}

/// Removes copies in `cache_dir` left by hosts that are gone: a copy is
/// named `STEM-PID-N.so` and kept while its build runs in projector
/// processes, so a host killed with SIGKILL leaves its copies behind.
pub fn prune_stale_copies(cache_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for path in entries.flatten().map(|e| e.path()) {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let pid = stem.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        let gone = |pid: u32| !Path::new(&format!("/proc/{pid}")).exists();
        if pid.is_some_and(|pid| pid != std::process::id() && gone(pid)) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The first 16 hex digits of the SHA-256 of `path`'s bytes (the copy that
/// is mapped, so the fingerprint names exactly the code that runs).
pub(super) fn fingerprint_of(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(std::fs::read(path)?);
    Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_of_gone_hosts_are_pruned_and_ours_kept() {
        let dir = std::env::temp_dir().join(format!("vista-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ours = dir.join(format!("my-plugin-{}-0.so", std::process::id()));
        // Pid 0 is never a host.
        let gone = dir.join("my-plugin-0-3.so");
        let other = dir.join("notes.txt");
        for file in [&ours, &gone, &other] {
            std::fs::write(file, b"x").unwrap();
        }
        prune_stale_copies(&dir);
        assert!(ours.exists() && other.exists() && !gone.exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}
