//! What the host and a projector process say to each other, and how it is
//! framed on their pipes.
//!
//! A frame is two little-endian `u32` lengths, a JSON header and a binary
//! blob. The blob carries what is already bytes and would only be escaped
//! by JSON: an ingest request's body travels as the bytes that arrived,
//! followed by the host's table of its events
//! ([`crate::ingest::IngestBody::table`]), so the child takes the same
//! events and line numbers without splitting the body again. JSON
//! headers because mutations and entity values are JSON values already
//! (`serde_json::Value` does not round-trip through the compact binary
//! formats), and because a frame is easy to read in a hex dump.
//!
//! The progress counter is not a message: it lives in a page of shared
//! memory (a `memfd` the child finds as file descriptor 3) that the child
//! increments after every event. The host reads it without a system call,
//! both to tell a slow projector from a stuck one and, when the child dies,
//! to find the event it died on.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use vista_plugin_api::{Hidden, Manifest, Mutation};

use crate::entity::Stored;

/// Largest header or blob accepted (a corrupt length must not allocate
/// gigabytes).
const MAX_PART: usize = 1 << 30;

/// The file descriptor the child finds its progress page at.
pub const PROGRESS_FD: RawFd = 3;

/// From the host to a projector process.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToChild {
    /// What the child's mirror starts from: the keys of the plugin's own
    /// entities (their [`key_hash`]es in the blob, 8 little-endian bytes
    /// each), and mutations logged but not applied yet, to apply after the
    /// entities they touch.
    Load {
        /// The committed entities `pending` touches.
        rows: Vec<Row>,
        /// Logged, not yet applied mutations, in log order.
        pending: Vec<Mutation>,
    },
    /// Project a request; the blob is its body.
    Job {
        /// The request's ticket.
        ticket: u64,
        /// The stream it arrived on.
        stream: String,
        /// The fate of the child's previous request, if not told yet:
        /// (its ticket, applied). Applied, the child folds its mutations
        /// into the mirror first; refused, it drops them. Told with the
        /// next request rather than on its own, it costs no wake-up.
        settle: Option<(u64, bool)>,
        /// Whether the child must be able to take this request back out of
        /// its mirror ([`crate::projector::ProjectJob::undoable`]); if not,
        /// a refusal makes the host start a fresh child instead.
        undoable: bool,
        /// How many of the plugin's requests are logged and not applied
        /// yet (the latest ones): the mirror keeps what they wrote.
        unapplied: usize,
        /// Where in the blob the body ends and its event table begins
        /// ([`crate::ingest::IngestBody::table`]); without one, the child
        /// splits the body itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        table_at: Option<usize>,
    },
    /// The answer to [`FromChild::Read`]: each entity asked for, in order.
    ReadReply {
        /// Each entity and its hidden state, if it exists.
        found: Vec<Option<Found>>,
    },
}

/// An entity the host has, as [`ToChild::ReadReply`] gives it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Found {
    /// Its value (sent as the host holds it: text as it is).
    pub value: Stored,
    /// Its hidden aggregate state, if it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<Hidden>,
}

/// The hash that names an entity's key in [`ToChild::Load`]: the same in
/// the host and its children (one binary, a fixed seed).
pub fn key_hash(entity: &str, key: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one((entity, key))
}

/// One entity of a [`ToChild::Load`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Row {
    /// Entity type.
    pub entity: String,
    /// Key.
    pub key: String,
    /// Its value (sent as the host holds it: text as it is).
    pub value: Stored,
    /// Its hidden aggregate state, if it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<Hidden>,
}

/// From a projector process to the host.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromChild {
    /// The plugin mapped; its manifest (validated by the child).
    Hello {
        /// The plugin's manifest.
        manifest: Manifest,
    },
    /// The file is not a usable plugin (the child exits after this).
    Refused {
        /// The [`crate::plugins::LoadError`] text.
        error: String,
    },
    /// The projector reads entities its mirror lacks: another plugin's, or
    /// its own the mirror does not hold (only the host has them).
    Read {
        /// (entity type, key) of each.
        keys: Vec<(String, String)>,
    },
    /// The mutations of the next events of a request still projecting,
    /// sent ahead so that the host reads them while the child projects the
    /// rest (two cores, not one after the other). They count only once the
    /// request's [`FromChild::Done`] is `Ok`.
    Part {
        /// The request's ticket.
        ticket: u64,
        /// The mutations of each event, in order, after those sent before.
        mutations: Vec<Vec<Mutation>>,
    },
    /// A request is projected: the mutations of the events not sent in a
    /// [`FromChild::Part`] yet.
    Done {
        /// The request's ticket.
        ticket: u64,
        /// The mutations each event produced, or the failing event's line
        /// and the error.
        outcome: Result<Vec<Vec<Mutation>>, (usize, String)>,
    },
}

/// Writes one frame and flushes it.
pub fn write_frame(out: &mut impl Write, header: &impl Serialize, blob: &[u8]) -> io::Result<()> {
    let header = serde_json::to_vec(header).map_err(io::Error::other)?;
    write_frame_of_pieces(out, &[&header], blob)
}

/// Writes one frame whose header is `header` pieces one after another,
/// assembled in one buffer and written with one call, and flushes it.
/// Written piece by piece through the child's `BufWriter`, a header
/// larger than its buffer (every part of a request's answer) went out as
/// a write of the 8 length bytes and then one of the rest: two system
/// calls, and two wake-ups of the reader, which had read the lengths.
pub fn write_frame_of_pieces(
    out: &mut impl Write,
    header: &[&[u8]],
    blob: &[u8],
) -> io::Result<()> {
    let header_len = header.iter().map(|piece| piece.len()).sum();
    let mut frame = Vec::with_capacity(8 + header_len + blob.len());
    frame.extend_from_slice(&lengths(header_len, blob.len()));
    header
        .iter()
        .for_each(|piece| frame.extend_from_slice(piece));
    frame.extend_from_slice(blob);
    out.write_all(&frame)?;
    out.flush()
}

/// Encodes one frame (sent through [`super::stdin`], by whoever sends it).
pub fn encode(header: &impl Serialize, blob: &[u8]) -> Vec<u8> {
    encode_parts(header, &[blob])
}

/// Encodes one frame whose blob is `parts` one after another, copied once.
pub fn encode_parts(header: &impl Serialize, parts: &[&[u8]]) -> Vec<u8> {
    let header = serde_json::to_vec(header).expect("a header serializes");
    let blob_len: usize = parts.iter().map(|part| part.len()).sum();
    let mut frame = Vec::with_capacity(8 + header.len() + blob_len);
    frame.extend_from_slice(&lengths(header.len(), blob_len));
    frame.extend_from_slice(&header);
    parts.iter().for_each(|part| frame.extend_from_slice(part));
    frame
}

/// A frame's first 8 bytes: the header's and the blob's lengths.
fn lengths(header: usize, blob: usize) -> [u8; 8] {
    let mut both = [0u8; 8];
    both[..4].copy_from_slice(&(header as u32).to_le_bytes());
    both[4..].copy_from_slice(&(blob as u32).to_le_bytes());
    both
}

/// Reads one frame: `Ok(None)` at a clean end of the stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(
    input: &mut impl Read,
) -> io::Result<Option<(T, Vec<u8>)>> {
    let mut lengths = [0u8; 8];
    match input.read_exact(&mut lengths) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let header_len = u32::from_le_bytes(lengths[..4].try_into().expect("4 bytes")) as usize;
    let blob_len = u32::from_le_bytes(lengths[4..].try_into().expect("4 bytes")) as usize;
    if header_len > MAX_PART || blob_len > MAX_PART {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame length out of range",
        ));
    }
    let mut header = vec![0u8; header_len];
    input.read_exact(&mut header)?;
    let mut blob = vec![0u8; blob_len];
    input.read_exact(&mut blob)?;
    // Checked as UTF-8 once, in bulk: parsed from bytes, serde checks
    // every string on its own, a few percent of the reader's time.
    let header =
        std::str::from_utf8(&header).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let header =
        serde_json::from_str(header).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some((header, blob)))
}

/// A `u64` counter in a page of memory shared between the host and one
/// child (a `memfd`, mapped by both).
pub struct SharedCounter {
    fd: OwnedFd,
    counter: *const AtomicU64,
}

// SAFETY: the mapping is only accessed through the atomic, and lives as
// long as the value.
unsafe impl Send for SharedCounter {}
// SAFETY: as above: every access is an atomic operation.
unsafe impl Sync for SharedCounter {}

impl SharedCounter {
    /// A new counter at 0 (host side).
    pub fn new() -> io::Result<Self> {
        // SAFETY: memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"vista-progress".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our own descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), 8) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Self::map(fd)
    }

    /// Maps the counter the host passed as [`PROGRESS_FD`] (child side).
    pub fn inherited() -> io::Result<Self> {
        // SAFETY: fcntl only checks whether the descriptor is open.
        if unsafe { libc::fcntl(PROGRESS_FD, libc::F_GETFD) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the host left this descriptor open for us, and nothing
        // else in the child uses it.
        Self::map(unsafe { OwnedFd::from_raw_fd(PROGRESS_FD) })
    }

    fn map(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: mapping 8 bytes of a memfd that is at least 8 bytes long.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            fd,
            counter: address as *const AtomicU64,
        })
    }

    /// The descriptor, to hand to a child.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The counter.
    pub fn get(&self) -> &AtomicU64 {
        // SAFETY: the mapping is page-aligned, 8 bytes long and lives as
        // long as `self`.
        unsafe { &*self.counter }
    }

    /// Its current value.
    pub fn load(&self) -> u64 {
        self.get().load(Ordering::Relaxed)
    }
}

impl Drop for SharedCounter {
    fn drop(&mut self) {
        // SAFETY: unmapping what `map` mapped.
        unsafe { libc::munmap(self.counter as *mut libc::c_void, 8) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_their_blob() {
        let mut pipe = Vec::new();
        write_frame(
            &mut pipe,
            &ToChild::Job {
                ticket: 7,
                stream: "s".into(),
                settle: None,
                undoable: true,
                unapplied: 0,
                table_at: Some(8),
            },
            b"{\"a\":1}\n",
        )
        .unwrap();
        write_frame(
            &mut pipe,
            &ToChild::Job {
                ticket: 8,
                stream: "s".into(),
                settle: Some((7, true)),
                undoable: false,
                unapplied: 1,
                table_at: None,
            },
            b"",
        )
        .unwrap();
        let mut input = &pipe[..];
        let (first, blob) = read_frame::<ToChild>(&mut input).unwrap().unwrap();
        assert!(matches!(
            first,
            ToChild::Job {
                ticket: 7,
                table_at: Some(8),
                ..
            }
        ));
        assert_eq!(blob, b"{\"a\":1}\n");
        let (second, _) = read_frame::<ToChild>(&mut input).unwrap().unwrap();
        assert!(matches!(
            second,
            ToChild::Job {
                ticket: 8,
                settle: Some((7, true)),
                ..
            }
        ));
        assert!(read_frame::<ToChild>(&mut input).unwrap().is_none());
    }

    #[test]
    fn a_corrupt_length_is_an_error_not_an_allocation() {
        let mut input = &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0][..];
        assert!(read_frame::<ToChild>(&mut input).is_err());
    }

    #[test]
    fn the_shared_counter_is_seen_through_a_second_mapping() {
        let host = SharedCounter::new().unwrap();
        // SAFETY: dup of a descriptor we own.
        let copy = unsafe { OwnedFd::from_raw_fd(libc::dup(host.raw_fd())) };
        let other = SharedCounter::map(copy).unwrap();
        other.get().fetch_add(3, Ordering::Relaxed);
        assert_eq!(host.load(), 3);
    }
}
