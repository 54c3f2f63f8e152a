//! Refused requests: the right status, a short body in the format the client
//! asked for (JSON, HTML or text), the request id, and a reason that becomes
//! the `reason` label of `wakegate_rejected_requests_total`.

use std::borrow::Cow;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::body::Body;

/// Why a request was not forwarded.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The status to answer with.
    pub status: StatusCode,
    /// Short machine-readable reason; also the metric label.
    pub reason: &'static str,
    /// One sentence for the user.
    pub message: Cow<'static, str>,
    /// Seconds after which a retry makes sense (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl Refusal {
    /// A refusal with no `Retry-After`.
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self { status, reason, message: message.into(), retry_after: None }
    }

    /// Adds `Retry-After` (at least one second).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// No solution is served at this host.
    pub fn unknown_host(host: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "unknown_host", format!("no solution is served at {host}"))
    }

    /// The plain-text body: the message and the request id.
    fn text(&self, id: &str) -> String {
        format!("{} (request id {id})\n", self.message)
    }

    /// The whole answer as bytes, for a refusal made where no request was read
    /// whole (a malformed or oversized head, a slow one, a connection over
    /// the limit): text, the request id, and the connection closed.
    pub fn wire(&self, request_id: &HeaderValue) -> Vec<u8> {
        let id = request_id.to_str().unwrap_or("-");
        let body = self.text(id);
        let reason = self.status.canonical_reason().unwrap_or("");
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nx-request-id: {id}\r\n",
            self.status.as_u16(),
            body.len()
        );
        if let Some(secs) = self.retry_after {
            out.push_str(&format!("retry-after: {secs}\r\n"));
        }
        out.push_str("connection: close\r\n\r\n");
        out.push_str(&body);
        out.into_bytes()
    }

    /// The response, shaped by the request's `Accept` header.
    pub fn into_response(self, request_headers: &HeaderMap, request_id: &HeaderValue) -> Response<Body> {
        self.respond(request_headers.get(header::ACCEPT), request_id)
    }

    /// The response for a request whose `Accept` header was `accept`.
    pub fn respond(self, accept: Option<&HeaderValue>, request_id: &HeaderValue) -> Response<Body> {
        let id = request_id.to_str().unwrap_or("-");
        let accept = accept.and_then(|v| v.to_str().ok()).unwrap_or("");
        let (content_type, body) = if accept.contains("application/json") {
            let v = serde_json::json!({
                "error": self.reason,
                "message": self.message,
                "status": self.status.as_u16(),
                "request_id": id,
            });
            ("application/json", format!("{v}\n"))
        } else if accept.contains("text/html") {
            let title = format!("{} {}", self.status.as_u16(), self.status.canonical_reason().unwrap_or(""));
            (
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
                     <title>{title}</title><body style=\"font:16px system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em\">\
                     <h1 style=\"font-size:1.4em\">{title}</h1><p>{}</p><p style=\"color:#666;font-size:.85em\">request id <code>{}</code></p></body></html>\n",
                    html_escape(&self.message),
                    html_escape(id)
                ),
            )
        } else {
            ("text/plain; charset=utf-8", self.text(id))
        };
        let mut resp = Response::new(Body::full(body));
        *resp.status_mut() = self.status;
        let mut resp = crate::access_log::with_reason(resp, self.reason);
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['<', '>', '&', '"', '\'']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}
