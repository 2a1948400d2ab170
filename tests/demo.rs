//! End-to-end test of `scopegate demo` (SPEC §6): the real binary on a picked port, its
//! banner read from stdout, and every command the banner prints run as printed (the `curl`
//! ones with reqwest, since curl may be missing; the `git` ones with git), each checked
//! against what its comment promises. Then Ctrl-C (SIGINT) or SIGTERM: exit 0, temporary
//! files removed.

mod process;

use process::{Proc, BIN, PATIENCE};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The banner's last line.
const BANNER_END: &str = "Ctrl-C stops the demo";

/// `scopegate demo` on `listen`, with its temporary files under `tmp`.
fn start_demo_on(listen: &str, tmp: &Path) -> Proc {
    Proc::spawn(
        Command::new(BIN)
            .arg("demo")
            .env("SCOPEGATE_DEMO_LISTEN", listen)
            .env("TMPDIR", tmp),
    )
}

/// `scopegate demo` on a port the kernel picks when the demo binds it (a port picked by the
/// test and released first could be taken by a parallel test before the demo binds it).
fn start_demo(tmp: &Path) -> Proc {
    start_demo_on("127.0.0.1:0", tmp)
}

/// The gateway address the banner announces.
fn gateway_addr(banner: &str) -> String {
    banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("gateway"))
        .and_then(|rest| rest.trim().strip_prefix("http://"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no gateway address in the banner:\n{banner}"))
        .to_string()
}

/// Waits for the whole banner; returns its text.
fn banner(demo: &Proc) -> String {
    if let Err(e) = demo
        .stdout
        .wait_for(0, PATIENCE, |l| l.contains(BANNER_END))
    {
        panic!(
            "waiting for the end of the demo banner: {e}\nstderr:\n{}",
            demo.stderr.text()
        );
    }
    demo.stdout.text()
}

/// A printed command and the comment line above it.
#[derive(Debug)]
struct Printed {
    comment: String,
    argv: Vec<String>,
}

/// Splits a command line as a POSIX shell would for the banner's quoting: words separated
/// by spaces, `'...'` quoting (no escapes inside), no other shell syntax.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                in_word = true;
            }
            ' ' if !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quote in {line:?}");
    if in_word {
        words.push(word);
    }
    words
}

/// Every `curl` and `git` command in the banner, with the comment just above it.
fn commands(banner: &str) -> Vec<Printed> {
    let mut out = Vec::new();
    let mut comment = String::new();
    for line in banner.lines().map(str::trim) {
        if let Some(c) = line.strip_prefix("# ") {
            comment = c.to_string();
        } else if line.starts_with("curl ") || line.starts_with("git ") {
            out.push(Printed {
                comment: comment.clone(),
                argv: shell_words(line),
            });
        }
    }
    out
}

/// The printed command whose comment contains `keyword` and which runs `program`.
fn find<'a>(printed: &'a [Printed], program: &str, keyword: &str, banner: &str) -> &'a Printed {
    printed
        .iter()
        .find(|p| p.argv[0] == program && p.comment.contains(keyword))
        .unwrap_or_else(|| {
            panic!("the banner prints no `{program}` command under a comment with {keyword:?}:\n{banner}")
        })
}

/// Runs a printed `curl -i -H 'NAME: VALUE' 'URL'` with reqwest; returns the status.
async fn run_curl(cmd: &Printed) -> u16 {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut url = None;
    let mut headers = Vec::new();
    let mut args = cmd.argv[1..].iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-i" => {}
            "-H" => {
                let h = args.next().expect("-H takes a header");
                let (name, value) = h.split_once(':').expect("NAME: VALUE");
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
            a if a.starts_with('-') => panic!("unexpected curl option {a} in {cmd:?}"),
            a => url = Some(a.to_string()),
        }
    }
    let url = url.unwrap_or_else(|| panic!("no URL in {cmd:?}"));
    let mut req = client.get(&url);
    for (name, value) in headers {
        req = req.header(name, value);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
        .status()
        .as_u16()
}

/// Runs a printed `git ...` command in `dir`, isolated from the user's git configuration and
/// never prompting; returns (success, stderr). Bounded by [`PATIENCE`].
fn run_git(cmd: &Printed, dir: &Path) -> (bool, String) {
    let mut git = Proc::spawn(
        Command::new(&cmd.argv[0])
            .args(&cmd.argv[1..])
            .current_dir(dir)
            .env("HOME", dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE"),
    );
    let status = git.wait_exit(PATIENCE);
    (status.success(), git.stderr.text())
}

fn assert_empty_dir(dir: &Path, what: &str) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(left.is_empty(), "{what} left {left:?} behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_does_what_its_banner_says_and_stops_on_ctrl_c() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut demo = start_demo(tmp.path());
    let banner = banner(&demo);
    let gateway = gateway_addr(&banner);
    let port: u16 = gateway
        .strip_prefix("127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("gateway {gateway:?} is not 127.0.0.1:<port>"));
    assert_ne!(port, 0, "{banner}");
    let printed = commands(&banner);
    for p in &printed {
        // Every command goes through the gateway, never straight to the fake forge.
        assert!(
            p.argv[0] != "curl" || p.argv.iter().any(|a| a.contains(&gateway)),
            "{p:?} does not talk to the gateway"
        );
    }

    let allowed = find(&printed, "curl", "allowed", &banner);
    assert_eq!(run_curl(allowed).await, 200, "{allowed:?}");
    let denied = find(&printed, "curl", "denied", &banner);
    assert_eq!(run_curl(denied).await, 404, "{denied:?}");
    let finished = find(&printed, "curl", "finished", &banner);
    assert_eq!(run_curl(finished).await, 401, "{finished:?}");

    let work = tempfile::tempdir().expect("tempdir");
    let clone = find(&printed, "git", "a real clone", &banner);
    let (ok, stderr) = run_git(clone, work.path());
    assert!(ok, "{clone:?} failed: {stderr}");
    let readme =
        std::fs::read_to_string(work.path().join("secret/README.md")).expect("cloned README");
    assert!(readme.starts_with("# g/secret"), "{readme}");

    let cannot = find(&printed, "git", "cannot clone", &banner);
    let (ok, stderr) = run_git(cannot, work.path());
    assert!(!ok, "{cannot:?} succeeded");
    assert!(stderr.contains("not found"), "{cannot:?}: {stderr}");
    assert!(!work.path().join("other").exists());

    let public = find(&printed, "git", "public project", &banner);
    let (ok, stderr) = run_git(public, work.path());
    assert!(ok, "{public:?} failed: {stderr}");
    assert!(work.path().join("public/README.md").exists());

    // Run in the directory the allowed clone made, as the banner's `-C secret` expects.
    let push = find(&printed, "git", "push", &banner);
    let (ok, stderr) = run_git(push, work.path());
    assert!(!ok, "{push:?} succeeded: {stderr}");
    assert!(stderr.contains("403"), "{push:?}: {stderr}");

    demo.signal("INT");
    let status = demo.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", demo.stderr.text());
    assert_empty_dir(tmp.path(), "the demo");
}

/// SIGTERM the moment the banner is out (the window where a handler installed late would let
/// the signal kill the demo and leave its files): exit 0, files removed. Repeated, because
/// that window is narrow; the signal is armed in advance to land within microseconds.
#[test]
fn the_demo_stops_on_sigterm_right_after_its_banner_and_removes_its_files() {
    for round in 0..3 {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut demo = start_demo(tmp.path());
        let term = demo.arm_signal("TERM");
        banner(&demo);
        term.fire();
        let status = demo.wait_exit(PATIENCE);
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: {}",
            demo.stderr.text()
        );
        assert_empty_dir(tmp.path(), "the demo");
    }
}

#[test]
fn the_demo_explains_a_taken_port_and_cleans_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut demo = start_demo_on(&format!("127.0.0.1:{port}"), tmp.path());
    let status = demo.wait_exit(PATIENCE);
    let stderr = demo.stderr.text();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("SCOPEGATE_DEMO_LISTEN"),
        "{stderr}"
    );
    assert!(demo.stdout.is_empty(), "{}", demo.stdout.text());
    assert_empty_dir(tmp.path(), "the failed demo");
}

#[test]
fn the_demo_refuses_a_bad_listen_address() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut demo = Proc::spawn(
        Command::new(BIN)
            .arg("demo")
            .env("SCOPEGATE_DEMO_LISTEN", "localhost:http")
            .env("TMPDIR", tmp.path()),
    );
    let status = demo.wait_exit(PATIENCE);
    let stderr = demo.stderr.text();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("SCOPEGATE_DEMO_LISTEN"), "{stderr}");
}

#[test]
fn shell_words_reads_the_banner_quoting() {
    assert_eq!(
        shell_words("curl -i -H 'JOB-TOKEN: a b' 'http://x/y?z=1'"),
        ["curl", "-i", "-H", "JOB-TOKEN: a b", "http://x/y?z=1"]
    );
    assert_eq!(shell_words("git  clone u"), ["git", "clone", "u"]);
}
