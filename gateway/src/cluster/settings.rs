//! The settings ConfigMap (`wakegate-config`): its flat keys are the
//! embedded `[settings]` keys, parsed by the same code ([`parse`]), watched
//! ([`watch`]) and applied live. A bad edit changes nothing: every problem is
//! logged with its key (`configmap.wakegate-config.<key>`), counted in
//! `wakegate_config_reloads_total{outcome="failure"}`, and published as a
//! Warning Event (reason `InvalidConfig`) on the ConfigMap, so
//! `kubectl describe configmap` shows why; the last good configuration
//! keeps serving. A missing ConfigMap means the defaults.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher::watch_object;
use kube::{Api, Resource};
use proto::settings::TLS_KEYS;
use proto::{Config, ConfigError, ConfigErrors, Settings};
use tokio::sync::watch;

use crate::config::Loaded;
use crate::metrics::Metrics;

/// Keys that flags set in cluster mode (the pod spec owns its ports);
/// written in the ConfigMap they are ignored, with a warning.
pub const FLAG_KEYS: &[&str] = &["listen", "admin-listen", "tls-listen", "workers"];
/// Keys read once at start besides the TLS group's (every one but `hsts`):
/// a change takes a rollout.
pub const RESTART_KEYS: &[&str] = &["base-domain"];
/// `reportingController` of the gateway's Events.
pub const REPORTER: &str = "wakegate-gateway";
/// The Event reason of a rejected edit.
pub const REASON_INVALID: &str = "InvalidConfig";
/// What `tls-dir` reads as in a cluster, where the ACME account and
/// certificate live in Secrets (the key is not required there).
const SECRETS_AS_DIR: &str = "(kubernetes secrets)";
/// events.k8s.io limits `note` to 1 kB.
const MAX_NOTE: usize = 1024;

/// Parses a ConfigMap's `data` as settings, reporting every problem under
/// `configmap.<name>.<key>`.
pub fn parse(name: &str, data: &BTreeMap<String, String>) -> Result<Loaded, ConfigErrors> {
    let prefix = format!("configmap.{name}.");
    let mut pairs = data.clone();
    // In a cluster the certificate lives in Secrets; an empty `tls-dir` (as the
    // generated ConfigMap ships it) means "not set", as everywhere else.
    if pairs.get("tls-source").map(|s| s.trim()) == Some("acme") && pairs.get("tls-dir").is_none_or(|d| d.trim().is_empty()) {
        pairs.insert("tls-dir".into(), SECRETS_AS_DIR.into());
    }
    let (settings, mut errors) = match Settings::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())), &prefix) {
        Ok(s) => (s, Vec::new()),
        Err(errors) => {
            // The TLS group is still checked, so every problem is reported at once.
            let tls = pairs.iter().filter(|(k, _)| TLS_KEYS.iter().any(|t| t.name == k.as_str())).map(|(k, v)| (k.clone(), v.clone()));
            (Settings { tls: tls.collect(), ..Settings::default() }, errors)
        }
    };
    match crate::config::validate(Config { settings, solutions: Vec::new() }) {
        Ok(loaded) if errors.is_empty() => Ok(loaded),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(tls) => {
            let rekey = |e: ConfigError| ConfigError::new(e.key.replacen("settings.", &prefix, 1), e.reason);
            errors.extend(tls.0.into_iter().map(rekey));
            Err(ConfigErrors(errors))
        }
    }
}

/// The note of an `InvalidConfig` Event: every rejected key and why, cut to the API's limit.
pub fn note(errors: &ConfigErrors) -> String {
    let mut note = format!("rejected, the last good configuration keeps serving: {errors}");
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}

/// Follows one ConfigMap.
pub struct Watch {
    /// The ConfigMaps of wakegate's namespace.
    pub api: Api<ConfigMap>,
    /// The ConfigMap's name.
    pub name: String,
    /// For Events.
    pub client: kube::Client,
    /// This replica (`reportingInstance` of Events).
    pub identity: String,
    /// Reload counters.
    pub metrics: Arc<Metrics>,
    /// Receives every good configuration (`None` until the first).
    pub tx: watch::Sender<Option<Arc<Loaded>>>,
}

// === impl Watch ===

impl Watch {
    /// Runs until `shutdown`, surviving API restarts and relists.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut stream = Box::pin(watch_object(self.api.clone(), &self.name).default_backoff());
        let mut last: Option<BTreeMap<String, String>> = None;
        let mut failing = false;
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = crate::server::stopped(&mut shutdown) => return,
            };
            match item {
                Some(Ok(Some(cm))) => {
                    failing = false;
                    let data = cm.data.clone().unwrap_or_default();
                    // A relist delivers the same object again: nothing to do.
                    if last.as_ref() != Some(&data) {
                        self.take(&cm, &data).await;
                        last = Some(data);
                    }
                }
                Some(Ok(None)) => {
                    failing = false;
                    last = None;
                    self.absent();
                }
                Some(Err(e)) if !failing => {
                    failing = true;
                    tracing::warn!(configmap = %self.name, "watching: {e}; the configuration known keeps serving");
                }
                Some(Err(e)) => tracing::debug!(configmap = %self.name, "watching: {e}"),
                None => return,
            }
        }
    }

    fn absent(&self) {
        if self.tx.borrow().is_none() {
            tracing::warn!(configmap = %self.name, "not found: serving with the default settings");
            if let Ok(loaded) = parse(&self.name, &BTreeMap::new()) {
                self.metrics.config_applied();
                self.tx.send_replace(Some(Arc::new(loaded)));
            }
        } else {
            tracing::warn!(configmap = %self.name, "deleted: the last good configuration keeps serving");
            // Nothing refused any more (an edit refused before is gone with it).
            self.metrics.config_applied();
        }
    }

    async fn take(&self, cm: &ConfigMap, data: &BTreeMap<String, String>) {
        match parse(&self.name, data) {
            Ok(loaded) => {
                for key in FLAG_KEYS.iter().filter(|k| data.contains_key(**k)) {
                    tracing::warn!(key, configmap = %self.name, "set by a flag in cluster mode; ignored here");
                }
                let old = self.tx.borrow().clone();
                if let Some(old) = old {
                    self.warn_restart_only(&old, &loaded);
                    self.metrics.reload(true);
                    tracing::info!(configmap = %self.name, "configuration reloaded");
                } else {
                    self.metrics.config_applied();
                }
                self.tx.send_replace(Some(Arc::new(loaded)));
            }
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(key = %e.key, "rejected: {}", e.reason);
                }
                self.metrics.reload(false);
                if self.tx.borrow().is_none() {
                    tracing::error!(configmap = %self.name, "invalid ({} problems); nothing is served until it is fixed", errors.0.len());
                } else {
                    tracing::warn!(configmap = %self.name, "rejected ({} problems); the last good configuration keeps serving", errors.0.len());
                }
                self.publish(cm, &errors).await;
            }
        }
    }

    fn warn_restart_only(&self, old: &Loaded, new: &Loaded) {
        let (a, b) = (&old.config.settings, &new.config.settings);
        let tls = crate::tls::settings::KEYS.iter().filter(|k| **k != "hsts");
        for key in RESTART_KEYS.iter().chain(tls) {
            let changed = match *key {
                "base-domain" => a.base_domain != b.base_domain && new.tls.source != crate::tls::settings::TlsSource::Off,
                k => a.tls.get(k) != b.tls.get(k),
            };
            if changed {
                tracing::warn!(
                    key,
                    "changed: read at start, so it applies after `kubectl -n wakegate rollout restart deploy/wakegate-gateway`"
                );
            }
        }
    }

    /// A Warning Event on the ConfigMap naming every rejected key. A fresh
    /// recorder each time: one reuses its last Event for 6 minutes (same
    /// reason and object), which would repeat an old edit's keys.
    async fn publish(&self, cm: &ConfigMap, errors: &ConfigErrors) {
        let reporter = Reporter { controller: REPORTER.into(), instance: Some(self.identity.clone()) };
        let recorder = Recorder::new(self.client.clone(), reporter);
        let event = Event {
            type_: EventType::Warning,
            reason: REASON_INVALID.into(),
            note: Some(note(errors)),
            action: "Reload".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &cm.object_ref(&())).await {
            tracing::warn!(configmap = %self.name, "cannot record the rejection as an Event: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn good_data_parses_like_the_settings_table() {
        let l = parse("wakegate-config", &data(&[("max-held-requests", "7"), ("base-domain", "aim.example.com")])).unwrap();
        assert_eq!(l.config.settings.solution.max_held_requests.get(), 7);
        assert_eq!(l.config.settings.base_domain, "aim.example.com");
        assert!(parse("wakegate-config", &BTreeMap::new()).is_ok(), "no data: the defaults");
    }

    #[test]
    fn every_problem_is_keyed_by_the_configmap_including_tls() {
        let e = parse("cfg", &data(&[("max-held-requests", "0"), ("idel-timeout", "1m"), ("tls-source", "files")])).unwrap_err();
        let keys = e.keys();
        assert!(keys.contains(&"configmap.cfg.max-held-requests"), "{keys:?}");
        assert!(keys.contains(&"configmap.cfg.idel-timeout"), "{keys:?}");
        assert!(keys.contains(&"configmap.cfg.tls-cert-file"), "{keys:?}");
        assert!(note(&e).contains("configmap.cfg.max-held-requests"));
    }

    #[test]
    fn acme_needs_no_tls_dir_in_a_cluster() {
        let acme = data(&[
            ("tls-source", "acme"),
            ("acme-directory", "https://ca.test/dir"),
            ("acme-dns-provider", "exec"),
            ("acme-exec-command", "/bin/true"),
            ("acme-propagation-nameservers", "192.0.2.53:53"),
        ]);
        assert!(parse("cfg", &acme).is_ok());
    }

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let errors = ConfigErrors((0..100).map(|i| ConfigError::new(format!("configmap.cfg.k{i}"), "é".repeat(20))).collect());
        let n = note(&errors);
        assert!(n.len() <= MAX_NOTE && n.ends_with("..."), "{}", n.len());
    }
}
