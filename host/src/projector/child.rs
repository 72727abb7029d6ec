//! The projector process: `vista __projector FILE`, started by the host
//! ([`super::process`]), never by a person.
//!
//! It maps one plugin build, says hello with its manifest, and then
//! projects what the host sends, one request at a time, over a bounded
//! *mirror* of the plugin's own entities ([`super::mirror`]): it starts
//! from the keys the host has ([`ToChild::Load`]) and holds what requests
//! write and what the plugin reads, folding in each request's mutations
//! right after answering it (most requests are applied; the host commits
//! meanwhile), keeping what they replaced until the host says, with the
//! next [`ToChild::Job`], whether the request was applied; a refused one
//! is taken back out. A request only this plugin projects is folded in
//! without an undo (nothing but a failed log write or a shutdown refuses
//! it then, and the host starts a fresh child for that instead), so the
//! common request copies no entity. Only a plugin writes its own entities,
//! so what the mirror holds is exact, and the common read (a projector
//! reading what it wrote before) costs no round trip. A read of another
//! plugin's entity, or of its own the mirror does not hold, asks the host
//! ([`FromChild::Read`]).
//!
//! Such a request in which the plugin reads nothing is not even parsed:
//! each event's output is checked as plain patches and deletes of the
//! plugin's own entities ([`checked_unparsed`]) and passed on as text, and
//! the mirror forgets the keys it wrote instead of folding it in
//! ([`Mirror::forget`]). Parsing every mutation to fold it was a third of
//! this process's time, spent on the request's path, for reads that a
//! projector like `ticks` never makes. A read later in the request parses
//! what was kept; a read in a later request first folds in the forgotten
//! requests the host has not applied yet ([`ChildBase::catch_up`]).
//!
//! A large request's mutations go to the host in parts
//! ([`FromChild::Part`]) as they are projected, so the host parses them on
//! the other core meanwhile; they count once the request's
//! [`FromChild::Done`] says it succeeded.
//!
//! The protocol runs on stdin and on a duplicate of stdout; stdout itself
//! is pointed at stderr first, so a plugin that prints cannot corrupt a
//! frame.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use vista_plugin_api::{Hidden, Mutation};

use super::mirror::{self, Fetched, Lookup, Mirror, Undo};
use super::overlay::{project_request, Base, Output};
use super::wire::{key_hash, read_frame, write_frame, FromChild, SharedCounter, ToChild};
use crate::ingest::IngestBody;
use crate::memory::IdleRelease;
use crate::vocab::FastMap;

/// Runs the projector process until the host closes stdin; the exit code
/// is 0 then, 2 if the file is no usable plugin, 3 on a protocol error.
pub fn run(file: &Path) -> i32 {
    // SAFETY: descriptor juggling at the start of a single-threaded
    // process: fd 1 is duplicated for the protocol, then replaced by fd 2.
    let protocol_out = unsafe {
        let out = libc::dup(1);
        if out < 0 || libc::dup2(2, 1) < 0 {
            return 3;
        }
        File::from_raw_fd(out)
    };
    // SAFETY: fd 0 is our stdin, used by nothing else.
    let mut input = BufReader::new(unsafe { File::from_raw_fd(0) });
    let mut output = BufWriter::new(protocol_out);
    let progress = SharedCounter::inherited().ok();
    let local = AtomicU64::new(0);
    let counter = progress.as_ref().map_or(&local, |p| p.get());

    let (manifest, module) = match crate::plugins::map(file) {
        Ok(mapped) => mapped,
        Err(err) => {
            let _ = write_frame(
                &mut output,
                &FromChild::Refused {
                    error: err.to_string(),
                },
                b"",
            );
            return 2;
        }
    };
    if write_frame(
        &mut output,
        &FromChild::Hello {
            manifest: manifest.clone(),
        },
        b"",
    )
    .is_err()
    {
        return 3;
    }
    let owned: HashSet<String> = manifest.entities.iter().map(|e| e.name.clone()).collect();
    let mut mirror = Mirror::new(
        std::env::var(MIRROR_ENTRIES_ENV)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(mirror::DEFAULT_ENTRIES),
    );
    // The last request projected, folded into the mirror already (most
    // requests are applied), with what it replaced, until the host says.
    let mut unsettled: Option<(u64, Option<Undo>)> = None;
    let mut idle_release = IdleRelease::default();
    loop {
        if input.buffer().is_empty() && !input_within(idle_release.wait(IDLE_FOREVER)) {
            idle_release.timed_out(IDLE_FOREVER);
        }
        // A message comes next: what it does is work.
        idle_release.worked();
        let (message, blob) = match read_frame::<ToChild>(&mut input) {
            Ok(Some(frame)) => frame,
            Ok(None) => return 0,
            Err(_) => return 3,
        };
        match message {
            ToChild::Load { rows, pending } => {
                mirror.load(&blob, rows, &pending);
                unsettled = None;
            }
            ToChild::Job {
                ticket,
                stream,
                settle,
                undoable,
                unapplied,
                table_at,
            } => {
                // The previous request's undo, dropped once this one is
                // answered (freeing it is not the host's wait).
                let mut settled_undo = None;
                // The host's word on the previous request, if there was one.
                let previous_applied = unsettled
                    .as_ref()
                    .map(|(projected, _)| settle == Some((*projected, true)));
                if let Some((projected, undo)) = unsettled.take() {
                    let applied = previous_applied == Some(true);
                    match undo {
                        Some(undo) if applied => settled_undo = Some(undo),
                        // Refused (or never settled): put back what it replaced.
                        Some(undo) => mirror.undo(undo),
                        None if applied => {}
                        None => {
                            // The host starts a fresh child instead of
                            // telling this one: reaching here is its bug.
                            eprintln!("vista projector: request {projected} was refused, and it kept no undo");
                            return 3;
                        }
                    }
                }
                mirror.settle(previous_applied, unapplied);
                // Each event's mutations as the plugin wrote them: sent on
                // as they are rather than serialized again, a part at a
                // time once PART_BYTES of them are waiting. A request that
                // cannot be refused is parsed only once the plugin reads
                // state ([`Output::Kept`]): the host parses it anyway.
                let texts = std::cell::RefCell::new(Texts::default());
                let unparsed = std::cell::Cell::new(0usize);
                // The key hashes the kept events write.
                let kept_keys = std::cell::RefCell::new(Vec::new());
                let mut fetched = FastMap::default();
                let mut forgettable = false;
                let outcome = match split_body(blob, table_at) {
                    Err(malformed) => Err((malformed.position, malformed.message)),
                    Ok(body) => {
                        let base = ChildBase {
                            mirror: std::cell::RefCell::new(&mut mirror),
                            owned: &owned,
                            fetched: Default::default(),
                            read: Default::default(),
                            host: std::cell::RefCell::new((&mut input, &mut output)),
                        };
                        let outcome = project_request(
                            &manifest,
                            |stream, json, reader| {
                                let text =
                                    crate::plugins::project_text(&module, stream, json, reader)?;
                                // A read reaches the base first thing (the
                                // overlay loads what it has not loaded): from
                                // then on, the output is parsed.
                                let output = if !undoable
                                    && !base.read.get()
                                    && checked_unparsed(&owned, &text, &mut kept_keys.borrow_mut())
                                {
                                    unparsed.set(unparsed.get() + 1);
                                    Output::Kept
                                } else {
                                    Output::Parsed(crate::plugins::parse_mutations(&text)?)
                                };
                                let mut texts = texts.borrow_mut();
                                texts.push(text);
                                if texts.unsent_bytes >= PART_BYTES {
                                    let mut host = base.host.borrow_mut();
                                    if write_texts(
                                        &mut *host.1,
                                        TextFrame::Part,
                                        ticket,
                                        texts.take_unsent(),
                                    )
                                    .is_err()
                                    {
                                        std::process::exit(3); // the host is gone
                                    }
                                }
                                Ok(output)
                            },
                            |event| {
                                unparsed.set(unparsed.get() - 1);
                                crate::plugins::parse_mutations(&texts.borrow().all[event])
                            },
                            &base,
                            &[],
                            &stream,
                            &body,
                            counter,
                        )
                        .map_err(|failure| (failure.position, failure.message));
                        let outcome = match outcome {
                            Ok(mut produced) => {
                                let texts = texts.borrow();
                                forgettable = unparsed.get() > 0
                                    && !mirror_holds_unapplied(&base, &texts.all);
                                if unparsed.get() > 0 && !forgettable {
                                    // Folded in after all: parsed now.
                                    for (event, text) in texts.all.iter().enumerate() {
                                        if produced[event].is_empty() {
                                            produced[event] = crate::plugins::parse_mutations(text)
                                                .expect("checked when projected");
                                        }
                                    }
                                }
                                if !forgettable {
                                    // What the host must say before the
                                    // mirror can fold these in: asked now,
                                    // while the host applies none of this
                                    // plugin's requests.
                                    base.catch_up();
                                    base.fetch_bases(produced.iter().flatten());
                                }
                                Ok(produced)
                            }
                            Err(failure) => Err(failure),
                        };
                        fetched = base.fetched.into_inner();
                        outcome
                    }
                };
                let mut texts = texts.into_inner();
                let written = match &outcome {
                    Ok(_) => write_texts(&mut output, TextFrame::Done, ticket, texts.take_unsent()),
                    Err(failure) => write_frame(
                        &mut output,
                        &FromChild::Done {
                            ticket,
                            outcome: Err(failure.clone()),
                        },
                        b"",
                    ),
                };
                if written.is_err() {
                    return 3;
                }
                // Folded now, while the host commits, rather than when the
                // next request comes: the answer went first.
                drop(settled_undo);
                for ((entity, key), found) in fetched {
                    mirror.fill(&entity, key, found);
                }
                if let Ok(produced) = outcome {
                    let undo = if forgettable {
                        if mirror.holds_nothing() {
                            // Nothing to drop: the keys become known.
                            let parsed = produced.iter().flatten();
                            let parsed = parsed.map(|m| key_hash(&m.entity, &m.key));
                            mirror.know(kept_keys.into_inner().into_iter().chain(parsed));
                        } else {
                            let targets: Vec<Target<'_>> =
                                texts.all.iter().flat_map(|text| targets(text)).collect();
                            mirror.forget(targets.iter().map(Target::ids));
                        }
                        None
                    } else {
                        let mutations = produced.iter().flatten();
                        if undoable {
                            Some(mirror.apply_all(mutations))
                        } else {
                            mutations.for_each(|mutation| mirror.apply(mutation));
                            None
                        }
                    };
                    if forgettable {
                        mirror.keep_forgotten(texts.all);
                    }
                    unsettled = Some((ticket, undo));
                }
                mirror.trim();
            }
            ToChild::ReadReply { .. } => return 3,
        }
    }
}

/// A job's body, split by the host's table if it sent one (see
/// [`IngestBody::table`]), else here.
fn split_body(
    mut blob: Vec<u8>,
    table_at: Option<usize>,
) -> Result<IngestBody, crate::ingest::MalformedBody> {
    if let Some(at) = table_at.filter(|at| *at <= blob.len()) {
        let table = blob.split_off(at);
        let text = bytes::Bytes::from(blob);
        return IngestBody::with_table(text.clone(), &table)
            .map_or_else(|| IngestBody::parse(text), Ok);
    }
    IngestBody::parse(blob.into())
}

/// The environment variable that carries the mirror's bound, in entries,
/// from the host to its projector processes.
pub const MIRROR_ENTRIES_ENV: &str = "VISTA_PROJECTOR_MIRROR_ENTITIES";

/// How much of a request's mutation text the child holds before it sends
/// it ahead as a [`FromChild::Part`]: large enough that a part's write and
/// the host's wake-up are small against parsing it, small enough that the
/// host's parse runs beside the projection of the rest. At 4 KiB a
/// 1,000-event request took 20 to 30 parts, and the reader's wake-ups
/// (context switches) were a tenth of its samples; 16 KiB cut CPU per
/// event by 3 to 5% (BENCHMARKS.md, ninth session). At 64 KiB a
/// 1,000-tick request is one part, parsed only after its projection.
const PART_BYTES: usize = 16 * 1024;

/// A request's mutation texts, one JSON array per event, and how many of
/// them went to the host already.
#[derive(Default)]
struct Texts {
    all: Vec<String>,
    sent: usize,
    unsent_bytes: usize,
}

impl Texts {
    fn push(&mut self, text: String) {
        self.unsent_bytes += text.len();
        self.all.push(text);
    }

    /// The texts not sent yet, counted as sent.
    fn take_unsent(&mut self) -> &[String] {
        let from = std::mem::replace(&mut self.sent, self.all.len());
        self.unsent_bytes = 0;
        &self.all[from..]
    }
}

/// The fields of a mutation a projector process checks without parsing the
/// rest ([`checked_unparsed`]): a plain patch or delete has no others.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainMutation<'a> {
    #[serde(borrow)]
    entity: Cow<'a, str>,
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// Whether a plugin's output (a JSON array of mutations) is plain patches
/// and deletes of its own entities with keys: what the host accepts
/// without more checks. Anything else is parsed and checked in full, which
/// gives the error a bad mutation deserves. If it is, the [`key_hash`] of
/// each key it writes is added to `keys`. The common output is answered by
/// a hand-written scan ([`super::plain`]); serde answers what it is not
/// sure of.
fn checked_unparsed(owned: &HashSet<String>, text: &str, keys: &mut Vec<u64>) -> bool {
    if super::plain::plain_keys(owned, text, keys) {
        return true;
    }
    let Ok(mutations) = serde_json::from_str::<Vec<PlainMutation<'_>>>(text) else {
        return false;
    };
    let plain = mutations.iter().all(|m| {
        !m.key.is_empty()
            && owned.contains(m.entity.as_ref())
            && match m.op.as_ref() {
                "delete" => true,
                "patch" => m.data.is_some_and(|data| data.get().starts_with('{')),
                _ => false,
            }
    });
    if plain {
        keys.extend(mutations.iter().map(|m| key_hash(&m.entity, &m.key)));
    }
    plain
}

/// The entity and key a mutation writes, read from its text.
#[derive(Deserialize)]
struct Target<'a> {
    #[serde(borrow)]
    entity: Cow<'a, str>,
    #[serde(borrow)]
    key: Cow<'a, str>,
}

impl Target<'_> {
    fn ids(&self) -> (&str, &str) {
        (&self.entity, &self.key)
    }
}

/// What the mutations of one event's text write (it parsed when projected).
fn targets(text: &str) -> Vec<Target<'_>> {
    serde_json::from_str(text).expect("checked when projected")
}

/// Whether the mirror holds a key these texts write as written by a
/// request the host may not have applied yet (then the request is folded
/// in rather than forgotten).
fn mirror_holds_unapplied<R, W>(base: &ChildBase<'_, R, W>, texts: &[String]) -> bool {
    let mirror = base.mirror.borrow();
    mirror.may_hold_unapplied()
        && texts.iter().any(|text| {
            let targets = targets(text);
            mirror.holds_unapplied(targets.iter().map(Target::ids))
        })
}

/// Which frame [`write_texts`] writes.
#[derive(Clone, Copy)]
enum TextFrame {
    Part,
    Done,
}

/// Writes a [`FromChild::Part`] or a successful [`FromChild::Done`] whose
/// mutations are the plugin's own output texts, one JSON array per event
/// (valid JSON: each was parsed), rather than serializing them again.
fn write_texts(
    output: &mut impl std::io::Write,
    kind: TextFrame,
    ticket: u64,
    texts: &[String],
) -> std::io::Result<()> {
    let (opening, closing) = match kind {
        TextFrame::Part => (
            format!("{{\"Part\":{{\"ticket\":{ticket},\"mutations\":["),
            "]}}",
        ),
        TextFrame::Done => (
            format!("{{\"Done\":{{\"ticket\":{ticket},\"outcome\":{{\"Ok\":["),
            "]}}}",
        ),
    };
    let mut header = Vec::with_capacity(2 * texts.len() + 2);
    header.push(opening.as_bytes());
    for (index, text) in texts.iter().enumerate() {
        if index > 0 {
            header.push(b",");
        }
        header.push(text.as_bytes());
    }
    header.push(closing.as_bytes());
    super::wire::write_frame_of_pieces(output, &header, b"")
}

/// What a projection in the child reads: its mirror for the plugin's own
/// entities, the host for anything else (and for its own the mirror does
/// not hold, which it holds from then on).
struct ChildBase<'a, R, W> {
    mirror: std::cell::RefCell<&'a mut Mirror>,
    owned: &'a HashSet<String>,
    /// Own entities asked of the host during this request, to hold after it.
    fetched: std::cell::RefCell<FastMap<(String, String), Fetched>>,
    /// Whether the plugin read state during this request.
    read: std::cell::Cell<bool>,
    host: std::cell::RefCell<(&'a mut R, &'a mut W)>,
}

impl<R: std::io::Read, W: std::io::Write> ChildBase<'_, R, W> {
    /// Asks the host for entities, in one round trip. A broken pipe means
    /// the host is gone: the process ends.
    fn ask_host(&self, keys: Vec<(String, String)>) -> Vec<Fetched> {
        let mut host = self.host.borrow_mut();
        let (input, output) = &mut *host;
        let asked = keys.len();
        if write_frame(*output, &FromChild::Read { keys }, b"").is_err() {
            std::process::exit(3);
        }
        match read_frame::<ToChild>(*input) {
            Ok(Some((ToChild::ReadReply { found }, _))) if found.len() == asked => found
                .into_iter()
                .map(|found| {
                    found.map(|f| (f.value.tree(), Arc::new(f.hidden.unwrap_or_default())))
                })
                .collect(),
            _ => std::process::exit(3),
        }
    }

    /// Folds in the forgotten requests the host has not applied yet
    /// ([`Mirror::take_forgotten`]), on the entities the host has: before
    /// the mirror answers a read or folds in another request.
    fn catch_up(&self) {
        if !self.mirror.borrow().has_forgotten() {
            return;
        }
        let texts = self.mirror.borrow_mut().take_forgotten();
        let mutations: Vec<Mutation> = texts
            .iter()
            .flat_map(|text| crate::plugins::parse_mutations(text).expect("checked when projected"))
            .collect();
        let unknown = self.mirror.borrow().unknown_bases(mutations.iter());
        let found = if unknown.is_empty() {
            Vec::new()
        } else {
            self.ask_host(unknown.clone())
        };
        let mut mirror = self.mirror.borrow_mut();
        for ((entity, key), found) in unknown.into_iter().zip(found) {
            mirror.fill(&entity, key, found);
        }
        for mutation in &mutations {
            mirror.apply(mutation);
        }
    }

    /// The plugin's own `entity[key]`.
    fn own(&self, entity: &str, key: &str) -> Fetched {
        self.catch_up();
        let lookup = match self.mirror.borrow().lookup(entity, key) {
            Lookup::Held(entry) => Ok(entry.get()),
            Lookup::Absent => Ok(None),
            Lookup::AskHost => Err(()),
        };
        match lookup {
            Ok(found) => found,
            Err(()) => {
                let id = (entity.to_owned(), key.to_owned());
                if let Some(found) = self.fetched.borrow().get(&id) {
                    return found.clone();
                }
                let found = self.ask_host(vec![id.clone()]).pop().flatten();
                self.fetched.borrow_mut().insert(id, found.clone());
                found
            }
        }
    }

    /// Asks the host, in one round trip, for the entities `mutations`
    /// write that the mirror cannot fold them into yet.
    fn fetch_bases<'m>(&self, mutations: impl Iterator<Item = &'m Mutation>) {
        let fetched = self.fetched.borrow();
        let unknown: Vec<(String, String)> = self
            .mirror
            .borrow()
            .unknown_bases(mutations)
            .into_iter()
            .filter(|id| !fetched.contains_key(id))
            .collect();
        drop(fetched);
        if unknown.is_empty() {
            return;
        }
        let found = self.ask_host(unknown.clone());
        self.fetched
            .borrow_mut()
            .extend(unknown.into_iter().zip(found));
    }
}

impl<R: std::io::Read, W: std::io::Write> Base for ChildBase<'_, R, W> {
    fn value(&self, entity: &str, key: &str) -> Option<Arc<Value>> {
        self.read.set(true);
        if self.owned.contains(entity) {
            self.own(entity, key).map(|(value, _)| value)
        } else {
            self.ask_host(vec![(entity.to_owned(), key.to_owned())])
                .pop()
                .flatten()
                .map(|(value, _)| value)
        }
    }

    fn value_with_hidden(&self, entity: &str, key: &str) -> (Option<Arc<Value>>, Arc<Hidden>) {
        self.read.set(true);
        let found = if self.owned.contains(entity) {
            self.own(entity, key)
        } else {
            self.ask_host(vec![(entity.to_owned(), key.to_owned())])
                .pop()
                .flatten()
        };
        match found {
            Some((value, hidden)) => (Some(value), hidden),
            None => (None, Arc::default()),
        }
    }
}

/// A wait with no end, for [`IdleRelease::wait`] when nothing is due.
const IDLE_FOREVER: std::time::Duration = std::time::Duration::MAX;

/// Whether stdin has input (or has closed) within `wait`: false only if
/// the wait ran out. The projector gives freed memory back when it did
/// ([`crate::memory`]).
fn input_within(wait: std::time::Duration) -> bool {
    let timeout = i32::try_from(wait.as_millis()).unwrap_or(-1);
    let mut stdin = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid `pollfd` for fd 0, which this process owns.
    let ready = unsafe { libc::poll(&mut stdin, 1, timeout) };
    // An error (EINTR) counts as input: the read that follows tells.
    ready != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_and_a_done_frame_of_plugin_texts_read_back_as_the_mutations() {
        let produced = [
            vec![Mutation::patch(
                "T",
                "a",
                serde_json::json!({"n": "q\"uote"}),
            )],
            vec![],
            vec![
                Mutation::delete("T", "b"),
                Mutation::patch("T", "c", serde_json::json!({})),
            ],
        ];
        let texts: Vec<String> = produced
            .iter()
            .map(|event| serde_json::to_string(event).unwrap())
            .collect();
        let mut pipe = Vec::new();
        write_texts(&mut pipe, TextFrame::Part, 9, &texts[..2]).unwrap();
        write_texts(&mut pipe, TextFrame::Done, 9, &texts[2..]).unwrap();
        let mut input = &pipe[..];
        match read_frame::<FromChild>(&mut input).unwrap().unwrap().0 {
            FromChild::Part { ticket, mutations } => {
                assert_eq!(ticket, 9);
                assert_eq!(mutations, produced[..2]);
            }
            other => panic!("{other:?}"),
        }
        match read_frame::<FromChild>(&mut input).unwrap().unwrap().0 {
            FromChild::Done { ticket, outcome } => {
                assert_eq!(ticket, 9);
                assert_eq!(outcome.unwrap(), produced[2..]);
            }
            other => panic!("{other:?}"),
        }
    }
}
