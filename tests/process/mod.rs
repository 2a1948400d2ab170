//! Test support for the end-to-end CLI tests: the real `scopegate` binary as a child process
//! whose stdout and stderr are collected line by line (ANSI colours stripped), so a test waits
//! for what the process says ("scopegate listening", an error) instead of sleeping. The child
//! is killed when the guard drops, so a failing assertion never leaves a gateway behind.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_scopegate");

/// How long a test waits for the process to say something, or to exit.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Runs `scopegate ARGS` to completion (stdin closed) and returns its output; a process that
/// is still running after [`PATIENCE`] is killed and the test fails.
pub fn scopegate(args: &[&str]) -> Output {
    let mut proc = Proc::spawn(Command::new(BIN).args(args));
    let status = proc.wait_exit(PATIENCE);
    Output {
        status,
        stdout: proc.stdout.text().into_bytes(),
        stderr: proc.stderr.text().into_bytes(),
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), so assertions read plain text.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// One output stream of the child, collected by a reader thread.
pub struct Stream {
    state: Mutex<StreamState>,
    changed: Condvar,
}

#[derive(Default)]
struct StreamState {
    lines: Vec<String>,
    /// Raw bytes as received, colours and all.
    raw: Vec<u8>,
    closed: bool,
}

impl Stream {
    fn pump(reader: impl Read + Send + 'static) -> Arc<Stream> {
        let stream = Arc::new(Stream {
            state: Mutex::new(StreamState::default()),
            changed: Condvar::new(),
        });
        let s = stream.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            loop {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let mut st = s.lock();
                        st.raw.extend_from_slice(&line);
                        let text = String::from_utf8_lossy(&line);
                        st.lines
                            .push(strip_ansi(text.trim_end_matches(['\n', '\r'])));
                        drop(st);
                        s.changed.notify_all();
                    }
                }
            }
            s.lock().closed = true;
            s.changed.notify_all();
        });
        stream
    }

    fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lines received so far.
    pub fn len(&self) -> usize {
        self.lock().lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything received so far, colours stripped, one line per line.
    pub fn text(&self) -> String {
        let st = self.lock();
        st.lines.iter().map(|l| format!("{l}\n")).collect()
    }

    /// Everything received so far, exactly as the process wrote it.
    pub fn raw(&self) -> Vec<u8> {
        self.lock().raw.clone()
    }

    /// Waits for the first line at index `from` or later that satisfies `pred`; returns its
    /// index and text. `Err` (with everything read so far) if the stream closes or `timeout`
    /// passes first.
    pub fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<(usize, String), String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        let mut next = from;
        loop {
            while next < st.lines.len() {
                if pred(&st.lines[next]) {
                    return Ok((next, st.lines[next].clone()));
                }
                next += 1;
            }
            let now = Instant::now();
            if st.closed || now >= deadline {
                let why = if st.closed {
                    "the stream closed"
                } else {
                    "timed out"
                };
                let all: String = st.lines.iter().map(|l| format!("{l}\n")).collect();
                return Err(format!("{why}; the process wrote:\n{all}"));
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// [`wait_for`](Self::wait_for) from line `from`, panicking with `what` on failure.
    pub fn expect_line(
        &self,
        from: usize,
        what: &str,
        pred: impl FnMut(&str) -> bool,
    ) -> (usize, String) {
        self.wait_for(from, PATIENCE, pred)
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
    }
}

/// A running `scopegate`; killed on drop unless it has exited.
pub struct Proc {
    child: Child,
    pub stdout: Arc<Stream>,
    pub stderr: Arc<Stream>,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout/stderr collected. `RUST_LOG` is pinned to
    /// `info` so a developer's environment cannot hide the lines the tests wait for.
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn scopegate");
        let stdout = Stream::pump(child.stdout.take().expect("stdout piped"));
        let stderr = Stream::pump(child.stderr.take().expect("stderr piped"));
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    /// `scopegate run --config PATH`.
    pub fn run(config: &Path) -> Proc {
        Proc::spawn(Command::new(BIN).arg("run").arg("--config").arg(config))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `HUP`, `INT`) with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// A `kill -SIGNAL` made ready in advance (a shell waiting on its stdin), so that
    /// [`Armed::fire`] reaches the process within microseconds of an event rather than the
    /// millisecond it takes to start `kill(1)`.
    pub fn arm_signal(&self, signal: &str) -> Armed {
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(format!("read _ && kill -{signal} {}", self.pid()))
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let stdin = shell.stdin.take().expect("stdin piped");
        Armed { shell, stdin }
    }

    /// Waits until the process exits (bounded: polls, since it is a separate process), then
    /// until both streams are fully read. Panics with its stderr on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "scopegate (pid {}) did not exit within {timeout:?}; stderr:\n{}",
                    self.pid(),
                    self.stderr.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The pipes close with the process (the gateway starts no children that outlive it);
        // wait for the reader threads to drain them so the caller sees every line.
        for s in [&self.stdout, &self.stderr] {
            let _ = s.wait_for(usize::MAX, Duration::from_secs(5), |_| false);
        }
        status
    }

    /// Waits for the `scopegate listening` log line; returns the address it names.
    pub fn wait_listening(&self) -> std::net::SocketAddr {
        self.wait_listening_with_admin().0
    }

    /// Waits for the `scopegate listening` log line; returns the proxy's bound address and
    /// the admin listener's, if it has one.
    pub fn wait_listening_with_admin(
        &self,
    ) -> (std::net::SocketAddr, Option<std::net::SocketAddr>) {
        let (_, line) = self
            .stderr
            .expect_line(0, "the `scopegate listening` line", |l| {
                l.contains("scopegate listening")
            });
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_string()
        };
        let parse = |v: &str| -> std::net::SocketAddr {
            v.parse()
                .unwrap_or_else(|e| panic!("{v:?} in {line:?} is not an address: {e}"))
        };
        let addr = parse(&field("addr="));
        let admin = field("admin=");
        let admin = (admin != "off").then(|| parse(&admin));
        (addr, admin)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// See [`Proc::arm_signal`].
pub struct Armed {
    shell: Child,
    stdin: std::process::ChildStdin,
}

impl Armed {
    /// Sends the signal now.
    pub fn fire(mut self) {
        use std::io::Write;
        self.stdin.write_all(b"go\n").expect("write to sh");
        drop(self.stdin);
        let status = self.shell.wait().expect("wait for sh");
        assert!(status.success(), "kill failed");
    }
}
