//! Loading a configuration as the gateway needs it: `proto`'s validated
//! config, plus the TLS group typed by [`crate::tls::settings`], with every
//! problem (from either) reported under its key.

use std::path::Path;
use std::time::Duration;

use proto::{Config, ConfigError, ConfigErrors};

use crate::tls::settings::{TlsSettings, TlsSource};

/// A configuration ready to serve.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Settings and solutions.
    pub config: Config,
    /// The TLS group.
    pub tls: TlsSettings,
    /// Whether plain HTTP is redirected to HTTPS.
    pub ssl_redirect: bool,
}

impl Loaded {
    /// `Strict-Transport-Security` max-age, if on.
    pub fn hsts(&self) -> Option<Duration> {
        self.tls.hsts
    }
}

/// Reads and validates `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    validate(Config::load(path)?)
}

/// Validates the TLS group of an already parsed config.
pub fn validate(config: Config) -> Result<Loaded, ConfigErrors> {
    let pairs = &config.settings.tls;
    let mut errors = Vec::new();
    let tls = crate::tls::settings::from_pairs(pairs).map_err(|problems| {
        errors.extend(problems.into_iter().map(|(k, r)| ConfigError::new(format!("settings.{k}"), r)));
    });
    let redirect = match pairs.get("ssl-redirect").map(|s| s.trim()).unwrap_or("auto") {
        "auto" => None,
        "true" | "on" | "yes" => Some(true),
        "false" | "off" | "no" => Some(false),
        other => {
            errors.push(ConfigError::new("settings.ssl-redirect", format!("expected true, false or auto, got {other:?}")));
            None
        }
    };
    // Opened (created if need be) now, as `nginx -t` does: a path the
    // gateway cannot write to is refused before any line is lost to it.
    if let proto::settings::AccessLog::File(path) = &config.settings.access_log
        && let Err(e) = crate::access_log::open(path)
    {
        errors.push(ConfigError::new("settings.access-log", format!("{} cannot be opened for appending: {e}", path.display())));
    }
    // What would fail only once running: a solution's working directory, two
    // listeners on one address.
    for s in &config.solutions {
        if let proto::Backend::Process(p) = &s.backend
            && !p.cwd.is_dir()
        {
            errors.push(ConfigError::new(format!("solution.{}.cwd", s.name), format!("{} is not a directory", p.cwd.display())));
        }
    }
    let mut listeners = vec![("listen", config.settings.listen), ("admin-listen", config.settings.admin_listen)];
    if let Ok(t) = &tls
        && t.source != TlsSource::Off
    {
        listeners.push(("tls-listen", t.listen));
    }
    for (i, (key, addr)) in listeners.iter().enumerate() {
        if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| a == addr && a.port() != 0) {
            errors
                .push(ConfigError::new(format!("settings.{key}"), format!("{addr} is {other}'s address too; each listener needs its own")));
        }
    }
    // A fixed solution port (on loopback) that is a listener's, or another
    // solution's: the probe would pass against the wrong server, and the
    // gateway would forward to itself.
    let mut fixed: Vec<(&str, u16)> = Vec::new();
    for s in &config.solutions {
        let proto::Backend::Process(p) = &s.backend else { continue };
        let Some(port) = p.port else { continue };
        let key = format!("solution.{}.port", s.name);
        if let Some((listener, _)) = listeners.iter().find(|(_, a)| a.port() == port && (a.ip().is_loopback() || a.ip().is_unspecified())) {
            errors.push(ConfigError::new(key, format!("{port} is the port of settings.{listener}")));
        } else if let Some((other, _)) = fixed.iter().find(|(_, p)| *p == port) {
            errors.push(ConfigError::new(key, format!("{port} is solution {other}'s port too")));
        }
        fixed.push((&s.name, port));
    }
    match tls {
        Ok(tls) if errors.is_empty() => {
            // A trusted certificate makes the redirect safe by default; a
            // self-signed one would make every first visit a browser warning.
            let trusted = matches!(tls.source, TlsSource::Files { .. } | TlsSource::Acme(_));
            let ssl_redirect = redirect.unwrap_or(trusted) && tls.source != TlsSource::Off;
            Ok(Loaded { config, tls, ssl_redirect })
        }
        _ => Err(ConfigErrors(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_keys_agree_with_proto() {
        let ours: Vec<&str> = crate::tls::settings::KEYS.to_vec();
        for k in &ours {
            assert!(proto::settings::TLS_KEYS.iter().any(|p| p.name == *k), "{k} is not documented in proto");
        }
        for p in proto::settings::TLS_KEYS {
            assert!(ours.contains(&p.name) || p.name == "ssl-redirect", "{} is not parsed by the TLS module", p.name);
        }
    }

    #[test]
    fn tls_problems_name_their_keys() {
        let c = Config::parse(
            "[settings]\ntls-source = \"acme\"\nacme-directory = \"https://ca.test/dir\"\nrfc2136-server = \"127.0.0.1:53\"\nrfc2136-tsig-key = \"k\"\nssl-redirect = \"maybe\"\n",
            Path::new("."),
        )
        .unwrap();
        let e = validate(c).unwrap_err();
        let keys = e.keys();
        assert!(keys.contains(&"settings.rfc2136-tsig-secret"), "{keys:?}");
        assert!(keys.contains(&"settings.tls-dir"), "{keys:?}");
        assert!(keys.contains(&"settings.ssl-redirect"), "{keys:?}");
    }

    #[test]
    fn what_would_fail_only_once_running_is_refused_with_its_key() {
        let c = Config::parse(
            "[settings]\nlisten = \"127.0.0.1:8080\"\nadmin-listen = \"127.0.0.1:8080\"\n\
             [[solution]]\nname = \"app\"\ncommand = \"python3 app.py\"\ncwd = \"/nonexistent/wakegate\"\n",
            Path::new("."),
        )
        .unwrap();
        let e = validate(c).unwrap_err();
        assert_eq!(e.keys(), ["solution.app.cwd", "settings.admin-listen"], "{e}");
        // Port 0 (any free port) is no clash.
        let c =
            Config::parse("[settings]\nlisten = \"127.0.0.1:0\"\nadmin-listen = \"127.0.0.1:0\"\ntls-source = \"off\"\n", Path::new("."))
                .unwrap();
        assert!(validate(c).is_ok());
    }

    #[test]
    fn redirect_defaults_follow_the_source() {
        let load = |s: &str| validate(Config::parse(s, Path::new(".")).unwrap()).unwrap();
        assert!(!load("").ssl_redirect, "self-signed by default: no redirect");
        assert!(load("[settings]\ntls-source=\"files\"\ntls-cert-file=\"a\"\ntls-key-file=\"b\"\n").ssl_redirect);
        assert!(!load("[settings]\ntls-source=\"off\"\nssl-redirect=\"true\"\n").ssl_redirect);
    }
}
