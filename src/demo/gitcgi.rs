//! A bridge from a hyper request to `git http-backend` run as a CGI program, so the fake
//! forge serves real Git smart-HTTP (clone, fetch and push) without a web server of its own.
//!
//! It sits behind the fake forge's Git routes: the forge decides who may reach a repository
//! (it plays GitLab's Basic challenge), this module only speaks CGI. Bodies stream both ways
//! (a 200 MiB push is never held in memory), and the child is killed when the response body
//! is dropped, so an aborted clone leaves no `git` process behind.

use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, ReadBuf};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// The response body type of the fake forge and of this bridge: any streaming body of bytes.
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// The CGI header block is a few short lines; anything longer means git is not speaking CGI.
const MAX_CGI_HEAD: usize = 64 * 1024;

/// Read size for the response body: big enough for pack data, small enough per connection.
const READ_CHUNK: usize = 32 * 1024;

/// Runs `git http-backend` for one request and answers with what it prints.
///
/// `project_root` is the directory holding the bare repositories, `path_info` the
/// repository-relative CGI path (`/g/app.git/info/refs`). Setting `remote_user` tells
/// http-backend the client is authenticated, which is what enables `git-receive-pack` (push)
/// unless a repository sets `http.receivepack false`.
///
/// Generic over the body so the fake forge can hand in its recording wrapper; a plain
/// `Request<hyper::body::Incoming>` works as is.
pub async fn serve<B>(
    req: Request<B>,
    project_root: &Path,
    path_info: &str,
    remote_user: Option<&str>,
) -> Response<BoxBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display + Send,
{
    let (parts, body) = req.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());

    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        // A clean environment: a GIT_DIR or GIT_CONFIG_* inherited from a surrounding hook or
        // test runner would otherwise redirect git away from the repository asked for.
        .env_clear()
        .env("GIT_PROJECT_ROOT", project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        // Bounds what http-backend buffers of a gzipped or length-less upload-pack request.
        .env("GIT_HTTP_MAX_REQUEST_BUFFER", "100M")
        .env("PATH_INFO", path_info)
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        // The bridge does not know the peer; the fake forge only ever listens on loopback.
        .env("REMOTE_ADDR", "127.0.0.1")
        // Repositories made by a test or the demo may belong to another user than the one
        // running the forge (a container's root, say); ownership checks are not what this
        // double is about. Command-line config (which GIT_CONFIG_COUNT is) may set this.
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "safe.directory")
        .env("GIT_CONFIG_VALUE_0", "*")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    if let Some(v) = header(CONTENT_TYPE.as_str()) {
        cmd.env("CONTENT_TYPE", v);
    }
    // Without it http-backend reads the body to EOF, which is what a chunked push needs.
    if let Some(v) = header(CONTENT_LENGTH.as_str()) {
        cmd.env("CONTENT_LENGTH", v);
    }
    // git gzips large upload-pack requests; http-backend inflates them only when told.
    if let Some(v) = header("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", v);
    }
    // Protocol v2 is negotiated through this header; http-backend passes it on to git.
    if let Some(v) = header("git-protocol") {
        cmd.env("HTTP_GIT_PROTOCOL", v);
    }
    if let Some(user) = remote_user {
        cmd.env("REMOTE_USER", user);
        cmd.env("AUTH_TYPE", "Basic");
    }

    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start git http-backend");
            return plain(StatusCode::BAD_GATEWAY, "cannot start git http-backend\n");
        }
    };
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return plain(StatusCode::BAD_GATEWAY, "git http-backend has no pipes\n");
    };
    tokio::spawn(feed_stdin(body, stdin));
    tokio::spawn(drain_stderr(stderr));
    read_response(child, stdout).await
}

/// Streams the request body into git's stdin as it arrives, then closes stdin so git sees
/// the end of a length-less (chunked) body.
async fn feed_stdin<B>(body: B, mut stdin: ChildStdin)
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut git_listening = true;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                // The client went away mid-body. Closing stdin gives git a truncated request,
                // which it rejects; it never acts on half a pack.
                tracing::debug!(error = %e, "request body to git http-backend failed");
                return;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if git_listening {
            if let Err(e) = stdin.write_all(&data).await {
                // git stopped reading (it already answered, or failed). Keep reading the body
                // anyway so the client is not reset mid-upload and the forge records it whole.
                tracing::debug!(error = %e, "git http-backend stopped reading its input");
                git_listening = false;
            }
        }
    }
    if git_listening {
        let _ = stdin.shutdown().await;
    }
}

/// git's diagnostics ("fatal: …") are useful when a test fails, noise otherwise.
async fn drain_stderr(stderr: ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(target: "scopegate::demo::git", "git http-backend: {line}");
    }
}

/// Reads the CGI header block from stdout and turns the rest into a streaming body.
async fn read_response(child: Child, mut stdout: ChildStdout) -> Response<BoxBody> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let (head_len, body_start) = loop {
        if let Some(found) = find_head_end(&buf) {
            break found;
        }
        if buf.len() > MAX_CGI_HEAD {
            return plain(
                StatusCode::BAD_GATEWAY,
                "git http-backend sent no CGI header\n",
            );
        }
        match stdout.read_buf(&mut buf).await {
            Ok(0) => {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    "git http-backend ended without a header\n",
                )
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "reading git http-backend output");
                return plain(
                    StatusCode::BAD_GATEWAY,
                    "cannot read git http-backend output\n",
                );
            }
        }
    };
    let rest = buf.split_off(body_start).freeze();
    buf.truncate(head_len);

    let mut builder = Response::builder().status(StatusCode::OK);
    for line in buf[..].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"status") {
            // "Status: 404 Not Found": the code is the first word.
            let code = value.split(|&b| b == b' ').next().unwrap_or_default();
            match std::str::from_utf8(code)
                .ok()
                .and_then(|c| c.parse::<u16>().ok())
            {
                Some(code) => {
                    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
                    builder = builder.status(status);
                }
                None => builder = builder.status(StatusCode::BAD_GATEWAY),
            }
            continue;
        }
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            builder = builder.header(name, value);
        }
    }
    let body = CgiBody {
        first: (!rest.is_empty()).then_some(rest),
        stdout,
        child,
        chunk: vec![0; READ_CHUNK].into_boxed_slice(),
        done: false,
    };
    builder
        .body(body.boxed())
        .unwrap_or_else(|_| plain(StatusCode::BAD_GATEWAY, "bad CGI header from git\n"))
}

/// The end of the CGI header block: `(head length, body start)`. CGI allows bare `\n`
/// line ends; git writes `\r\n`.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// git's stdout after the header block. Owning the child here is what ties its life to the
/// response: dropping the body (client gone) drops the child, and `kill_on_drop` ends it.
struct CgiBody {
    first: Option<Bytes>,
    stdout: ChildStdout,
    child: Child,
    chunk: Box<[u8]>,
    done: bool,
}

impl Body for CgiBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let mut read = ReadBuf::new(&mut this.chunk);
        match Pin::new(&mut this.stdout).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Ok(())) if read.filled().is_empty() => {
                this.done = true;
                // Reap git now if it has exited (it normally has once stdout closes); if not,
                // kill_on_drop and tokio's orphan reaper take care of it.
                if let Ok(Some(status)) = this.child.try_wait() {
                    if !status.success() {
                        tracing::debug!(%status, "git http-backend exited unsuccessfully");
                    }
                }
                Poll::Ready(None)
            }
            Poll::Ready(Ok(())) => {
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(read.filled())))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.first.is_none()
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<BoxBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(never)
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `Full` cannot fail; this turns its `Infallible` into the shared error type.
pub(crate) fn never(e: std::convert::Infallible) -> std::io::Error {
    match e {}
}

#[cfg(test)]
mod tests {
    use super::find_head_end;

    #[test]
    fn finds_the_cgi_head_with_either_line_end() {
        assert_eq!(find_head_end(b"Status: 200\r\n\r\nbody"), Some((11, 15)));
        assert_eq!(find_head_end(b"A: b\n\nrest"), Some((4, 6)));
        assert_eq!(find_head_end(b"A: b\r\nB: c\r\n"), None);
        // The earlier terminator wins, whichever style it is.
        assert_eq!(find_head_end(b"A: b\n\nx\r\n\r\n"), Some((4, 6)));
    }
}
