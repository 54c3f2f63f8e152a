//! What a solution is: its name (the subdomain), how it is run or reached, and
//! its effective settings after overrides.

use std::path::PathBuf;

use crate::settings::SolutionSettings;

/// One solution, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolutionSpec {
    /// The subdomain label: `nlp` serves `nlp.<base-domain>`.
    pub name: String,
    /// One line for the catalog page.
    pub description: Option<String>,
    /// How requests reach it.
    pub backend: Backend,
    /// Effective settings: the global defaults with this solution's overrides.
    pub settings: SolutionSettings,
    /// The overrides as written, key and value (shown in `/status`).
    pub overrides: Vec<(String, String)>,
}

impl SolutionSpec {
    /// Whether wakegate starts and stops it (as opposed to a fixed upstream).
    pub fn scales(&self) -> bool {
        matches!(self.backend, Backend::Process(_) | Backend::Cluster(_))
    }
}

/// How a solution is run or reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A local command, started on demand and stopped when idle.
    Process(ProcessSpec),
    /// An always-on HTTP server managed elsewhere.
    Upstream(Upstream),
    /// A Kubernetes Service whose Deployment scales between 0 and `wake-replicas`.
    Cluster(ClusterRef),
}

/// A solution in a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRef {
    /// Namespace of the Service and Deployment.
    pub namespace: String,
    /// The Service (its EndpointSlices give the ready pods).
    pub service: String,
    /// The Deployment to scale.
    pub deployment: String,
    /// The Service port to use: a name, or a number as text; `None` = the first port.
    pub port: Option<String>,
    /// The Service's pod selector as a label selector (`app=web,tier=ui`), to
    /// follow a wake-up's Pods; `None` for a Service without one.
    pub pods: Option<String>,
}

/// A local command serving HTTP on the port it is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// The argument vector; `{port}` in any argument is replaced by the port.
    /// A command written as one string runs as `sh -c '<string>'`.
    pub argv: Vec<String>,
    /// Working directory (relative paths in the file are against the file's folder).
    pub cwd: PathBuf,
    /// Extra environment; `PORT` is always set to the port.
    pub env: Vec<(String, String)>,
    /// A fixed port; `None` picks a free loopback port at each start.
    pub port: Option<u16>,
    /// How readiness is checked.
    pub probe: Probe,
}

/// A readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `GET <path>` answered with a status below 400.
    Http {
        /// Absolute path, e.g. `/healthz`.
        path: String,
    },
    /// A TCP connection is accepted.
    Tcp,
}

/// An `http://host:port` upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port (80 if the URL has none).
    pub port: u16,
}

impl Upstream {
    /// Parses `http://host[:port][/]`. Paths, queries and `https` are refused
    /// with a reason (TLS to upstreams is not supported yet).
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("invalid upstream {url:?}: must start with http://"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '@', '#']) {
            return Err(format!("invalid upstream {url:?}: only http://host:port is allowed (no path, query, fragment or user)"));
        }
        if authority.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(format!("invalid upstream {url:?}: the host has a space or a control character"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| format!("invalid upstream {url:?}: unclosed '['"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("invalid upstream {url:?}: missing host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("invalid upstream {url:?}: bad port {p:?}"))?,
        };
        Ok(Upstream { host: host.to_string(), port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        assert_eq!(Upstream::parse("http://127.0.0.1:9000"), Ok(Upstream { host: "127.0.0.1".into(), port: 9000 }));
        assert_eq!(Upstream::parse("http://svc.local/"), Ok(Upstream { host: "svc.local".into(), port: 80 }));
        assert_eq!(Upstream::parse("http://[::1]:81"), Ok(Upstream { host: "::1".into(), port: 81 }));
        assert!(Upstream::parse("https://x").is_err());
        assert!(Upstream::parse("http://x:0").is_err());
        assert!(Upstream::parse("http://x/path").is_err());
    }
}
