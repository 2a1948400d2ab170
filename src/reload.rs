//! Configuration reload: on `SIGHUP` and when the file changes on disk, the file is read and
//! validated again; a good one replaces the running generation (requests in flight finish on
//! the old one), a bad one is logged and the old one stays in force.

use crate::config::Config;
use crate::server::Running;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// Reloads `path` into `running`; returns whether the new config is in force.
pub fn reload(running: &Running, path: &Path) -> bool {
    match Config::load(path) {
        Ok(config) => match running.reload(config) {
            Ok(()) => {
                tracing::info!(config = %path.display(), "configuration reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "reload failed; the previous configuration stays in force");
                false
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration; the previous configuration stays in force");
            false
        }
    }
}

/// Serves reloads until SIGTERM or SIGINT (Ctrl-C) arrives. Signals that arrive before this
/// is called are not handled: prefer [`Triggers::install`] before the gateway starts.
pub async fn until_shutdown(running: &Running, path: &Path) {
    Triggers::install(path).until_shutdown(running).await
}

/// What stops or reloads a running gateway: SIGTERM, SIGINT, SIGHUP and changes to the config
/// file. Install it *before* the gateway starts listening: until the handlers exist, SIGTERM
/// and SIGHUP keep their default action (the process dies, with no drain), and a change to
/// the file goes unnoticed. Signals that arrive between `install` and `until_shutdown` are
/// kept and acted on.
pub struct Triggers {
    path: PathBuf,
    hup: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
    changed: mpsc::UnboundedReceiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Triggers {
    /// Installs the signal handlers and the file watcher for `path` (needs a Tokio runtime).
    pub fn install(path: &Path) -> Triggers {
        use tokio::signal::unix::SignalKind;
        let (tx, changed) = mpsc::unbounded_channel::<()>();
        Triggers {
            path: path.to_path_buf(),
            hup: signal(SignalKind::hangup()),
            term: signal(SignalKind::terminate()),
            int: signal(SignalKind::interrupt()),
            changed,
            _watcher: watch_file(path, tx),
        }
    }

    /// Serves reloads until SIGTERM or SIGINT (Ctrl-C) arrives.
    pub async fn until_shutdown(mut self, running: &Running) {
        loop {
            tokio::select! {
                _ = recv(&mut self.int) => return,
                _ = recv(&mut self.term) => return,
                _ = recv(&mut self.hup) => { reload(running, &self.path); }
                Some(()) = self.changed.recv() => {
                    // Editors write in several steps; coalesce a burst of events into one reload.
                    while self.changed.try_recv().is_ok() {}
                    reload(running, &self.path);
                }
            }
        }
    }
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).ok()
}

async fn recv(sig: &mut Option<tokio::signal::unix::Signal>) {
    match sig {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Watches the file's directory (editors replace files rather than write them in place) and
/// signals when an event names the file.
fn watch_file(path: &Path, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let file: PathBuf = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = file.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let ours = event
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == name);
            if ours && !matches!(event.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config file; SIGHUP still reloads"))
    .ok()?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| tracing::warn!(error = %e, "cannot watch the config directory; SIGHUP still reloads"))
        .ok()?;
    Some(watcher)
}
