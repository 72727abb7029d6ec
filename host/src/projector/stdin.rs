//! The host's end of a projector process's stdin: written by the engine
//! itself while the pipe has room, by a writer thread when it has not.
//!
//! Why not always the thread: a job handed to a thread waits for that
//! thread to be scheduled, and on a busy machine that is the longest step
//! of a small request. A trace of 100-event requests on 2 cores showed the
//! writer thread starting 45-50 µs after the engine queued the job (the
//! core was running socket writers), about a tenth of each request's time.
//! Written from the engine, the child has the job as soon as the engine
//! has it.
//!
//! Why not always the engine: a full pipe (a child busy with a long
//! request, a mirror of millions of rows, a stuck child) would block the
//! engine, and with it every client. So the pipe is non-blocking for the
//! host (the child's end is not affected): the engine writes what fits
//! and leaves the rest, and anything sent after it, to the writer thread,
//! which waits for room. Frames never reorder: while the thread has
//! bytes, everything goes to it.
//!
//! The pipe keeps the system's default size (64 KiB on Linux: a request of
//! several hundred events fits). A 1 MiB pipe (`F_SETPIPE_SZ`) was slower
//! for 1,000 `token_created` events per request (258k against 328k
//! events/s, medians of 3): the child is woken only once a write is done,
//! so one 110 KB write leaves it idle until all of it is copied, while with
//! 64 KiB it parses the first part as the writer thread writes the rest.
//!
//! The pipe is closed (the child sees its end of input) once everything
//! sent is written, when [`ChildInput::close`] is called or when the last
//! [`InputSender`] is dropped.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::ChildStdin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Shared by the senders and the writer thread.
pub(super) struct ChildInput {
    state: Mutex<State>,
    /// Signalled when bytes are left for the writer thread or the input closes.
    more: Condvar,
    /// Live [`InputSender`]s.
    senders: AtomicUsize,
}

struct State {
    /// `None` once closed (or broken: the child is gone).
    stdin: Option<ChildStdin>,
    /// Bytes the writer thread has to write, in order.
    backlog: VecDeque<Vec<u8>>,
    /// The writer thread is writing bytes it took from the backlog.
    writing: bool,
    /// Close once the backlog is written.
    closing: bool,
}

/// A handle that sends frames to the child; the input closes when the last
/// one is dropped.
pub(super) struct InputSender(Arc<ChildInput>);

impl Drop for InputSender {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.close();
        }
    }
}

impl InputSender {
    /// Sends `frame`; false once the input is closed or a write found the
    /// child gone.
    pub(super) fn send(&self, frame: &[u8]) -> bool {
        self.0.send(frame)
    }

    /// Closes the input once everything sent is written.
    pub(super) fn close(&self) {
        self.0.close();
    }
}

impl Clone for InputSender {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(&self.0))
    }
}

/// Makes `stdin` non-blocking for the host and starts its writer thread
/// (`thread_name`).
pub(super) fn start(stdin: ChildStdin, thread_name: String) -> std::io::Result<InputSender> {
    let fd = stdin.as_raw_fd();
    // SAFETY: `fcntl` on a descriptor this function owns (through `stdin`);
    // the flags only affect the host's end of the pipe.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let input = Arc::new(ChildInput {
        state: Mutex::new(State {
            stdin: Some(stdin),
            backlog: VecDeque::new(),
            writing: false,
            closing: false,
        }),
        more: Condvar::new(),
        senders: AtomicUsize::new(1),
    });
    let for_thread = Arc::clone(&input);
    std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || for_thread.write_backlog())?;
    Ok(InputSender(input))
}

impl ChildInput {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, frame: &[u8]) -> bool {
        let mut state = self.lock();
        if state.closing {
            return false;
        }
        if state.writing || !state.backlog.is_empty() {
            state.backlog.push_back(frame.to_vec());
            self.more.notify_one();
            return true;
        }
        let Some(stdin) = state.stdin.as_mut() else {
            return false;
        };
        let mut written = 0;
        while written < frame.len() {
            match stdin.write(&frame[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // The child is gone: its reader reports why, naming the
                    // request it was given (as when the writer thread
                    // finds the pipe broken); later sends fail.
                    state.stdin = None;
                    return true;
                }
            }
        }
        if written < frame.len() {
            state.backlog.push_back(frame[written..].to_vec());
            self.more.notify_one();
        }
        true
    }

    fn close(&self) {
        let mut state = self.lock();
        state.closing = true;
        if !state.writing && state.backlog.is_empty() {
            state.stdin = None;
        }
        self.more.notify_one();
    }

    /// The writer thread: writes what the senders left, waiting for room.
    fn write_backlog(&self) {
        let mut state = self.lock();
        loop {
            while state.backlog.is_empty() {
                if state.stdin.is_none() || state.closing {
                    state.stdin = None;
                    return;
                }
                state = self.more.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            let Some(fd) = state.stdin.as_ref().map(AsRawFd::as_raw_fd) else {
                state.backlog.clear();
                return;
            };
            let frames: Vec<Vec<u8>> = state.backlog.drain(..).collect();
            // Senders queue behind these bytes and nobody closes the pipe
            // while `writing` is set, so `fd` stays open outside the lock.
            state.writing = true;
            drop(state);
            let written = frames.iter().all(|frame| write_all_waiting(fd, frame));
            state = self.lock();
            state.writing = false;
            if !written {
                state.stdin = None;
                state.backlog.clear();
                return;
            }
        }
    }
}

/// Writes all of `bytes` to the non-blocking `fd`, waiting for room.
fn write_all_waiting(fd: std::os::fd::RawFd, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: `fd` is open (see `write_backlog`) and `bytes` is valid
        // for its length.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
            continue;
        }
        let err = std::io::Error::last_os_error();
        match err.kind() {
            std::io::ErrorKind::Interrupted => {}
            std::io::ErrorKind::WouldBlock => {
                let mut poll = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid `pollfd`.
                unsafe { libc::poll(&mut poll, 1, -1) };
            }
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::process::{Command, Stdio};

    /// Through `cat`: small frames written by the sender, a frame larger
    /// than the pipe split between the sender and the writer thread, and
    /// frames sent while the thread still writes all come out whole and in
    /// order, and dropping the last sender ends the child's input.
    #[test]
    fn frames_arrive_in_order_whether_written_directly_or_by_the_thread() {
        let mut cat = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cat runs");
        let sender = super::start(cat.stdin.take().unwrap(), "test-stdin".into()).unwrap();
        let other = sender.clone();
        let mut expected = Vec::new();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let frames: Vec<Vec<u8>> = vec![
            b"first".to_vec(),
            big.clone(),
            b"after the big one".to_vec(),
            big,
            b"last".to_vec(),
        ];
        // Read concurrently, as the child does: the pipe holds 64 KiB.
        let mut stdout = cat.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            stdout.read_to_end(&mut out).unwrap();
            out
        });
        for (i, frame) in frames.iter().enumerate() {
            let via = if i % 2 == 0 { &sender } else { &other };
            assert!(via.send(frame));
            expected.extend_from_slice(frame);
        }
        drop(sender);
        assert!(other.send(b"!"));
        expected.extend_from_slice(b"!");
        drop(other);
        let out = reader.join().unwrap();
        assert_eq!(out.len(), expected.len());
        assert!(out == expected, "bytes reordered or lost");
        assert!(cat.wait().unwrap().success());
    }
}
