//! Watching the plugins directory: new builds load, deleted files unload.
//!
//! Built on `notify` with `notify-debouncer-full` (50 ms), which coalesces
//! the burst of events one copy produces and pairs renames. A file is only
//! loaded once it is complete:
//! - written in place (`cp`, a slow copy, `cargo build` output copied in):
//!   on the close-after-write event, never on create or modify, so a file
//!   still being written is never mapped;
//! - moved into place (`mv`, rename): on the rename, which is atomic;
//! - deleted or moved away: the plugin loaded from it unloads.
//!
//! The library is mapped (copied into the cache, checked in a child
//! process, `dlopen`ed) on the watcher's thread; only the swap itself is an
//! engine command.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, DebouncedEvent};

use crate::engine::Command;
use crate::plugins;
use crate::shared::Shared;

/// Keeps the watch alive; dropping it stops watching.
pub struct PluginWatcher {
    _debouncer: notify_debouncer_full::Debouncer<
        notify::RecommendedWatcher,
        notify_debouncer_full::RecommendedCache,
    >,
}

/// What to do with one path after a batch of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Load,
    Unload,
}

/// Starts watching `shared.config.plugins_dir`.
pub fn watch(shared: Arc<Shared>) -> notify::Result<PluginWatcher> {
    let dir = shared.config.plugins_dir.clone();
    let mut debouncer = new_debouncer(
        Duration::from_millis(50),
        None,
        move |result: DebounceEventResult| match result {
            Ok(events) => {
                for (path, action) in actions(&events) {
                    apply(&shared, &path, action);
                }
            }
            Err(errors) => {
                for err in errors {
                    tracing::warn!(%err, "plugin directory watcher error");
                }
            }
        },
    )?;
    debouncer.watch(&dir, RecursiveMode::NonRecursive)?;
    tracing::info!(dir = %dir.display(), "watching plugins directory");
    Ok(PluginWatcher {
        _debouncer: debouncer,
    })
}

fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|x| x == "so" || x == "dylib")
}

/// The last action per plugin path, in first-seen order.
fn actions(events: &[DebouncedEvent]) -> Vec<(PathBuf, Action)> {
    let mut out: Vec<(PathBuf, Action)> = Vec::new();
    let mut set = |path: &Path, action: Action| {
        if !is_plugin_file(path) {
            return;
        }
        match out.iter_mut().find(|(p, _)| p == path) {
            Some(entry) => entry.1 = action,
            None => out.push((path.to_owned(), action)),
        }
    };
    for event in events {
        let paths = &event.event.paths;
        match event.event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                paths.iter().for_each(|p| set(p, Action::Load))
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) if paths.len() == 2 => {
                set(&paths[0], Action::Unload);
                set(&paths[1], Action::Load);
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                paths.iter().for_each(|p| set(p, Action::Load))
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
                paths.iter().for_each(|p| set(p, Action::Unload))
            }
            EventKind::Modify(ModifyKind::Name(_)) => {
                for p in paths {
                    set(
                        p,
                        if p.exists() {
                            Action::Load
                        } else {
                            Action::Unload
                        },
                    );
                }
            }
            // Create and data modifications: the file may still be being
            // written; wait for its close (or rename).
            _ => {}
        }
    }
    out
}

fn apply(shared: &Shared, path: &Path, action: Action) {
    match action {
        // A later event may have re-created or removed it again.
        Action::Load if path.exists() => {
            let started = Instant::now();
            let loaded = plugins::load(path, &shared.config.cache_dir);
            let outcome = shared.engine.load_blocking(path, loaded);
            let elapsed = started.elapsed();
            crate::metrics::get()
                .plugin_reload_seconds
                .observe(elapsed.as_secs_f64());
            if outcome.is_ok() {
                crate::metrics::get().plugin_reloads.inc();
                tracing::info!(file = %path.display(), ms = elapsed.as_secs_f64() * 1e3, "plugin build live");
            } else {
                crate::metrics::get().plugin_reload_failures.inc();
            }
        }
        Action::Unload if !path.exists() => shared.engine.send(Command::Unload {
            file: path.to_owned(),
        }),
        _ => {}
    }
}
