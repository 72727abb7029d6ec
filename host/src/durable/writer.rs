//! The [`LogWriter`] thread, the one writer of the event log: group
//! commit, the `--fsync` policy, checkpoints and retention after them, and
//! the storage faults it recovers from by itself.
//!
//! A write that fails (a full disk, an I/O error) marks the log faulted:
//! every request is refused with 503 at once, never half-written, while the
//! writer reopens the database with backoff ([`REOPEN_FIRST_BACKOFF`] up to
//! [`REOPEN_MAX_BACKOFF`]) and proves the disk takes [`PROBE_BYTES`] before
//! ingest resumes. Its own module because that recovery and the thread
//! that owns it are a job of their own, apart from the format of what is
//! written ([`super`]).

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::Durability;

use super::{open_database, publish_gauges, Checkpoint, EventLog, LogRecord, Retention, LOG, META};

/// When the log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every commit, before any request in it is answered (default).
    Always,
    /// Commits are written at once and fsynced every this often; a request
    /// is answered once written, so a power loss (not a process crash) can
    /// lose up to this much acknowledged data.
    Every(Duration),
}

/// Work for the log writer thread.
pub enum WriterJob {
    /// Append a record.
    Append(LogRecord),
    /// Write a checkpoint.
    Checkpoint(Checkpoint),
}

/// What the writer reports back.
pub enum WriterReport {
    /// Every record up to this one is durable (per the policy).
    Durable(u64),
    /// These records could not be written; nothing of them is on disk.
    Failed {
        /// The records.
        recs: Vec<u64>,
        /// Why.
        reason: String,
    },
    /// A checkpoint covering this record was written.
    Checkpointed(u64),
}

/// The thread that writes the log.
pub struct LogWriter {
    jobs: mpsc::Sender<WriterJob>,
    thread: std::thread::JoinHandle<()>,
}

impl LogWriter {
    /// Starts the writer; `report` receives its outcomes in record order.
    pub fn spawn(
        log: Arc<EventLog>,
        policy: FsyncPolicy,
        retention: Retention,
        report: impl Fn(WriterReport) + Send + 'static,
    ) -> LogWriter {
        let (jobs, queue) = mpsc::channel::<WriterJob>();
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                crate::supervise::run("log-writer", || {
                    write_loop(&log, policy, retention, &queue, report)
                })
            })
            .expect("start the log writer thread");
        LogWriter { jobs, thread }
    }

    /// Queues a job.
    pub fn submit(&self, job: WriterJob) {
        let _ = self.jobs.send(job);
    }

    /// Writes what is queued, then stops the thread (which drops its
    /// handle on the log).
    pub fn close(self) {
        drop(self.jobs);
        let _ = self.thread.join();
    }
}

fn write_loop(
    log: &EventLog,
    policy: FsyncPolicy,
    retention: Retention,
    queue: &mpsc::Receiver<WriterJob>,
    report: impl Fn(WriterReport),
) {
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    let mut backoff = REOPEN_FIRST_BACKOFF;
    let mut next_reopen = Instant::now();
    // The first record reported failed since the log faulted: a commit
    // that returned an error may still have reached the disk, and the
    // engine refused it (503), so it must not come back at the next start.
    let mut failed_from: Option<u64> = None;
    loop {
        let faulted = log.fault().is_some();
        let wait = match (policy, unsynced) {
            _ if faulted => next_reopen.saturating_duration_since(Instant::now()),
            (FsyncPolicy::Every(every), true) => every.saturating_sub(last_sync.elapsed()),
            _ => Duration::from_secs(3600),
        };
        let first = match queue.recv_timeout(wait) {
            Ok(job) => Some(job),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if faulted && Instant::now() >= next_reopen {
            // A storage fault heals by itself once the disk takes writes.
            match log.reopen().and_then(|()| match failed_from {
                Some(rec) => log.remove_from(rec),
                None => Ok(0),
            }) {
                Ok(removed) => {
                    tracing::info!(file = %log.path().display(), removed, "the event log is writable again; ingest resumes");
                    log.set_fault(None);
                    backoff = REOPEN_FIRST_BACKOFF;
                    failed_from = None;
                }
                Err(reason) => {
                    tracing::warn!(%reason, retry_in_ms = backoff.as_millis() as u64, "the event log still cannot be written");
                    next_reopen = Instant::now() + backoff;
                    backoff = (backoff * 2).min(REOPEN_MAX_BACKOFF);
                }
            }
        }
        let Some(first) = first else {
            if !faulted && unsynced {
                if let Err(reason) = log.sync() {
                    tracing::error!(%reason, "log fsync failed");
                    log.set_fault(Some(reason));
                    next_reopen = Instant::now() + backoff;
                }
                last_sync = Instant::now();
                unsynced = false;
            }
            continue;
        };
        // Group commit: everything queued meanwhile goes in the same
        // transaction, behind one fsync.
        let mut records = Vec::new();
        let mut checkpoints = Vec::new();
        for job in std::iter::once(first).chain(queue.try_iter()) {
            match job {
                WriterJob::Append(record) => {
                    crate::supervise::inject_panic("log-writer", &record.stream);
                    records.push(record)
                }
                WriterJob::Checkpoint(checkpoint) => checkpoints.push(checkpoint),
            }
        }
        if let Some(reason) = log.fault() {
            // Refused at once, never half-written: the engine answers 503.
            if !records.is_empty() {
                report(WriterReport::Failed {
                    recs: records.iter().map(|r| r.rec).collect(),
                    reason,
                });
            }
            if !checkpoints.is_empty() {
                tracing::warn!("checkpoint skipped: the event log cannot be written");
            }
            continue;
        }
        if !records.is_empty() {
            let fsync = policy == FsyncPolicy::Always;
            let started = Instant::now();
            match log.append(&records, fsync) {
                Ok(()) => {
                    crate::metrics::get()
                        .log_commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    crate::metrics::get()
                        .log_records
                        .inc_by(records.len() as u64);
                    unsynced = !fsync;
                    report(WriterReport::Durable(
                        records.last().expect("non-empty").rec,
                    ));
                }
                Err(reason) => {
                    crate::metrics::get().log_write_failures.inc();
                    tracing::error!(%reason, records = records.len(), "cannot write the event log; the requests are refused with 503 until it can");
                    log.set_fault(Some(reason.clone()));
                    next_reopen = Instant::now() + backoff;
                    let first = records.first().expect("non-empty").rec;
                    failed_from = Some(failed_from.map_or(first, |f| f.min(first)));
                    report(WriterReport::Failed {
                        recs: records.iter().map(|r| r.rec).collect(),
                        reason,
                    });
                }
            }
        }
        let wrote_checkpoint = !checkpoints.is_empty();
        for checkpoint in checkpoints {
            let started = Instant::now();
            match log.write_checkpoint(&checkpoint) {
                Ok(()) => {
                    tracing::info!(
                        rec = checkpoint.rec,
                        entities = checkpoint.entities.len(),
                        ms = started.elapsed().as_millis() as u64,
                        "checkpoint written"
                    );
                    report(WriterReport::Checkpointed(checkpoint.rec));
                    match log.prune(retention, checkpoint.rec) {
                        Ok(0) => {}
                        Ok(dropped) => {
                            tracing::info!(dropped, "log records past the retention dropped")
                        }
                        Err(reason) => tracing::error!(%reason, "cannot drop old log records"),
                    }
                    publish_gauges(log);
                }
                Err(reason) => tracing::error!(%reason, "cannot write a checkpoint"),
            }
        }
        if wrote_checkpoint {
            // A checkpoint encodes the whole store on this thread (hundreds
            // of MB at a million entities), which then waits for records:
            // a durable host with a million tokens kept 1.1 GB resident
            // against 450 MB after a restart (BENCHMARKS.md).
            crate::memory::release_freed_memory();
        }
    }
}

/// The first wait before reopening a faulted log, doubled up to
/// [`REOPEN_MAX_BACKOFF`].
const REOPEN_FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// What a reopened log must be able to write before it takes requests.
const PROBE_BYTES: usize = 4 << 20;
/// See [`REOPEN_FIRST_BACKOFF`].
const REOPEN_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Fault injection for tests where no small filesystem can be mounted:
/// while the file named by `VISTA_FAULT_LOG_UNWRITABLE` exists, every
/// append and fsync fails, before writing anything, as on a full disk.
pub(super) fn fault_injected() -> Result<(), String> {
    static FLAG: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let flag =
        FLAG.get_or_init(|| std::env::var_os("VISTA_FAULT_LOG_UNWRITABLE").map(PathBuf::from));
    match flag {
        Some(flag) if flag.exists() => {
            Err("injected fault: No space left on device (os error 28)".into())
        }
        _ => Ok(()),
    }
}

impl EventLog {
    /// Closes and opens the database again: after an I/O error redb refuses
    /// every transaction until it is reopened. Then a fsynced write of
    /// [`PROBE_BYTES`] (removed again) proves the disk takes writes: an
    /// empty commit would pass on a disk with a few pages left.
    fn reopen(&self) -> Result<(), String> {
        {
            let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
            *db = None; // closed before it is opened again (redb locks the file)
            *db = Some(open_database(&self.path, || {})?);
        }
        fault_injected()?;
        let db = self.db()?;
        for probe in [Some(vec![0u8; PROBE_BYTES]), None] {
            let mut txn = db.begin_write().map_err(|e| e.to_string())?;
            txn.set_durability(Durability::Immediate);
            {
                let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
                match &probe {
                    Some(bytes) => meta.insert("probe", bytes.as_slice()).map(drop),
                    None => meta.remove("probe").map(drop),
                }
                .map_err(|e| e.to_string())?;
            }
            txn.commit().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Removes the records from `rec` on (all of them refused: see
    /// `failed_from` in the write loop); returns how many there were.
    fn remove_from(&self, rec: u64) -> Result<u64, String> {
        let db = self.db()?;
        let mut txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.set_durability(Durability::Immediate);
        let mut removed = 0;
        {
            let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
            log.retain_in(rec.., |_, _| {
                removed += 1;
                false
            })
            .map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_a_failed_commit_left_behind_are_removed() {
        let dir = std::env::temp_dir().join(format!("vista-remove-from-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let record = |rec: u64| LogRecord {
            rec,
            first_seq: rec * 10,
            stream: "s".into(),
            mutations: 1,
            body: bytes::Bytes::from_static(b"{}\n"),
            logged_at_ms: 0,
            source: None,
        };
        {
            let log = EventLog::open(&dir).unwrap();
            log.append(&[record(1), record(2), record(3)], true)
                .unwrap();
            assert_eq!(log.remove_from(2).unwrap(), 2);
        }
        let log = EventLog::open(&dir).unwrap();
        assert_eq!(log.records_after(0).unwrap(), vec![record(1)]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
