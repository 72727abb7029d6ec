//! Reprojection as the engine runs it on a single host: starting a
//! [`Reprojector`] over the event log, holding the plugin for its final
//! pass once it caught up, and swapping the rebuilt entities in as one
//! logged commit (see [`crate::reproject`] for the whole procedure). With a
//! log that orders records (cluster mode) the same swap runs at a marker's
//! position instead (`super::ordered`).

use std::collections::BTreeMap;

use tokio::sync::oneshot;
use vista_plugin_api::{Hidden, Mutation};

use super::log::History;
use super::pipeline::{Pipeline, REPROJECTION_TICKET};
use super::{Command, Engine, ReprojectError};
use crate::entity::Stored;
use crate::ids::{PluginName, Seq};
use crate::plugins::BuildEventKind;
use crate::reproject::{ReprojectReport, Reprojector};
use crate::store::Store;

/// A reprojection the engine tracks.
pub(super) struct Reprojection {
    pub(super) reprojector: Reprojector,
    /// The reprojector caught up and waits for the plugin to be free.
    pub(super) wants_final: bool,
    pub(super) state: &'static str,
    pub(super) changed: Option<u64>,
    pub(super) error: Option<String>,
}

impl Engine {
    /// Starts rebuilding `name`'s entities from the log.
    pub(super) fn start_reprojection(&mut self, name: &str) -> Result<(), ReprojectError> {
        let plugin = self
            .plugins
            .get(name)
            .ok_or_else(|| ReprojectError::UnknownPlugin(name.to_owned()))?;
        if plugin.stuck {
            return Err(ReprojectError::Stuck(name.to_owned()));
        }
        let log = match self.log.reproject(name)? {
            History::Records(log) => log,
            // Every host starts when it reaches the marker.
            History::AtMarker => return Ok(()),
        };
        if self
            .reprojections
            .get(name)
            .is_some_and(|r| matches!(r.state, "running" | "swapping"))
        {
            return Err(ReprojectError::AlreadyRunning(name.to_owned()));
        }
        let stats = log.stats().map_err(ReprojectError::Failed)?;
        if stats.first_rec > 1 {
            return Err(ReprojectError::LogIncomplete(stats.first_rec - 1));
        }
        let commands = self.commands.clone();
        let reprojector =
            Reprojector::spawn(plugin.lib.clone(), log, stats.last_rec, move |report| {
                let _ = commands.send(Command::Reprojector(report));
            })
            .map_err(|e| ReprojectError::Failed(e.to_string()))?;
        tracing::info!(
            plugin = name,
            records = stats.last_rec,
            "reprojection started"
        );
        self.reprojections.insert(
            name.into(),
            Reprojection {
                reprojector,
                wants_final: false,
                state: "running",
                changed: None,
                error: None,
            },
        );
        Ok(())
    }

    /// A reprojector thread reports.
    pub(super) fn reprojected(&mut self, report: ReprojectReport) {
        let Some(report) = self.marked_reprojected(report) else {
            return;
        };
        match report {
            ReprojectReport::CaughtUp { plugin } => {
                if let Some(r) = self.reprojections.get_mut(plugin.as_str()) {
                    r.wants_final = true;
                }
                start_final_passes(&mut self.reprojections, &mut self.pipeline);
            }
            ReprojectReport::Failed { plugin, reason } => {
                tracing::error!(%plugin, %reason, "reprojection failed; the live state is unchanged");
                self.pipeline.release(&plugin, REPROJECTION_TICKET);
                if let Some(r) = self.reprojections.get_mut(plugin.as_str()) {
                    r.state = "failed";
                    r.error = Some(reason);
                }
                self.pump_deferred();
            }
            ReprojectReport::Done { plugin, shadow } => self.swap_in(&plugin, shadow),
        }
    }

    /// Commits the difference between the live entities of `plugin` and the
    /// rebuilt ones, as one logged request.
    pub(super) fn swap_in(&mut self, plugin: &str, shadow: Store) {
        let Some(lib) = self.plugins.get(plugin).map(|p| p.lib.clone()) else {
            self.pipeline.release(plugin, REPROJECTION_TICKET);
            return;
        };
        let without_seq = |value: &Stored| {
            let mut value = value.to_value();
            if let Some(fields) = value.as_object_mut() {
                fields.remove(Seq::FIELD);
            }
            value
        };
        // An entity the new build computes differently (visibly, or only in
        // its hidden aggregate state) is deleted and replaced whole, hidden
        // state included, so later `unique_count`s go on from the rebuilt sets.
        let hidden_of = |store: &Store, entity: &str, key: &str| {
            store
                .hidden(entity, key)
                .map(|h| Hidden::clone(h))
                .unwrap_or_default()
        };
        let mut mutations = Vec::new();
        {
            let store = self.store.read().unwrap_or_else(|e| e.into_inner());
            for entity in lib.manifest.entities.iter().map(|e| e.name.as_str()) {
                let mut live: Vec<(&str, &Stored)> = store.table(entity).collect();
                live.sort_by(|a, b| a.0.cmp(b.0));
                for (key, value) in live {
                    match shadow.get(entity, key) {
                        None => mutations.push(Mutation::delete(entity, key)),
                        Some(rebuilt)
                            if without_seq(rebuilt) != without_seq(value)
                                || store.hidden(entity, key) != shadow.hidden(entity, key) =>
                        {
                            mutations.push(Mutation::delete(entity, key));
                            mutations.push(Mutation::replace(
                                entity,
                                key,
                                without_seq(rebuilt),
                                hidden_of(&shadow, entity, key),
                            ));
                        }
                        Some(_) => {}
                    }
                }
                let mut rebuilt: Vec<(&str, &Stored)> = shadow.table(entity).collect();
                rebuilt.sort_by(|a, b| a.0.cmp(b.0));
                for (key, value) in rebuilt {
                    if store.get(entity, key).is_none() {
                        mutations.push(Mutation::replace(
                            entity,
                            key,
                            without_seq(value),
                            hidden_of(&shadow, entity, key),
                        ));
                    }
                }
            }
        }
        let changed = mutations.len() as u64;
        tracing::info!(
            plugin,
            mutations = changed,
            "reprojection done; swapping in the rebuilt entities"
        );
        if let Some(r) = self.reprojections.get_mut(plugin) {
            r.state = "done";
            r.changed = Some(changed);
        }
        if let Some(report) = self.reports.get_mut(&lib.file) {
            report.record(BuildEventKind::Reprojected, None);
        }
        // Committed like a request: its `_seq`s are reserved by a log
        // record of no stream (replay skips it: the rebuilt state is what
        // the current build's replay produces anyway).
        let (reply, _) = oneshot::channel();
        self.submit_commit(mutations, vec![plugin.into()], "", reply);
        // New requests may project again, over the swap's mutations.
        // A projector process reloads its mirror before its next request.
        if let Some(loaded) = self.plugins.get_mut(plugin) {
            loaded.resync = true;
        }
        self.pipeline.release(plugin, REPROJECTION_TICKET);
        self.pump_deferred();
    }
}

/// Holds every plugin whose reprojector caught up, once it has nothing in
/// flight, and lets the reprojector replay the last records.
pub(super) fn start_final_passes(
    reprojections: &mut BTreeMap<PluginName, Reprojection>,
    pipeline: &mut Pipeline,
) {
    let ready: Vec<PluginName> = reprojections
        .iter()
        .filter(|(name, r)| {
            // Every record of the plugin must be in the log file and
            // applied before the last replay pass.
            r.wants_final
                && !pipeline.busy.contains_key(name.as_str())
                && !pipeline.holds_commits_of(name)
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in ready {
        let r = reprojections.get_mut(&name).expect("listed above");
        r.wants_final = false;
        r.state = "swapping";
        // New requests for the plugin wait until the swap is committed.
        pipeline.busy.insert(name.clone(), REPROJECTION_TICKET);
        r.reprojector.finish();
    }
}
