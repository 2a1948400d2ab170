//! The authentication log (`auth_log: {path}`): one JSON line per request that carried a job
//! token, appended by a dedicated writer thread so no request ever waits on the disk.
//!
//! Requests hand their line to a bounded channel; when it is full (the disk stalls) the line
//! is dropped and counted, with a warning, rather than holding the request up. The writer
//! flushes whenever the queue is empty, so a reader (`tail -f`, `scopegate allowlist suggest`)
//! sees whole lines. The file is opened in append mode when a configuration generation starts,
//! so a reload (SIGHUP) reopens it: logrotate's rename + SIGHUP works, and so does
//! `copytruncate` (appends go to the new end).

use serde::Serialize;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Lines that may wait for the writer before new ones are dropped.
const QUEUE: usize = 4096;

/// How long the last holder of a log waits for its writer to drain the queue.
const DRAIN: Duration = Duration::from_secs(2);

/// One line of the authentication log. `scopegate allowlist suggest` reads these fields back
/// ([`crate::suggest`]); add fields freely, rename none.
#[derive(Debug, Serialize)]
pub struct AuthLine<'a> {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub request_id: String,
    pub method: &'a str,
    /// The request target with every credential masked.
    pub path: &'a str,
    pub class: &'a str,
    pub source_project: &'a str,
    pub source_project_id: u64,
    pub job_id: u64,
    /// The resolved target's full path (several, comma-separated, for a registry token
    /// request naming several images); absent when the request named no project.
    pub target_project: Option<&'a str>,
    pub target_project_id: Option<u64>,
    /// `private`, `internal` or `public`, as the decision saw it.
    pub target_visibility: Option<&'a str>,
    pub decision: &'a str,
    pub reason: &'a str,
    pub status: u16,
    /// Registry requests: each image's project whose inbound allowlist refused the pull.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub inbound_refused: Vec<RefusedTarget<'a>>,
}

#[derive(Debug, Serialize)]
pub struct RefusedTarget<'a> {
    pub path: &'a str,
    pub id: u64,
    pub visibility: &'a str,
}

pub struct AuthLog {
    queue: Option<SyncSender<Vec<u8>>>,
    /// Disconnects when the writer has written everything and stopped (in a mutex only
    /// because a receiver is not `Sync`; it is read once, in `drop`).
    finished: Mutex<Receiver<()>>,
    /// Shared with the metrics (`scopegate_auth_log_dropped_total`).
    dropped: Arc<AtomicU64>,
}

impl AuthLog {
    /// Opens (creating) `path` for appending and starts its writer. Opening happens here, on
    /// the caller's thread, so a bad path fails the start or the reload loudly.
    pub fn open(path: &Path, dropped: Arc<AtomicU64>) -> std::io::Result<AuthLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        AuthLog::start(file, QUEUE, dropped)
    }

    /// A log whose writer thread appends to `out`, with room for `queue` waiting lines.
    fn start(
        out: impl Write + Send + 'static,
        queue: usize,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<AuthLog> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(queue);
        let (finished_tx, finished) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("scopegate-auth-log".into())
            .spawn(move || {
                write_lines(out, rx);
                drop(finished_tx);
            })?;
        Ok(AuthLog {
            queue: Some(tx),
            finished: Mutex::new(finished),
            dropped,
        })
    }

    /// Queues one line; never blocks.
    pub fn write(&self, line: &AuthLine<'_>) {
        let mut buf = Vec::with_capacity(384);
        if serde_json::to_writer(&mut buf, line).is_err() {
            return;
        }
        buf.push(b'\n');
        let Some(queue) = &self.queue else { return };
        match queue.try_send(buf) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // Once, then at every power of two: a stalled disk must not flood the log.
                if n.is_power_of_two() {
                    tracing::warn!(dropped = n, "auth log queue full: lines dropped");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::warn!("auth log writer is gone: line dropped");
            }
        }
    }

    /// Lines dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for AuthLog {
    /// The last holder of this generation's log is gone (a reload replaced it, or the process
    /// is exiting): the writer drains what is queued — at most `QUEUE` short lines — and
    /// stops, so no accepted line is lost on exit. The wait is bounded: this may run on an
    /// async worker, and a hung disk must not hold it.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Ok(finished) = self.finished.get_mut() {
            let _ = finished.recv_timeout(DRAIN);
        }
    }
}

fn write_lines(out: impl Write, rx: mpsc::Receiver<Vec<u8>>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut failed = false;
    // Each line goes to the buffer in one piece; the buffer flushes before a line that does
    // not fit, so no line is ever split across two writes.
    while let Ok(line) = rx.recv() {
        let mut result = out.write_all(&line);
        while let Ok(more) = rx.try_recv() {
            result = result.and_then(|()| out.write_all(&more));
        }
        result = result.and_then(|()| out.flush());
        match result {
            Err(e) if !failed => {
                failed = true;
                tracing::warn!(error = %e, "auth log write failed");
            }
            Err(_) => {}
            Ok(()) => failed = false,
        }
    }
    let _ = out.flush();
}

/// `2026-11-25T14:44:56.123Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_with_milliseconds() {
        let at = |s: u64, ms: u64| {
            rfc3339_millis(
                std::time::UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms),
            )
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day in a century leap year) 12:34:56.789.
        assert_eq!(at(951_827_696, 789), "2000-02-29T12:34:56.789Z");
        // 2024-12-31T23:59:59.999Z and the next millisecond.
        assert_eq!(at(1_735_689_599, 999), "2024-12-31T23:59:59.999Z");
        assert_eq!(at(1_735_689_600, 0), "2025-01-01T00:00:00.000Z");
        // 2100-03-01 (2100 is no leap year).
        assert_eq!(at(4_107_542_400, 5), "2100-03-01T00:00:00.005Z");
    }

    fn sample(i: u64) -> AuthLine<'static> {
        AuthLine {
            time: rfc3339_millis(SystemTime::now()),
            request_id: format!("{i:024x}"),
            method: "GET",
            path: "/api/v4/projects/2",
            class: "api",
            source_project: "g/app",
            source_project_id: 1,
            job_id: 101,
            target_project: Some("g/secret"),
            target_project_id: Some(2),
            target_visibility: Some("private"),
            decision: "deny",
            reason: "not_in_inbound_allowlist",
            status: 404,
            inbound_refused: Vec::new(),
        }
    }

    /// A disk that does not answer until told to, and says when a write is waiting.
    struct Stalled {
        entered: std::sync::mpsc::Sender<()>,
        go: std::sync::mpsc::Receiver<()>,
        written: std::sync::Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.go.recv();
            if let Ok(mut w) = self.written.lock() {
                w.extend_from_slice(buf);
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_disk_drops_lines_instead_of_blocking_requests() {
        let (go, wait) = std::sync::mpsc::channel();
        let (entered_tx, entered) = std::sync::mpsc::channel();
        // The metrics' counter, as the gate passes it.
        let counter = Arc::new(AtomicU64::new(0));
        let written = std::sync::Arc::new(Mutex::new(Vec::new()));
        let log = AuthLog::start(
            Stalled {
                entered: entered_tx,
                go: wait,
                written: written.clone(),
            },
            2,
            counter.clone(),
        )
        .expect("start");
        // The first line reaches the disk, which stalls; then the queue (two lines) fills and
        // the rest are dropped — and `write` returns every time.
        log.write(&sample(0));
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer reached the disk");
        for i in 1..10 {
            log.write(&sample(i));
        }
        let dropped = log.dropped();
        assert_eq!(dropped, 7);
        assert_eq!(
            counter.load(Ordering::Relaxed),
            7,
            "the metric sees the drops"
        );
        // The disk comes back: what was accepted is written whole.
        for _ in 0..64 {
            let _ = go.send(());
        }
        drop(log);
        let text =
            String::from_utf8(written.lock().map(|w| w.clone()).unwrap_or_default()).expect("utf8");
        assert_eq!(text.lines().count() as u64, 10 - dropped, "{text}");
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("a whole JSON line");
        }
    }

    #[test]
    fn lines_are_appended_whole_and_flushed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auth.jsonl");
        std::fs::write(&path, "{\"earlier\":true}\n").expect("seed");
        let log = AuthLog::open(&path, Arc::new(AtomicU64::new(0))).expect("open");
        for i in 0..100u64 {
            log.write(&sample(i));
        }
        assert_eq!(log.dropped(), 0);
        drop(log); // drains the queue
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 101, "appended after what was there");
        for (i, line) in lines[1..].iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            assert_eq!(v["request_id"], format!("{i:024x}"));
            assert_eq!(v["target_project_id"], 2);
        }
    }
}
