//! What `GET /admin/views` shows of each view (the dashboard's view list):
//! its definition and counts, read on the engine thread. It lives with the
//! views rather than with the dashboard so the engine, which answers the
//! request, needs nothing from the HTTP side.

use serde::Serialize;
use vista_plugin_api::view::{Filter, SortSpec};

use super::Views;
use crate::ids::{Mode, PluginName, ViewId};

/// One view as `GET /admin/views` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ViewSummary {
    /// View id, e.g. `Token/list`.
    pub id: ViewId,
    /// Plugin providing it.
    pub plugin: PluginName,
    /// Entity type it draws from.
    pub source: String,
    /// `list`, `state` or `append`.
    pub mode: Mode,
    /// Whether a plugin declared it (filter/sort/take) rather than being a
    /// base view.
    pub derived: bool,
    /// Its filter (derived views).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// Its order (list views).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort: Option<SortSpec>,
    /// Its limit (derived views).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub take: Option<usize>,
    /// Entities in it (for state and append views: entities of the type).
    pub entities: usize,
    /// Subscriptions to it: all keys, one key, or a window.
    pub subscribers: usize,
}

impl Views {
    /// Every view, by id. Runs on the engine thread: counts only.
    pub fn summaries(&self) -> Vec<ViewSummary> {
        let views = self;
        // State and append views keep no index; the type's list view counts
        // the same entities.
        let type_count = |source: &str| {
            views
                .get(&ViewId::base(source, Mode::List))
                .map_or(0, |v| v.member_count())
        };
        let mut summaries: Vec<ViewSummary> = views
            .iter()
            .map(|view| ViewSummary {
                id: view.id.clone(),
                plugin: view.plugin.clone(),
                source: view.source.clone(),
                mode: view.mode,
                derived: view.def.is_some(),
                filter: view.def.as_ref().and_then(|d| d.filter.clone()),
                sort: (view.mode == Mode::List).then(|| view.sort.clone()),
                take: view.def.as_ref().and_then(|d| d.take),
                entities: if view.mode == Mode::List {
                    view.member_count()
                } else {
                    type_count(&view.source)
                },
                subscribers: view.subscriber_count(),
            })
            .collect();
        summaries.sort_by(|a, b| a.id.cmp(&b.id));
        summaries
    }
}
