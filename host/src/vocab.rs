//! The words every part of the host shares: who a client is
//! ([`ConnId`]), what it asked for ([`SubscribeRequest`]), how a view
//! streams ([`Mode`], re-exported from `crate::ids`, which formats view
//! ids) and what a frame does ([`Op`]). A module of its own so
//! that views, outboxes, frames and the protocol parser can all use them
//! without importing each other.

/// Identifies a client connection.
pub type ConnId = u64;

/// The hash maps of the hot paths (store tables, view indexes, staged
/// state): keys come from events and clients, so the hasher is seeded per
/// process like std's, but `foldhash` hashes a short string several times
/// faster than std's SipHash.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The hash set of the same hot paths, with the same hasher.
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// A subscription request, as parsed from either message form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscribeRequest {
    /// View id.
    pub view: String,
    /// One key, or `None` for all keys (`"*"` is normalised to `None`).
    pub key: Option<String>,
    /// Window size within the view's order (list views).
    pub take: Option<usize>,
    /// Window offset within the view's order (list views).
    pub skip: Option<usize>,
    /// `false` to skip the snapshot.
    pub with_snapshot: bool,
    /// Only snapshot entities whose `_seq` is greater than this (a
    /// malformed `after` was reported to the client and is `None` here).
    pub after: Option<crate::ids::Seq>,
    /// At most this many snapshot entities.
    pub snapshot_limit: Option<usize>,
    /// Only entities matching these (list views); `None`: all.
    pub filters: Option<crate::filters::Filters>,
}

/// Streaming mode of a view (with the other identifiers in `crate::ids`,
/// being the `{mode}` of a base view's id).
pub use crate::ids::Mode;

/// Kinds of entity frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Partial state, deep-merged by the client.
    Patch,
    /// Full entity, replacing the client's copy.
    Upsert,
    /// The key leaves the view.
    Delete,
}
