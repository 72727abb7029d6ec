//! Every code the host answers with, in one file: HTTP error codes, socket
//! issue codes and WebSocket close reasons.
//!
//! Why one place: these strings are the host's contract with clients (the
//! published HyperStack clients read `X-Error-Code` and close reasons;
//! scripts match `error` fields), and each is documented in
//! `docs/PROTOCOL.md`. Declared here as enums, a code can't be misspelt at
//! a call site, and a test below reads the protocol document's tables and
//! fails when the two disagree, in either direction.
//!
//! An HTTP code does not fix its status: `plugin-stuck` is 503 on ingest
//! (retry later) but 409 on a reprojection (a conflict with the plugin's
//! state), so routes pass both.

use std::fmt;

/// Declares a code enum with its wire strings and `ALL`.
macro_rules! codes {
    ($(#[$meta:meta])* $name:ident { $($(#[doc = $doc:literal])* $variant:ident = $code:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[doc = $doc])* $variant,)* }

        impl $name {
            /// Every code, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The code on the wire.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $code,)* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

codes! {
    /// The `error` of an HTTP error body (and `X-Error-Code` on a refused
    /// upgrade).
    HttpCode {
        /// `--max-connections` reached.
        ConnectionLimitExceeded = "connection-limit-exceeded",
        /// `--max-connections-per-ip` reached.
        IpConnectionLimitExceeded = "ip-connection-limit-exceeded",
        /// No credential where one is needed.
        AuthRequired = "auth-required",
        /// A credential that does not verify.
        TokenInvalid = "token-invalid",
        /// A token past its `exp`.
        TokenExpired = "token-expired",
        /// A credential that may not do this.
        Forbidden = "forbidden",
        /// A browser page from an origin not allowed.
        OriginNotAllowed = "origin-not-allowed",
        /// A `Host` header not allowed.
        HostNotAllowed = "host-not-allowed",
        /// Over a per-address rate; `Retry-After` says when to retry.
        RateLimitExceeded = "rate-limit-exceeded",
        /// An invalid WebSocket upgrade request.
        BadUpgrade = "bad-upgrade",
        /// An ingest line that is not a JSON object (with `line`).
        MalformedEvent = "malformed-event",
        /// An ingest body with no events.
        EmptyBody = "empty-body",
        /// The body could not be read.
        BodyReadFailed = "body-read-failed",
        /// The body did not arrive within `--body-timeout-secs`.
        BodyTimeout = "body-timeout",
        /// The body is over the limit (with `limit`).
        BodyTooLarge = "body-too-large",
        /// No plugin consumes the stream.
        UnknownStream = "unknown-stream",
        /// No such plugin.
        UnknownPlugin = "unknown-plugin",
        /// No such route.
        NotFound = "not-found",
        /// The route exists with another method.
        MethodNotAllowed = "method-not-allowed",
        /// The projector refused an event (with `plugin`, `line`).
        ProjectorError = "projector-error",
        /// The projector process died on an event.
        ProjectorCrashed = "projector-crashed",
        /// The projector ran past `--projector-timeout-ms`.
        ProjectorTimeout = "projector-timeout",
        /// The plugin crashed too often and is retired until a new build.
        PluginCrashed = "plugin-crashed",
        /// The plugin's projector is stuck in a call.
        PluginStuck = "plugin-stuck",
        /// The event log cannot be written.
        StorageUnavailable = "storage-unavailable",
        /// The shared log (NATS) cannot be reached.
        LogUnavailable = "log-unavailable",
        /// The host is stopping.
        ShuttingDown = "shutting-down",
        /// A cluster host waits for a plugin build it does not have.
        HostPaused = "host-paused",
        /// The engine or log writer panicked; the process is exiting.
        HostFailed = "host-failed",
        /// Reprojection needs the event log (`--in-memory` has none).
        NoEventLog = "no-event-log",
        /// The log no longer holds every record since the start.
        LogIncomplete = "log-incomplete",
        /// A reprojection of the plugin is already running.
        ReprojectionRunning = "reprojection-running",
        /// The reprojection failed.
        ReprojectionFailed = "reprojection-failed",
    }
}

codes! {
    /// The `code` of a socket `issue` frame.
    IssueCode {
        /// A client message was not understood.
        InvalidMessage = "invalid-message",
        /// A subscribe's `filters` is malformed or not allowed for the view.
        InvalidFilter = "invalid-filter",
        /// Subscribe to an unknown view (kept pending).
        ViewNotFound = "view-not-found",
        /// The connection holds `--max-subscriptions` already.
        SubscriptionLimitExceeded = "subscription-limit-exceeded",
        /// A plugin reload removed the view (kept pending).
        ViewRemoved = "view-removed",
        /// The token does not allow that view or key.
        Forbidden = "forbidden",
        /// (Fatal) the token expired without a `refresh_auth`.
        TokenExpired = "token-expired",
        /// Subscribes over `--subscribe-rate`.
        RateLimitExceeded = "rate-limit-exceeded",
        /// A subscribe's `after` is not a `_seq` (the subscribe is still
        /// made, from the start).
        InvalidCursor = "invalid-cursor",
    }
}

codes! {
    /// Why the server closes a WebSocket: the reason's prefix, before `: `.
    CloseReason {
        /// The server stops.
        ServerShutdown = "server-shutdown",
        /// Nothing received for `--idle-timeout-secs`.
        IdleTimeout = "idle-timeout",
        /// Frames queued past `--outbox-bytes`.
        SlowConsumer = "slow-consumer",
        /// The token expired without a `refresh_auth`.
        TokenExpired = "token-expired",
        /// A message over `--max-message-bytes`.
        MessageTooLarge = "message-too-large",
        /// A text message that is not UTF-8.
        InvalidUtf8 = "invalid-utf8",
        /// A WebSocket framing error.
        ProtocolError = "protocol-error",
    }
}

/// A normal close (RFC 6455 1000), with no reason.
pub const NORMAL_CLOSE: u16 = 1000;

impl CloseReason {
    /// The RFC 6455 close code that goes with the reason.
    pub const fn code(self) -> u16 {
        match self {
            CloseReason::ServerShutdown | CloseReason::IdleTimeout => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::SlowConsumer | CloseReason::TokenExpired => 1008,
            CloseReason::MessageTooLarge => 1009,
        }
    }

    /// The close reason: `prefix: detail`.
    pub fn with(self, detail: impl fmt::Display) -> String {
        format!("{}: {detail}", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn protocol() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
        std::fs::read_to_string(path).expect("read docs/PROTOCOL.md")
    }

    /// The rows of the first table after `heading`, as cells.
    fn table(text: &str, heading: &str) -> Vec<Vec<String>> {
        let start = text
            .find(heading)
            .unwrap_or_else(|| panic!("no {heading:?}"));
        text[start..]
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .skip(2) // header and rule
            .map(|line| {
                line.trim_matches('|')
                    .split('|')
                    .map(|cell| cell.trim().to_owned())
                    .collect()
            })
            .collect()
    }

    /// Every `code` in backticks in `cell` (`a`, `b` and `c`).
    fn backticked(cell: &str) -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(|s| s.trim_end_matches(':').to_owned())
            .collect()
    }

    #[test]
    fn socket_issue_codes_match_the_protocol_table() {
        let documented: BTreeSet<String> = table(&protocol(), "### Socket issues")
            .iter()
            .flat_map(|row| backticked(&row[0]))
            .collect();
        let declared: BTreeSet<String> = IssueCode::ALL
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect();
        assert_eq!(documented, declared);
    }

    #[test]
    fn close_reasons_match_the_protocol_table() {
        let documented: BTreeSet<(u16, String)> = table(&protocol(), "## Closing")
            .iter()
            .map(|row| {
                let reason = backticked(&row[1]).pop().expect("a reason in backticks");
                (row[0].parse().expect("a close code"), reason)
            })
            .collect();
        let declared: BTreeSet<(u16, String)> = CloseReason::ALL
            .iter()
            .map(|c| (c.code(), c.as_str().to_owned()))
            .collect();
        assert_eq!(documented, declared);
    }

    #[test]
    fn every_http_code_is_documented_and_every_documented_one_exists() {
        let text = protocol();
        let documented: BTreeSet<String> = table(&text, "## HTTP errors")
            .iter()
            .flat_map(|row| backticked(&row[1]))
            .collect();
        let declared: BTreeSet<String> = HttpCode::ALL
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect();
        assert_eq!(documented, declared);
    }

    #[test]
    fn a_close_reason_has_its_prefix() {
        assert_eq!(
            CloseReason::IdleTimeout.with("nothing received for 90 s"),
            "idle-timeout: nothing received for 90 s"
        );
        assert_eq!(CloseReason::SlowConsumer.code(), 1008);
    }
}
