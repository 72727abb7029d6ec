//! Every metric the host exports, in one table, created once and held.
//!
//! Why one place: a metric's name is part of the host's interface (scrapers,
//! alerts, the dashboard and the tests read them), so each is declared once
//! here with its help text, and code increments a field of [`Metrics`]
//! rather than naming a string. Holding the handle also keeps a registry
//! lookup off hot paths (per-broadcast counters cost a hash lookup each
//! through the `metrics` facade, about 1% of fan-out CPU in a profile).
//!
//! `prometheus-client` (the Prometheus project's own Rust client) owns the
//! storage and renders `GET /metrics` (OpenMetrics text), and its handles
//! can be read back, so `GET /admin/figures` reads the same values directly
//! instead of scanning the rendered text. Counters are registered without
//! the `_total` suffix, which the library appends: `events_ingested`
//! renders `vista_events_ingested_total`.
//!
//! The figures are process-wide (a [`LazyLock`]), as metrics are: every
//! module can reach them without a handle threaded through, and a host is
//! one process.

use std::sync::LazyLock;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Declares [`Metrics`]: each line is `field: Kind = "name", "help"`.
macro_rules! table {
    ($($field:ident: $kind:ident = $name:literal, $help:literal;)*) => {
        /// The host's metrics; see [`get`].
        pub struct Metrics {
            $(#[doc = $help] pub $field: $kind,)*
            registry: Registry,
        }

        impl Metrics {
            fn new() -> Self {
                let mut registry = Registry::default();
                $(
                    let $field = table!(@new $kind);
                    registry.register($name, $help, $field.clone());
                )*
                Self { $($field,)* registry }
            }
        }
    };
    (@new Counter) => { Counter::default() };
    (@new Gauge) => { Gauge::default() };
    // Seconds: 100 µs to about 52 s.
    (@new Histogram) => { Histogram::new(exponential_buckets(0.0001, 2.0, 20)) };
}

table! {
    // Ingest and the log.
    events_ingested: Counter = "vista_events_ingested", "Events accepted through the projectors and committed.";
    log_records: Counter = "vista_log_records", "Records written to the event log.";
    log_write_failures: Counter = "vista_log_write_failures", "Event log writes that failed (the requests were refused with 503).";
    log_commit_seconds: Histogram = "vista_log_commit_seconds", "Time to write (and fsync, per policy) one batch of log records.";
    log_retained_records: Gauge = "vista_log_retained_records", "Records in the event log's retained window.";
    log_first_record: Gauge = "vista_log_first_record", "Number of the oldest retained log record.";
    log_last_record: Gauge = "vista_log_last_record", "Number of the newest log record.";
    log_disk_bytes: Gauge = "vista_log_disk_bytes", "Size of the event log file.";
    checkpoints: Counter = "vista_checkpoints", "Checkpoints of the store made durable.";
    dead_letters: Counter = "vista_dead_letters", "Events a plugin refused or crashed on, kept for an operator.";
    // Plugins and projectors.
    projector_timeouts: Counter = "vista_projector_timeouts", "Projector calls that ran past the deadline.";
    projector_crashes: Counter = "vista_projector_crashes", "Projector processes that died in a call.";
    plugin_reloads: Counter = "vista_plugin_reloads", "Plugin builds that went live from the plugins directory.";
    plugin_reload_failures: Counter = "vista_plugin_reload_failures", "Plugin files that failed to load.";
    plugin_reload_seconds: Histogram = "vista_plugin_reload_seconds", "Time from a plugin file changing to its build being live (or refused).";
    // Sources (`--source`).
    source_changes: Counter = "vista_source_changes", "Changes (events) sources applied.";
    source_refused: Counter = "vista_source_refused", "Source requests or messages refused (a plugin's dead letter, or not a JSON object); the source went on.";
    source_errors: Counter = "vista_source_errors", "Source sessions that failed (a lost connection, a log that cannot be written); each is retried with backoff.";
    // Cluster mode.
    cluster_refused: Counter = "vista_cluster_refused", "Shared-log records the projectors refused (identically on every host).";
    cluster_publish_failed: Counter = "vista_cluster_publish_failed", "Publishes to the shared log that failed.";
    cluster_applied_position: Gauge = "vista_cluster_applied_position", "Position in the shared log this host has applied.";
    // Connections and fan-out.
    connections: Gauge = "vista_connections", "Open WebSocket connections.";
    connections_refused: Counter = "vista_connections_refused", "Upgrades refused at the connection limit.";
    ip_connections_refused: Counter = "vista_ip_connections_refused", "Connections refused at the per-IP limit.";
    accept_errors: Counter = "vista_accept_errors", "Failed accepts (typically out of descriptors).";
    frames_queued: Counter = "vista_frames_queued", "Frames queued to clients' outboxes.";
    frames_sent: Counter = "vista_frames_sent", "Frames written to sockets.";
    bytes_sent: Counter = "vista_bytes_sent", "Bytes of frames written to sockets.";
    frames_conflated: Counter = "vista_frames_conflated", "Queued patches merged into a newer one for a slow client.";
    slow_consumer_disconnects: Counter = "vista_slow_consumer_disconnects", "Clients closed for falling too far behind.";
    snapshots_cancelled: Counter = "vista_snapshots_cancelled", "Snapshots dropped because their client unsubscribed or left.";
    idle_disconnects: Counter = "vista_idle_disconnects", "Clients closed for not answering pings.";
    filtered_views: Gauge = "vista_filtered_views", "Filtered views shared by subscriptions.";
    // Auth and limits.
    auth_refused: Counter = "vista_auth_refused", "Requests and upgrades refused for who they are (token, origin, host).";
    auth_refreshes: Counter = "vista_auth_refreshes", "Subscriber tokens refreshed on an open socket.";
    token_expired_disconnects: Counter = "vista_token_expired_disconnects", "Clients closed when their token expired.";
    rate_limited: Counter = "vista_rate_limited", "Requests refused by a rate limit (429).";
    subscribes_rate_limited: Counter = "vista_subscribes_rate_limited", "Subscribes over the per-connection rate.";
    subscribes_forbidden: Counter = "vista_subscribes_forbidden", "Subscribes to views the token does not allow.";
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The host's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// `GET /metrics`: every metric as OpenMetrics text ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_total_and_read_back() {
        let metrics = Metrics::new();
        metrics.frames_sent.inc_by(12);
        metrics.connections.inc();
        metrics.log_commit_seconds.observe(0.002);
        let text = metrics.render();
        assert!(text.contains("\nvista_frames_sent_total 12\n"), "{text}");
        assert!(text.contains("\nvista_connections 1\n"), "{text}");
        assert!(
            text.contains("\nvista_log_commit_seconds_count 1\n"),
            "{text}"
        );
        assert!(
            text.contains("vista_log_commit_seconds_sum 0.002"),
            "{text}"
        );
        assert_eq!(metrics.frames_sent.get(), 12);
        assert!(text.ends_with("# EOF\n"));
    }
}
