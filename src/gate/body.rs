//! Request bodies: parameter-bearing ones read whole (bounded) for the credential phase,
//! untyped API writes peeked at, large multipart uploads streamed through the scanner with
//! their end held back until decided, everything else streamed untouched.

use super::{refuse_with, Ctx, Gate, Head};
use crate::canonical::CanonicalPath;
use crate::credentials::{self, BodyKind, Credential, Origin, Param};
use crate::error::Refusal;
use crate::forge::{self, UpBody};
use crate::forward::{self, Outbound};
use crate::inspect::{self, ScanError};
use bytes::Bytes;
use http::Response;

impl Gate {
    /// Whether a multipart body streams (too large, or of unknown length, to read whole).
    pub(super) fn streams(&self, headers: &http::HeaderMap) -> bool {
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        declared.is_none_or(|n| n > self.config.limits.inspect_body as u64)
    }

    /// A multipart upload too large to read whole: decided on its head first, then streamed to
    /// the forge while its fields are scanned; the end of the request is held back until the
    /// fields' credentials (if any) have been decided on too. A late denial aborts the upstream
    /// request, so the forge never holds a complete request, and the client gets the refusal.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn stream_upload(
        &self,
        head: Head,
        creds: Vec<Credential>,
        boundary: &str,
        mut parts: http::request::Parts,
        body: UpBody,
        tls: bool,
        ctx: &mut Ctx,
    ) -> Result<Response<UpBody>, Refusal> {
        let limits = &self.config.limits;
        let path_and_query = self.authorize(&head, &creds, &[], ctx).await?;
        let streamed =
            inspect::stream_multipart(body, boundary, limits.inspect_body, limits.idle_timeout);
        // The head is decided on again once the fields are in: the forwarder gets a copy.
        parts.headers = head.headers.clone();
        let forwarding = forward::forward(
            &self.config,
            &self.upstream,
            &self.metrics.upstream_response,
            Outbound {
                parts,
                body: streamed.body,
                path_and_query,
                peer: head.peer,
                tls,
                upgrade: None,
            },
        );
        tokio::pin!(forwarding);
        let release = streamed.release;
        let outcome = tokio::select! {
            // The forge answered before the whole body was sent: it has not received the end
            // of the request (held back), so it acted on nothing; its answer goes back as is.
            // Dropping `release` withholds the end for good.
            answered = &mut forwarding => return answered,
            outcome = streamed.outcome => outcome,
        };
        let params = match outcome {
            Ok(Ok(params)) => params,
            Ok(Err(ScanError::TooLarge)) => {
                return Err(refuse_with(ctx, "body_too_large", Refusal::PayloadTooLarge))
            }
            Ok(Err(ScanError::Aborted)) | Err(_) => {
                return Err(refuse_with(ctx, "body", Refusal::BadRequest("body")))
            }
            Ok(Err(ScanError::Malformed(_))) => {
                return Err(refuse_with(
                    ctx,
                    "malformed_body",
                    Refusal::BadRequest("body"),
                ))
            }
        };
        let late = credentials::credentials_from_params(&params, Origin::Body);
        // A field naming `service` may disagree with the query's: decided again like a token.
        let classifying = params.iter().any(|p| p.name == "service");
        if !late.is_empty() || classifying {
            let mut all = creds;
            all.extend(late);
            // The decision on the whole request replaces the one on its head.
            ctx.restart();
            if let Err(refusal) = self.authorize(&head, &all, &params, ctx).await {
                let _ = release.send(false);
                return Err(refusal);
            }
        }
        let _ = release.send(true);
        forwarding.await
    }
}

/// Routes whose JSON body carries a package or a state rather than parameters, read whole up
/// to `limits.inspect_publish` instead of `inspect_body`: npm publish (`PUT
/// /api/v4/projects/:id/packages/npm/:package_name`, `lib/api/npm_project_packages.rb`; its
/// `/-/` routes, dist-tags, are ordinary small documents) and Terraform state (`POST
/// /api/v4/projects/:id/terraform/state/:name`).
pub(super) fn is_package_publish(method: &http::Method, path: &CanonicalPath) -> bool {
    let Some(rest) = path.lower.strip_prefix("/api/v4/projects/") else {
        return false;
    };
    if method == http::Method::POST {
        // Terraform's http backend POSTs the whole state as JSON (lib/api/terraform/state.rb);
        // real states are often megabytes. `/lock` below it is a small document.
        return rest
            .split_once("/terraform/state/")
            .is_some_and(|(project, name)| {
                !project.is_empty() && !name.is_empty() && !name.contains('/')
            });
    }
    if method != http::Method::PUT {
        return false;
    }
    match rest.split_once("/packages/npm/") {
        Some((project, package)) => {
            !project.is_empty()
                && !package.is_empty()
                && !package.starts_with("-/")
                && !package.contains("/-/")
        }
        None => false,
    }
}

/// Reads a parameter-bearing body whole (bounded) and parses it; streams anything else. An
/// untyped API write is peeked at first: JSON to Grape is read, anything else streams.
///
/// A free function over owned values: with `&self` or `&mut Ctx` captured, a body value held
/// across its awaits defeats the compiler's proof that the connection future is `Send`
/// (rust-lang/rust#102211). The caller records the refusal's reason.
pub(super) async fn read_body(
    kind: BodyKind,
    untyped: bool,
    declared: Option<u64>,
    body: UpBody,
    limit: usize,
    idle: std::time::Duration,
) -> Result<(UpBody, Vec<Param>), (&'static str, Refusal)> {
    let (kind, body) = if untyped {
        let mut body = body;
        let (json, peeked) = forward::peek_json(&mut body, idle)
            .await
            .map_err(|r| ("body", r))?;
        let kind = if json { BodyKind::Untyped } else { kind };
        (kind, forward::unpeek(peeked, body))
    } else {
        (kind, body)
    };
    if kind == BodyKind::Opaque {
        return Ok((forward::stream_body(body, idle), Vec::new()));
    }
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(("body_too_large", Refusal::PayloadTooLarge));
    }
    let bytes: Bytes = forward::read_limited(body, limit, idle)
        .await
        .map_err(|r| ("body", r))?;
    // An empty body holds no parameters (Rack parses none; Rails' JSON parser skips it).
    let params = if bytes.is_empty() {
        Vec::new()
    } else {
        credentials::parse_body(&kind, bytes.clone())
            .await
            .map_err(|_| ("malformed_body", Refusal::BadRequest("body")))?
    };
    Ok((forge::full(bytes), params))
}

pub(super) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}
