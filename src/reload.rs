//! Configuration reload: on `SIGHUP` and when the file changes on disk, the file is read and
//! validated again; a good one replaces the running generation (requests in flight finish on
//! the old one) and, with TLS, the certificate files are read again; a bad one is logged,
//! counted in `scopegate_reload_failures_total`, and the old one stays in force.

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
            running
                .metrics
                .reload_failures
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tracing::error!(error = %e, "invalid configuration; the previous configuration stays in force");
            false
        }
    }
}

/// Serves reloads until SIGTERM or SIGINT (Ctrl-C) arrives. Signals that arrive before this
/// is called are not handled: prefer [`Triggers::install`] before the gateway starts.
pub async fn until_shutdown(running: &Running, path: &Path) -> Stop {
    Triggers::install(path).until_shutdown(running).await
}

/// Which signal ended the serving loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: an orchestrator's stop; the full sequence, drain delay included.
    Terminate,
    /// SIGINT: a person at a terminal pressing Ctrl-C; there is no load balancer to warn, so
    /// no drain delay (in-flight requests still get the grace period).
    Interrupt,
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
    /// Digest of the file as last read, so a directory event that did not change the file
    /// (another file in the folder, a symlink swapped to identical content) reloads nothing.
    last: Option<[u8; 32]>,
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
            last: digest(path),
            _watcher: watch_file(path, tx),
        }
    }

    /// Serves reloads until SIGTERM or SIGINT (Ctrl-C) arrives; says which.
    pub async fn until_shutdown(mut self, running: &Running) -> Stop {
        loop {
            tokio::select! {
                _ = recv(&mut self.int) => return Stop::Interrupt,
                _ = recv(&mut self.term) => return Stop::Terminate,
                // SIGHUP always reloads: the operator may have changed what the file points
                // at (the service token's environment, a CA file), not the file itself.
                _ = recv(&mut self.hup) => {
                    self.last = digest(&self.path);
                    reload(running, &self.path);
                }
                Some(()) = self.changed.recv() => {
                    // Editors write in several steps; coalesce a burst of events into one reload.
                    while self.changed.try_recv().is_ok() {}
                    let now = digest(&self.path);
                    if now.is_some() && now != self.last {
                        self.last = now;
                        reload(running, &self.path);
                    }
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

fn digest(path: &Path) -> Option<[u8; 32]> {
    use sha2::Digest as _;
    std::fs::read(path)
        .ok()
        .map(|b| sha2::Sha256::digest(&b).into())
}

/// Watches the folder the path is in, and the folder of the file it resolves to when that is
/// another (a symlink). Any change there is a candidate: editors replace files rather than
/// write them, and Kubernetes ConfigMap volumes swap a `..data` symlink beside the file, so
/// the file's own name need not appear in the event. `until_shutdown` reloads only when the
/// file's content changed.
/// Whether a change to `p` can change what the config path reads (see [`watch_file`]).
fn concerns(names: &[std::ffi::OsString], p: &Path) -> bool {
    p.file_name().is_some_and(|n| {
        names.iter().any(|want| want == n) || n.as_encoded_bytes().starts_with(b"..")
    })
}

fn watch_file(path: &Path, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut dirs: Vec<PathBuf> = Vec::new();
    for p in [Some(absolute), std::fs::canonicalize(path).ok()]
        .into_iter()
        .flatten()
    {
        let dir = p
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    // Only events that can change what the config path reads wake the reloader: the file's
    // own name, its symlink target's name, and Kubernetes' `..data` / `..<timestamp>` entries
    // (a ConfigMap volume swaps those). Anything else in the folder — an access log written
    // beside the config, say — would otherwise cost a read and a digest per line.
    let mut names: Vec<std::ffi::OsString> = Vec::new();
    for p in [Some(path.to_path_buf()), std::fs::canonicalize(path).ok()]
        .into_iter()
        .flatten()
    {
        if let Some(name) = p.file_name() {
            names.push(name.to_os_string());
        }
    }
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if !matches!(event.kind, notify::EventKind::Access(_))
                && (event.paths.is_empty() || event.paths.iter().any(|p| concerns(&names, p)))
            {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config file; SIGHUP still reloads"))
    .ok()?;
    let mut watching = false;
    for dir in &dirs {
        match watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => watching = true,
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot watch a config directory")
            }
        }
    }
    watching.then_some(watcher)
}

#[cfg(test)]
mod tests {
    use super::concerns;
    use std::path::Path;

    #[test]
    fn only_the_config_its_target_and_configmap_entries_concern_the_reloader() {
        let names = ["proxy.yaml".into(), "v1.yaml".into()];
        for (path, want) in [
            ("/etc/scopegate/proxy.yaml", true),
            ("/etc/scopegate/versions/v1.yaml", true),
            ("/etc/scopegate/..data", true),
            ("/etc/scopegate/..2026_11_25_15_00_00.123", true),
            ("/etc/scopegate/..data_tmp", true),
            ("/etc/scopegate/access.log", false),
            ("/etc/scopegate/auth.jsonl", false),
            ("/etc/scopegate/.proxy.yaml.swp", false),
            ("/etc/scopegate/proxy.yaml~", false),
            ("/", false),
        ] {
            assert_eq!(concerns(&names, Path::new(path)), want, "{path}");
        }
    }
}
