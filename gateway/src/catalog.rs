//! The catalog at the bare base domain: every solution with its state, its
//! last request and a link. HTML for people, JSON for `Accept: application/json`.

use std::fmt::Write as _;

use http::header::{self, HeaderValue};
use http::{Request, Response};

use crate::body::Body;
use crate::gateway::Gateway;
use crate::refusal::html_escape;
use crate::router::Routes;
use crate::solution::unix_now;

/// Answers a request for the base domain.
pub fn respond<B>(_gw: &Gateway, routes: &Routes, req: &Request<B>, host: &str) -> Response<Body> {
    let port = host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map(|(_, p)| p);
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    let url = |name: &str| format!("//{name}.{}{port}/", routes.base());
    let wants_json = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"));
    let (content_type, body) = if wants_json {
        let items: Vec<_> = routes
            .list
            .iter()
            .map(|s| {
                let spec = s.spec.load();
                serde_json::json!({
                    "name": &*s.name,
                    "url": format!("http:{}", url(&s.name)),
                    "state": s.catalog_state(),
                    "description": spec.description,
                    "last_request": s.last_request(),
                })
            })
            .collect();
        ("application/json", serde_json::json!({ "base_domain": routes.base(), "solutions": items }).to_string())
    } else {
        ("text/html; charset=utf-8", html(routes, &url))
    };
    let mut r = Response::new(Body::full(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn ago(last: Option<f64>) -> String {
    let Some(t) = last else { return "never".into() };
    let secs = (unix_now() - t).max(0.0) as u64;
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86399 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}

fn html(routes: &Routes, url: &dyn Fn(&str) -> String) -> String {
    let mut rows = String::new();
    for s in &routes.list {
        let spec = s.spec.load();
        let state = s.catalog_state();
        let _ = write!(
            rows,
            "<tr><td><a href=\"{href}\">{name}</a><div class=d>{desc}</div></td><td><span class=\"s {state}\">{state}</span></td><td>{ago}</td></tr>",
            href = html_escape(&url(&s.name)),
            name = html_escape(&s.name),
            desc = html_escape(spec.description.as_deref().unwrap_or("")),
            ago = ago(s.last_request()),
        );
    }
    if routes.list.is_empty() {
        rows.push_str("<tr><td colspan=3>No solutions are configured yet.</td></tr>");
    }
    format!(
        r#"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width, initial-scale=1">
<title>Solutions at {base}</title><style>
body{{font:16px/1.5 system-ui,sans-serif;color:#1d2330;background:#f6f7fb;margin:0}}main{{max-width:46em;margin:8vh auto;padding:0 1em}}
table{{width:100%;border-collapse:collapse;background:#fff;border-radius:10px;overflow:hidden;box-shadow:0 2px 14px #0001}}
td,th{{text-align:left;padding:.7em 1em;border-bottom:1px solid #eef0f5}}th{{font-size:.85em;color:#8a91a0;font-weight:600}}
a{{color:#2f6fed;font-weight:600;text-decoration:none}}.d{{color:#6a7283;font-size:.9em}}
.s{{padding:.15em .6em;border-radius:99px;font-size:.85em;background:#eef0f5;color:#6a7283}}.ready{{background:#dff3e4;color:#236b35}}
.waking{{background:#fff3d6;color:#8a5a00}}.failed{{background:#fbe0e0;color:#a12a2a}}
</style></head><body><main><h1>Solutions at {base}</h1>
<p>Each solution sleeps while idle and wakes on its first request: the first visit may take a few seconds.</p>
<table><tr><th>solution</th><th>state</th><th>last request</th></tr>{rows}</table></main></body></html>
"#,
        base = html_escape(routes.base()),
    )
}
