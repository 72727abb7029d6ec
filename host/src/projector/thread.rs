//! `--isolation thread`: a plugin build's projector on a thread of the
//! host, never on the engine thread or an async worker.
//!
//! The fastest way to run plugin code (no copy of the request, no mirror),
//! and the most fragile: a thread cannot be killed, so one that makes no
//! progress for `--projector-timeout-ms` is abandoned and reniced to the
//! lowest priority (the engine marks the build stuck until a new one
//! loads), and a plugin that aborts takes the host with it.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use vista_plugin_api::Mutation;

use super::overlay::{project_request, Output};
use super::{AfterStuck, ProjectJob, Projected, Projector, Settled, SharedStore};
use crate::plugins::PluginLibrary;

/// Handle to one plugin build's projector thread.
pub struct ProjectorWorker {
    jobs: mpsc::Sender<ProjectJob>,
    progress: Arc<AtomicU64>,
    thread_id: Arc<AtomicI32>,
}

impl ProjectorWorker {
    /// Starts the thread. `done` receives every finished job.
    pub fn spawn(
        lib: Arc<PluginLibrary>,
        store: SharedStore,
        done: impl Fn(Projected) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<ProjectJob>();
        let progress = Arc::new(AtomicU64::new(0));
        let thread_id = Arc::new(AtomicI32::new(0));
        let (counter, tid) = (progress.clone(), thread_id.clone());
        std::thread::Builder::new()
            .name(format!("projector-{}", lib.manifest.name))
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid.store(
                    unsafe { libc::syscall(libc::SYS_gettid) } as i32,
                    Ordering::Relaxed,
                );
                while let Ok(job) = queue.recv() {
                    let outcome = project_request(
                        &lib.manifest,
                        |stream, json, reader| {
                            lib.project(stream, json, reader).map(Output::Parsed)
                        },
                        |_| Err("a projector thread keeps no output unparsed".into()),
                        &store,
                        &job.pending,
                        &job.stream,
                        &job.body,
                        &counter,
                    );
                    done(Projected {
                        ticket: job.ticket,
                        plugin: lib.manifest.name.clone(),
                        outcome,
                    });
                }
            })?;
        Ok(Self {
            jobs,
            progress,
            thread_id,
        })
    }

    /// Gives a stuck thread the lowest CPU priority. The thread cannot be
    /// stopped; this keeps a spinning projector from starving the host.
    fn demote(&self) {
        let tid = self.thread_id.load(Ordering::Relaxed);
        if tid > 0 {
            // SAFETY: setpriority on a thread id of this process.
            let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) };
            if result != 0 {
                tracing::warn!(tid, "cannot lower the priority of a stuck projector thread");
            }
        }
    }
}

impl Projector for ProjectorWorker {
    fn submit(&mut self, job: ProjectJob) -> bool {
        self.jobs.send(job).is_ok()
    }

    /// Nothing to do: the thread reads the shared store and the pending
    /// mutations the engine hands it with each job.
    fn settle(&mut self, _ticket: u64, _applied: bool) -> Settled {
        Settled::InStep
    }

    fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    fn needs_pending(&self) -> bool {
        true
    }

    fn stuck(&mut self, _pending: &[Mutation]) -> AfterStuck {
        self.demote();
        AfterStuck::Abandoned
    }

    /// Nothing to restart: a thread keeps no state between requests.
    fn restart(&mut self, _pending: &[Mutation]) -> std::io::Result<()> {
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        None
    }
}
