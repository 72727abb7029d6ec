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
//! A large request's mutations go to the host in parts
//! ([`FromChild::Part`]) as they are projected, so the host parses them on
//! the other core meanwhile; they count once the request's
//! [`FromChild::Done`] says it succeeded.
//!
//! The protocol runs on stdin and on a duplicate of stdout; stdout itself
//! is pointed at stderr first, so a plugin that prints cannot corrupt a
//! frame.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde_json::Value;
use vista_plugin_api::{Hidden, Mutation};

use super::mirror::{self, Fetched, Lookup, Mirror, Undo};
use super::overlay::{project_request, Base};
use super::wire::{read_frame, write_frame, FromChild, SharedCounter, ToChild};
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
                // time once PART_BYTES of them are waiting.
                let texts = std::cell::RefCell::new(Unsent::default());
                let mut fetched = FastMap::default();
                let outcome = match IngestBody::parse(blob.into()) {
                    Err(malformed) => Err((malformed.position, malformed.message)),
                    Ok(body) => {
                        let base = ChildBase {
                            mirror: &mirror,
                            owned: &owned,
                            fetched: Default::default(),
                            host: std::cell::RefCell::new((&mut input, &mut output)),
                        };
                        let outcome = project_request(
                            &manifest,
                            |stream, json, reader| {
                                let (mutations, text) = crate::plugins::project_with_text(
                                    &module, stream, json, reader,
                                )?;
                                let mut unsent = texts.borrow_mut();
                                unsent.push(text);
                                if unsent.bytes >= PART_BYTES {
                                    let mut host = base.host.borrow_mut();
                                    let part = unsent.take();
                                    if write_texts(&mut *host.1, TextFrame::Part, ticket, &part)
                                        .is_err()
                                    {
                                        std::process::exit(3); // the host is gone
                                    }
                                }
                                Ok(mutations)
                            },
                            &base,
                            &[],
                            &stream,
                            &body,
                            counter,
                        )
                        .map_err(|failure| (failure.position, failure.message));
                        // What the host must say before the mirror can fold
                        // these in: asked now, while the host applies none
                        // of this plugin's requests.
                        if let Ok(produced) = &outcome {
                            base.fetch_bases(produced.iter().flatten());
                        }
                        fetched = base.fetched.into_inner();
                        outcome
                    }
                };
                let written = match &outcome {
                    Ok(_) => write_texts(
                        &mut output,
                        TextFrame::Done,
                        ticket,
                        &texts.into_inner().take(),
                    ),
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
                    let mutations = produced.iter().flatten();
                    let undo = if undoable {
                        Some(mirror.apply_all(mutations))
                    } else {
                        mutations.for_each(|mutation| mirror.apply(mutation));
                        None
                    };
                    unsettled = Some((ticket, undo));
                }
                mirror.trim();
            }
            ToChild::ReadReply { .. } => return 3,
        }
    }
}

/// The environment variable that carries the mirror's bound, in entries,
/// from the host to its projector processes.
pub const MIRROR_ENTRIES_ENV: &str = "VISTA_PROJECTOR_MIRROR_ENTITIES";

/// How much of a request's mutation text the child holds before it sends
/// it ahead as a [`FromChild::Part`]: large enough that a part's write and
/// the host's wake-up are small against parsing it, small enough that the
/// host's parse runs beside the projection of the rest.
const PART_BYTES: usize = 4 * 1024;

/// Mutation texts projected and not sent yet.
#[derive(Default)]
struct Unsent {
    texts: Vec<String>,
    bytes: usize,
}

impl Unsent {
    fn push(&mut self, text: String) {
        self.bytes += text.len();
        self.texts.push(text);
    }

    fn take(&mut self) -> Vec<String> {
        self.bytes = 0;
        std::mem::take(&mut self.texts)
    }
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
    let mut header = Vec::with_capacity(texts.iter().map(String::len).sum::<usize>() + 64);
    header.extend_from_slice(opening.as_bytes());
    for (index, text) in texts.iter().enumerate() {
        if index > 0 {
            header.push(b',');
        }
        header.extend_from_slice(text.as_bytes());
    }
    header.extend_from_slice(closing.as_bytes());
    super::wire::write_raw_frame(output, &header, b"")
}

/// What a projection in the child reads: its mirror for the plugin's own
/// entities, the host for anything else (and for its own the mirror does
/// not hold, which it holds from then on).
struct ChildBase<'a, R, W> {
    mirror: &'a Mirror,
    owned: &'a HashSet<String>,
    /// Own entities asked of the host during this request, to hold after it.
    fetched: std::cell::RefCell<FastMap<(String, String), Fetched>>,
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

    /// The plugin's own `entity[key]`.
    fn own(&self, entity: &str, key: &str) -> Fetched {
        match self.mirror.lookup(entity, key) {
            Lookup::Held(entry) => entry.get(),
            Lookup::Absent => None,
            Lookup::AskHost => {
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
