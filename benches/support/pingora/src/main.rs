//! A Pingora reverse proxy for `benches/run`: one upstream, the same work per
//! request as wakegate and the other peers do there (`X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host` and an `X-Request-Id`, the
//! client's kept or else a new one, to the backend; the same id back to the
//! client), upstream keep-alive (Pingora's pool), one thread without work
//! stealing, TLS by rustls with ALPN h2 and http/1.1.
//!
//! Usage: pingora-bench-proxy [--bare] PLAIN_ADDR TLS_ADDR|- CERT KEY UPSTREAM_ADDR
//! (`--bare`: no fields added, as `benches/run --bare-peers`; `-`: no TLS listener)

use std::process::ExitCode;

use async_trait::async_trait;
use pingora_core::Result;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::Server;
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Bench {
    upstream: String,
    /// Pass requests on without the fields.
    bare: bool,
}

/// Per request: the request id, sent back with the answer.
#[derive(Default)]
struct Ctx {
    id: Option<String>,
}

#[async_trait]
impl ProxyHttp for Bench {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream.as_str(), false, String::new())))
    }

    async fn upstream_request_filter(&self, session: &mut Session, req: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
        if self.bare {
            return Ok(());
        }
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_string()).unwrap_or_default();
        req.insert_header("X-Forwarded-For", client)?;
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        req.insert_header("X-Forwarded-Proto", if tls { "https" } else { "http" })?;
        let host = session.req_header().uri.host().map(str::to_owned).or_else(|| {
            let h = session.get_header("host")?.to_str().ok()?;
            Some(h.split(':').next().unwrap_or(h).to_owned())
        });
        if let Some(host) = host {
            req.insert_header("X-Forwarded-Host", host)?;
        }
        let id = match session.get_header("x-request-id").and_then(|v| v.to_str().ok()) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => format!("{:016x}", fastrand::u64(..)),
        };
        req.insert_header("X-Request-Id", id.as_str())?;
        ctx.id = Some(id);
        Ok(())
    }

    async fn response_filter(&self, _session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        if let Some(id) = ctx.id.take() {
            resp.insert_header("X-Request-Id", id)?;
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let bare = args.first().is_some_and(|a| a == "--bare");
    if bare {
        args.remove(0);
    }
    let [plain, tls, cert, key, upstream] = args.as_slice() else {
        eprintln!("usage: pingora-bench-proxy [--bare] PLAIN_ADDR TLS_ADDR|- CERT KEY UPSTREAM_ADDR");
        return ExitCode::from(2);
    };
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        // benches/run stops its servers with SIGTERM: no grace period to wait out.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Bench { upstream: upstream.clone(), bare });
    proxy.add_tcp(plain);
    if tls != "-" {
        let mut settings = match TlsSettings::intermediate(cert, key) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pingora-bench-proxy: {cert}, {key}: {e}");
                return ExitCode::FAILURE;
            }
        };
        settings.enable_h2();
        proxy.add_tls_with_settings(tls, None, settings);
    }
    server.add_service(proxy);
    server.run_forever()
}
