//! The one place a refusal becomes an HTTP response. A denial of an existing project and of
//! a project that does not exist produce byte-identical answers, shaped like the forge's own
//! (JSON on API paths, `text/plain` on Git paths where git prints it, the registry's shape).

use crate::forge::UpBody;
use crate::target::Shape;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// Every way scopegate answers a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400: malformed whatever it carries (never echoes input).
    BadRequest(&'static str),
    /// 401: a dedicated slot holds no live job token, or the job is no longer running.
    Unauthorized(Shape),
    /// 404: a scope denial, an unknown route, an unresolved target, two credentials.
    NotFound(Shape),
    /// 403 in the style of GitLab 17+ (`deny_response: forbidden`).
    ForbiddenScope { source: String, target: String },
    /// 403: a push the scope allows but the push rule does not.
    PushForbidden(Shape),
    /// 413: a parameter-bearing body over `limits.inspect_body`.
    PayloadTooLarge,
    /// 414: a request-target over `limits.max_url`.
    UriTooLong,
    /// 431: a request head over `limits.max_request_head`.
    HeadTooLarge,
    /// 502: the forge is unreachable.
    BadGateway,
    /// 503: the forge could not answer a look-up; nothing was forwarded.
    Unavailable,
    /// 504: the forge sent no response head in time.
    GatewayTimeout,
}

pub const GIT_NOT_FOUND: &str =
    "The project you were looking for could not be found or you don't have permission to view it.";
pub const PUSH_FORBIDDEN: &str = "You are not allowed to push code to this project.";
/// The registry token endpoint's 401, as GitLab's `JwtController` renders it.
pub const REGISTRY_UNAUTHORIZED: &str =
    r#"{"errors":[{"code":"UNAUTHORIZED","message":"HTTP Basic: Access denied"}]}"#;
pub const REGISTRY_DENIED: &str = r#"{"errors":[{"code":"DENIED","message":"access forbidden"}]}"#;

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refusal::NotFound(_) => StatusCode::NOT_FOUND,
            Refusal::ForbiddenScope { .. } | Refusal::PushForbidden(_) => StatusCode::FORBIDDEN,
            Refusal::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            Refusal::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::BadGateway => StatusCode::BAD_GATEWAY,
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The response the client sees.
    pub fn into_response(self) -> Response<UpBody> {
        let status = self.status();
        let (content_type, body): (&'static str, String) = match self {
            Refusal::BadRequest(_) => json(r#"{"message":"400 Bad request"}"#),
            Refusal::Unauthorized(Shape::Git) => (
                "text/plain; charset=utf-8",
                "HTTP Basic: Access denied. If a password was provided for Git authentication, \
                 the password was incorrect or you're required to use a token instead of a password."
                    .to_owned(),
            ),
            Refusal::Unauthorized(Shape::Registry) => json(REGISTRY_UNAUTHORIZED),
            Refusal::Unauthorized(_) => json(r#"{"message":"401 Unauthorized"}"#),
            Refusal::NotFound(Shape::Git) => ("text/plain; charset=utf-8", GIT_NOT_FOUND.to_owned()),
            Refusal::NotFound(Shape::Registry) => json(REGISTRY_DENIED),
            Refusal::NotFound(Shape::Api) => json(r#"{"message":"404 Project Not Found"}"#),
            Refusal::ForbiddenScope { source, target } => (
                "application/json",
                serde_json::json!({
                    "message": format!(
                        "403 Forbidden - Authentication by CI/CD job token not allowed from {source} to {target}."
                    )
                })
                .to_string(),
            ),
            Refusal::PushForbidden(Shape::Git) => {
                ("text/plain; charset=utf-8", PUSH_FORBIDDEN.to_owned())
            }
            Refusal::PushForbidden(_) => json(r#"{"message":"403 Forbidden"}"#),
            Refusal::PayloadTooLarge => json(r#"{"message":"413 Request Entity Too Large"}"#),
            Refusal::UriTooLong => json(r#"{"message":"414 URI Too Long"}"#),
            Refusal::HeadTooLarge => json(r#"{"message":"431 Request Header Fields Too Large"}"#),
            Refusal::BadGateway => json(r#"{"message":"502 Bad Gateway"}"#),
            Refusal::Unavailable => json(r#"{"message":"503 Service Unavailable"}"#),
            Refusal::GatewayTimeout => json(r#"{"message":"504 Gateway Timeout"}"#),
        };
        let mut resp = Response::new(crate::forge::full(Bytes::from(body)));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="GitLab""#),
            );
        }
        resp
    }
}

fn json(body: &'static str) -> (&'static str, String) {
    ("application/json", body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Refusal) -> (StatusCode, String, Bytes) {
        let resp = r.into_response();
        let status = resp.status();
        let ct = resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        (status, ct, bytes)
    }

    #[tokio::test]
    async fn shapes() {
        let (s, ct, b) = body(Refusal::NotFound(Shape::Api)).await;
        assert_eq!((s.as_u16(), ct.as_str()), (404, "application/json"));
        assert_eq!(&b[..], br#"{"message":"404 Project Not Found"}"#);
        let (s, ct, b) = body(Refusal::NotFound(Shape::Git)).await;
        assert_eq!(
            (s.as_u16(), ct.as_str()),
            (404, "text/plain; charset=utf-8")
        );
        assert_eq!(&b[..], GIT_NOT_FOUND.as_bytes());
        let (s, _, b) = body(Refusal::NotFound(Shape::Registry)).await;
        assert_eq!(s.as_u16(), 404);
        assert_eq!(&b[..], REGISTRY_DENIED.as_bytes());
        let (s, ct, b) = body(Refusal::PushForbidden(Shape::Git)).await;
        assert_eq!(
            (s.as_u16(), ct.as_str()),
            (403, "text/plain; charset=utf-8")
        );
        assert_eq!(&b[..], PUSH_FORBIDDEN.as_bytes());
        let (s, _, b) = body(Refusal::Unauthorized(Shape::Api)).await;
        assert_eq!(s.as_u16(), 401);
        assert_eq!(&b[..], br#"{"message":"401 Unauthorized"}"#);
        let (s, _, b) = body(Refusal::ForbiddenScope {
            source: "g/a".into(),
            target: "g/b".into(),
        })
        .await;
        assert_eq!(s.as_u16(), 403);
        assert_eq!(
            &b[..],
            br#"{"message":"403 Forbidden - Authentication by CI/CD job token not allowed from g/a to g/b."}"#
        );
    }
}
