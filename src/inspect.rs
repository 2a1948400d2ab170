//! Streaming inspection of multipart bodies (SPEC §1 "Bodies"). A multipart upload may be
//! hundreds of MiB, so it is not read whole: it streams to the forge while an incremental
//! scanner reads its field parts (no `filename`) and skips its file parts, and the last chunk
//! of the request is held back until the scan is complete and the gate has decided on what
//! the fields carried. A denial turns the held-back end into an error, so the forge never
//! receives a complete request and acts on nothing.
//!
//! The scanner is stricter than Rack where Rack is lenient: every `--boundary` in the body
//! must be a clean delimiter (at the start, or after CRLF, and followed by CRLF or `--`), and
//! nothing may follow the close delimiter but an epilogue without the boundary. Rack reads no
//! field from a body like that which the scanner does not; anything else is refused (400).

use crate::credentials::{self, Param};
use crate::forge::{BodyError, UpBody};
use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A part's header block larger than this is refused (Rack's own limit is lower).
const MAX_PART_HEAD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("malformed multipart body: {0}")]
    Malformed(&'static str),
    #[error("multipart fields larger than the inspection limit")]
    TooLarge,
    #[error("the client's body ended early or stalled")]
    Aborted,
}

enum State {
    /// Before the first delimiter (Rack skips a preamble).
    Preamble,
    /// Reading a part's header block.
    Head(Vec<u8>),
    /// A field part: its value is collected.
    Field { name: String, value: Vec<u8> },
    /// A file part: its content passes unread.
    File,
    /// After the close delimiter.
    Closed,
}

/// The incremental scanner: feed it the body in any chunking, then `finish`.
pub struct MultipartScanner {
    delimiter: Vec<u8>,
    state: State,
    /// Bytes not yet attributed: may hold the start of a delimiter, or the CRLF before one.
    pending: BytesMut,
    /// How many body bytes were attributed before `pending`.
    consumed: u64,
    params: Vec<Param>,
    field_bytes: usize,
    limit: usize,
}

impl MultipartScanner {
    /// `limit` bounds the total size of field values (they are read into memory).
    pub fn new(boundary: &str, limit: usize) -> Self {
        MultipartScanner {
            delimiter: [b"--", boundary.as_bytes()].concat(),
            state: State::Preamble,
            pending: BytesMut::new(),
            consumed: 0,
            params: Vec::new(),
            field_bytes: 0,
            limit,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), ScanError> {
        self.pending.extend_from_slice(chunk);
        loop {
            if let State::Head(_) = self.state {
                if !self.scan_head()? {
                    return Ok(());
                }
                continue;
            }
            match find(&self.pending, &self.delimiter) {
                Some(at) => {
                    // Need the two bytes after the delimiter to know what it is.
                    let after = at + self.delimiter.len();
                    if self.pending.len() < after + 2 {
                        self.content(at.saturating_sub(2))?;
                        return Ok(());
                    }
                    let at_start = self.consumed == 0 && at == 0;
                    if !at_start && !self.pending[..at].ends_with(b"\r\n") {
                        return Err(ScanError::Malformed("boundary not at the start of a line"));
                    }
                    let content_end = if at_start { 0 } else { at - 2 };
                    self.content(content_end)?;
                    let marker = [
                        self.pending[after - content_end],
                        self.pending[after - content_end + 1],
                    ];
                    // Drop the CRLF, the delimiter and its two marker bytes.
                    let skip = after - content_end + 2;
                    self.advance(skip);
                    self.end_part()?;
                    self.state = match &marker {
                        b"\r\n" => State::Head(Vec::new()),
                        b"--" => State::Closed,
                        _ => {
                            return Err(ScanError::Malformed(
                                "boundary not followed by CRLF or '--'",
                            ))
                        }
                    };
                }
                None => {
                    // Keep what could still be the CRLF and start of a delimiter.
                    let keep = self.delimiter.len() + 2;
                    let upto = self.pending.len().saturating_sub(keep);
                    self.content(upto)?;
                    return Ok(());
                }
            }
        }
    }

    /// The parameters of every field part, once the body has ended.
    pub fn finish(mut self) -> Result<Vec<Param>, ScanError> {
        if !matches!(self.state, State::Closed) {
            return Err(ScanError::Malformed(
                "body ended before the close delimiter",
            ));
        }
        if find(&self.pending, &self.delimiter).is_some() {
            return Err(ScanError::Malformed("boundary after the close delimiter"));
        }
        self.pending.clear();
        Ok(self.params)
    }

    /// Attributes `pending[..n]` to the current state.
    fn content(&mut self, n: usize) -> Result<(), ScanError> {
        if n == 0 {
            return Ok(());
        }
        match &mut self.state {
            State::Field { value, .. } => {
                self.field_bytes += n;
                if self.field_bytes > self.limit {
                    return Err(ScanError::TooLarge);
                }
                value.extend_from_slice(&self.pending[..n]);
            }
            State::Closed => {
                if find(&self.pending[..n], &self.delimiter).is_some() {
                    return Err(ScanError::Malformed("boundary after the close delimiter"));
                }
            }
            State::Preamble | State::File | State::Head(_) => {}
        }
        self.advance(n);
        Ok(())
    }

    fn advance(&mut self, n: usize) {
        let _ = self.pending.split_to(n);
        self.consumed += n as u64;
    }

    /// Reads a part's header block; true when it is complete and the part's kind is known.
    fn scan_head(&mut self) -> Result<bool, ScanError> {
        let State::Head(head) = &mut self.state else {
            return Ok(true);
        };
        // The blank line may straddle what was kept and what arrived.
        let already = head.len();
        head.extend_from_slice(&self.pending);
        let taken = self.pending.len();
        let end = find(head, b"\r\n\r\n");
        let Some(end) = end else {
            if head.len() > MAX_PART_HEAD {
                return Err(ScanError::Malformed("part header block too large"));
            }
            self.advance(taken);
            return Ok(false);
        };
        if find(&head[..end], &self.delimiter).is_some() {
            return Err(ScanError::Malformed(
                "boundary inside a part's header block",
            ));
        }
        if end > MAX_PART_HEAD {
            return Err(ScanError::Malformed("part header block too large"));
        }
        let block = &head[..end + 2];
        let name = credentials::part_name(block, None)
            .map_err(|_| ScanError::Malformed("part without a single name"))?;
        let next = if credentials::rack_file_part(block) {
            State::File
        } else {
            State::Field {
                name,
                value: Vec::new(),
            }
        };
        // Hand back what followed the blank line to the content scanner.
        let used_from_pending = end + 4 - already;
        self.state = next;
        self.advance(used_from_pending);
        Ok(true)
    }

    fn end_part(&mut self) -> Result<(), ScanError> {
        match std::mem::replace(&mut self.state, State::Preamble) {
            State::Field { name, value } => {
                self.params.push(Param {
                    name,
                    value: String::from_utf8_lossy(&value).into_owned(),
                });
                Ok(())
            }
            State::Head(_) => Err(ScanError::Malformed("part without a header block")),
            State::Closed => Err(ScanError::Malformed("boundary after the close delimiter")),
            State::Preamble | State::File => Ok(()),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    // memchr's searcher: every byte of a 200 MiB upload passes through here.
    memchr::memmem::find(hay, needle)
}

/// The streamed upload: the body to send upstream, the scan's outcome, and the switch that
/// releases (true) or aborts (false, or dropped) the held-back end of the request.
pub struct Streamed {
    pub body: UpBody,
    pub outcome: oneshot::Receiver<Result<Vec<Param>, ScanError>>,
    pub release: oneshot::Sender<bool>,
}

#[derive(Debug, thiserror::Error)]
#[error("request body withheld: the gate refused the request")]
struct Withheld;

/// Starts pumping `body` upstream through the scanner.
pub fn stream_multipart(body: UpBody, boundary: &str, limit: usize, idle: Duration) -> Streamed {
    let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, BodyError>>(4);
    let (outcome_tx, outcome) = oneshot::channel();
    let (release, release_rx) = oneshot::channel::<bool>();
    let mut scanner = MultipartScanner::new(boundary, limit);
    tokio::spawn(async move {
        let mut body = body;
        let mut held: Option<Bytes> = None;
        loop {
            let frame = match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(None) => break,
                Ok(Some(Err(_))) | Err(_) => {
                    let _ = outcome_tx.send(Err(ScanError::Aborted));
                    let _ = tx.send(Err(Box::new(Withheld))).await;
                    return;
                }
            };
            let Ok(data) = frame.into_data() else {
                // Trailers carry no parameters Rack reads; they are not forwarded.
                continue;
            };
            if let Err(e) = scanner.feed(&data) {
                let _ = outcome_tx.send(Err(e));
                let _ = tx.send(Err(Box::new(Withheld))).await;
                return;
            }
            if let Some(previous) = held.replace(data) {
                // A forge that stopped reading (it answered early) is no reason to stop
                // scanning: the outcome is still owed to the gate.
                let _ = tx.send(Ok(Frame::data(previous))).await;
            }
        }
        let _ = outcome_tx.send(scanner.finish());
        match release_rx.await {
            Ok(true) => {
                if let Some(last) = held {
                    let _ = tx.send(Ok(Frame::data(last))).await;
                }
            }
            _ => {
                let _ = tx.send(Err(Box::new(Withheld))).await;
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Streamed {
        body: http_body_util::StreamBody::new(stream).boxed(),
        outcome,
        release,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[(&str, Option<&str>, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, filename, value) in parts {
            let disp = match filename {
                Some(f) => format!("form-data; name=\"{name}\"; filename=\"{f}\""),
                None => format!("form-data; name=\"{name}\""),
            };
            b.extend_from_slice(
                format!("--XyZ\r\nContent-Disposition: {disp}\r\n\r\n{value}\r\n").as_bytes(),
            );
        }
        b.extend_from_slice(b"--XyZ--\r\n");
        b
    }

    fn scan_in_chunks(data: &[u8], chunk: usize) -> Result<Vec<Param>, ScanError> {
        let mut s = MultipartScanner::new("XyZ", 1024);
        for c in data.chunks(chunk.max(1)) {
            s.feed(c)?;
        }
        s.finish()
    }

    #[test]
    fn fields_are_found_in_every_chunking_and_files_skipped() {
        let data = body(&[
            ("a", None, "1"),
            ("file", Some("x.bin"), &"F".repeat(3000)),
            ("job_token", None, "glcbt-late"),
        ]);
        for chunk in 1..64 {
            let params = scan_in_chunks(&data, chunk).expect("scans");
            let got: Vec<(&str, &str)> = params
                .iter()
                .map(|p| (p.name.as_str(), p.value.as_str()))
                .collect();
            assert_eq!(
                got,
                vec![("a", "1"), ("job_token", "glcbt-late")],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn agrees_with_the_buffered_parser() {
        let data = body(&[
            ("token", None, "t1"),
            ("f", Some("a"), "zz"),
            ("x[]", None, "v"),
        ]);
        let streamed = scan_in_chunks(&data, 7).expect("scans");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        let buffered = rt
            .block_on(credentials::parse_body(
                &credentials::BodyKind::Multipart {
                    boundary: "XyZ".into(),
                },
                Bytes::from(data),
            ))
            .expect("parses");
        assert_eq!(streamed, buffered);
    }

    #[test]
    fn refuses_what_rack_could_read_differently() {
        let cases: Vec<Vec<u8>> = vec![
            // Delimiter without CRLF before it (Rack ends the part there).
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1--XyZ\r\nContent-Disposition: form-data; name=\"job_token\"\r\n\r\nt\r\n--XyZ--\r\n".to_vec(),
            // More parts after the close delimiter.
            b"--XyZ--\r\n--XyZ\r\nContent-Disposition: form-data; name=\"job_token\"\r\n\r\nt\r\n--XyZ--\r\n".to_vec(),
            // Delimiter followed by junk.
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XyZjunk\r\n--XyZ--".to_vec(),
            // No close delimiter.
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n".to_vec(),
            // A part without a name.
            b"--XyZ\r\nContent-Type: text/plain\r\n\r\n1\r\n--XyZ--\r\n".to_vec(),
        ];
        for (i, data) in cases.iter().enumerate() {
            for chunk in [1, 3, 1000] {
                assert!(
                    scan_in_chunks(data, chunk).is_err(),
                    "case {i} chunk {chunk}"
                );
            }
        }
    }

    #[test]
    fn field_values_are_bounded() {
        let data = body(&[("a", None, &"v".repeat(2000))]);
        assert_eq!(scan_in_chunks(&data, 100), Err(ScanError::TooLarge));
        // File contents are not counted.
        let data = body(&[("a", Some("f"), &"v".repeat(20_000))]);
        assert!(scan_in_chunks(&data, 100).is_ok());
    }
}
