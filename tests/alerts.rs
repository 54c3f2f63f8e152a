//! deploy/base/prometheusrule.yaml, evaluated by Prometheus's own rule
//! engine (`promtool`, Debian's prometheus package): the rules load, and each
//! alert fires on the series wakegate exports when it should and stays quiet
//! when it should not. That every metric the rules name is one the gateway
//! and the scaler export is checked in tests/cluster.rs, against running ones.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The PrometheusRule's `spec` (its `groups`), as a plain Prometheus rule file;
/// with `annotations: false` without them (promtool's unit tests compare
/// annotations verbatim; `check rules` has checked their templates).
fn rule_file(dir: &Path, annotations: bool) -> PathBuf {
    let text = std::fs::read_to_string(root().join("deploy/base/prometheusrule.yaml")).expect("deploy/base/prometheusrule.yaml");
    let rule: Value = serde_yaml_ng::from_str(&text).expect("the PrometheusRule is YAML");
    assert_eq!(rule["kind"], Value::from("PrometheusRule"));
    let mut spec = rule["spec"].clone();
    if !annotations {
        for group in spec["groups"].as_sequence_mut().expect("spec.groups is a list") {
            for r in group["rules"].as_sequence_mut().expect("a group's rules are a list") {
                r.as_mapping_mut().expect("a rule is a mapping").remove("annotations");
            }
        }
    }
    let path = dir.join(if annotations { "rules.yaml" } else { "rules-bare.yaml" });
    std::fs::write(&path, serde_yaml_ng::to_string(&spec).expect("the rules as YAML")).expect("the rule file");
    path
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool").args(args).current_dir(dir).output().expect("promtool (scripts/install-deps test)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alert_rules_load_in_prometheus() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let rules = rule_file(dir.path(), true);
    let out = promtool(&["check", "rules", rules.to_str().expect("a UTF-8 path")], dir.path());
    assert!(out.contains("SUCCESS: 12 rules found"), "{out}");
}

/// Series as the gateway and scaler export them, labelled as the
/// ServiceMonitor labels them; for every alert: quiet before, firing after,
/// and quiet for what must not fire.
const CASES: &str = r#"
rule_files: [rules-bare.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{namespace="wakegate", role="gateway", pod="gw-0"}'
        values: '1 0x20'
      - series: 'up{namespace="wakegate", role="gateway", pod="gw-1"}'
        values: '1x20'
      - series: 'up{namespace="wakegate", role="scaler", pod="scaler-0"}'
        values: '1x20'
      - series: 'up{namespace="monitoring", role="gateway", pod="other"}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 4m
        alertname: WakegateTargetDown
      - eval_time: 10m
        alertname: WakegateTargetDown
        exp_alerts:
          - exp_labels: {severity: warning, namespace: wakegate, role: gateway, pod: gw-0}
      # One gateway and the scaler are up.
      - eval_time: 10m
        alertname: WakegateGatewayAbsent
      - eval_time: 15m
        alertname: WakegateScalerAbsent

  # Every gateway of this installation down (another namespace's is up), no
  # scaler scraped at all.
  - interval: 1m
    input_series:
      - series: 'up{namespace="wakegate", role="gateway", pod="gw-0"}'
        values: '1x5 0x20'
      - series: 'up{namespace="monitoring", role="gateway", pod="other"}'
        values: '1x25'
    alert_rule_test:
      - eval_time: 8m
        alertname: WakegateGatewayAbsent
      - eval_time: 15m
        alertname: WakegateGatewayAbsent
        exp_alerts:
          - exp_labels: {severity: critical, namespace: wakegate}
      - eval_time: 8m
        alertname: WakegateScalerAbsent
      - eval_time: 15m
        alertname: WakegateScalerAbsent
        exp_alerts:
          - exp_labels: {severity: warning, namespace: wakegate}

  - interval: 1m
    input_series:
      - series: 'wakegate_config_last_reload_successful{namespace="wakegate", pod="gw-0"}'
        values: '1 1 0x20'
      - series: 'wakegate_config_last_reload_successful{namespace="wakegate", pod="gw-1"}'
        values: '1x22'
    alert_rule_test:
      - eval_time: 5m
        alertname: WakegateConfigRefused
      - eval_time: 10m
        alertname: WakegateConfigRefused
        exp_alerts:
          - exp_labels: {severity: warning, namespace: wakegate, pod: gw-0}

  # Registered at 0 when the gateway starts.
  - interval: 1m
    input_series:
      - series: 'wakegate_access_log_dropped_lines_total{namespace="wakegate", pod="gw-0"}'
        values: '0 0 0 120x30'
      - series: 'wakegate_access_log_dropped_lines_total{namespace="wakegate", pod="gw-1"}'
        values: '0x33'
    alert_rule_test:
      - eval_time: 2m
        alertname: WakegateAccessLogLinesDropped
      - eval_time: 5m
        alertname: WakegateAccessLogLinesDropped
        exp_alerts:
          - exp_labels: {severity: warning, namespace: wakegate, pod: gw-0}
      - eval_time: 25m
        alertname: WakegateAccessLogLinesDropped

  # The gateway makes these series at 0 with the solution (gateway/src/metrics.rs).
  - interval: 1m
    input_series:
      - series: 'wakegate_wakeups_total{namespace="wakegate", pod="gw-0", solution="nlp", outcome="timeout"}'
        values: '0 0 0 1x60'
      - series: 'wakegate_wakeups_total{namespace="wakegate", pod="gw-0", solution="nlp", outcome="ready"}'
        values: '0+1x63'
      - series: 'wakegate_wakeups_total{namespace="wakegate", pod="gw-0", solution="parts", outcome="ready"}'
        values: '0+1x63'
      - series: 'wakegate_wakeups_total{namespace="wakegate", pod="gw-0", solution="parts", outcome="failed"}'
        values: '0x63'
    alert_rule_test:
      - eval_time: 2m
        alertname: WakegateWakeUpsFailing
      - eval_time: 10m
        alertname: WakegateWakeUpsFailing
        exp_alerts:
          - exp_labels: {severity: warning, namespace: wakegate, solution: nlp}
      - eval_time: 50m
        alertname: WakegateWakeUpsFailing

  - interval: 1m
    input_series:
      - series: 'wakegate_rejected_requests_total{namespace="wakegate", pod="gw-1", solution="nlp", reason="hold_full"}'
        values: '0 0 5x60'
      - series: 'wakegate_rejected_requests_total{namespace="wakegate", pod="gw-1", solution="nlp", reason="hold_timeout"}'
        values: '0x62'
      - series: 'wakegate_rejected_requests_total{namespace="wakegate", pod="gw-1", solution="nlp", reason="rate_limited"}'
        values: '0+10x62'
    alert_rule_test:
      - eval_time: 1m
        alertname: WakegateHeldRequestsRefused
      - eval_time: 5m
        alertname: WakegateHeldRequestsRefused
        exp_alerts:
          - exp_labels: {severity: warning, namespace: wakegate, solution: nlp, reason: hold_full}
      - eval_time: 45m
        alertname: WakegateHeldRequestsRefused

  # scaler-0 leads and skips every round; from 60m scaler-1 leads and
  # completes them (the scaler makes both series at 0).
  - interval: 1m
    input_series:
      - series: 'wakegate_reaper_rounds_total{namespace="wakegate", pod="scaler-0", outcome="skipped"}'
        values: '0+2x60 120x60'
      - series: 'wakegate_reaper_rounds_total{namespace="wakegate", pod="scaler-0", outcome="done"}'
        values: '0x120'
      - series: 'wakegate_reaper_rounds_total{namespace="wakegate", pod="scaler-1", outcome="skipped"}'
        values: '0x120'
      - series: 'wakegate_reaper_rounds_total{namespace="wakegate", pod="scaler-1", outcome="done"}'
        values: '0x60 0+2x60'
    alert_rule_test:
      - eval_time: 10m
        alertname: WakegateIdleScaleDownStalled
      - eval_time: 20m
        alertname: WakegateIdleScaleDownStalled
        exp_alerts:
          - exp_labels: {severity: warning, namespace: wakegate}
      - eval_time: 70m
        alertname: WakegateIdleScaleDownStalled

  - interval: 1m
    input_series:
      - series: 'wakegate_scaler_leader{namespace="wakegate", pod="scaler-0"}'
        values: '1 0x30'
      - series: 'wakegate_scaler_leader{namespace="wakegate", pod="scaler-1"}'
        values: '0x20 1x10'
    alert_rule_test:
      - eval_time: 8m
        alertname: WakegateNoScalerLeader
      - eval_time: 15m
        alertname: WakegateNoScalerLeader
        exp_alerts:
          - exp_labels: {severity: warning, namespace: wakegate}
      - eval_time: 25m
        alertname: WakegateNoScalerLeader

  # The renewer makes every outcome at 0. Namespace wakegate: orders fail
  # from 2m, none succeeds, no certificate yet. staging: an order succeeds at
  # 20m after failing. lab: only "locked" (another replica orders). prod: a
  # certificate is current (renewal planned ahead) and one order failed on a
  # passing hiccup.
  - interval: 1m
    input_series:
      - series: 'wakegate_acme_orders_total{namespace="wakegate", pod="gw-0", outcome="dns"}'
        values: '0 0 1+1x10 11x500'
      - series: 'wakegate_acme_orders_total{namespace="wakegate", pod="gw-0", outcome="success"}'
        values: '0x512'
      - series: 'wakegate_acme_orders_total{namespace="staging", pod="gw-0", outcome="network"}'
        values: '0 0 1+1x10 11x500'
      - series: 'wakegate_acme_orders_total{namespace="staging", pod="gw-0", outcome="success"}'
        values: '0x19 1x493'
      - series: 'wakegate_acme_orders_total{namespace="lab", pod="gw-0", outcome="locked"}'
        values: '0+1x512'
      - series: 'wakegate_acme_orders_total{namespace="lab", pod="gw-0", outcome="success"}'
        values: '0x512'
      - series: 'wakegate_acme_orders_total{namespace="prod", pod="gw-0", outcome="store"}'
        values: '0 0 1x510'
      - series: 'wakegate_acme_orders_total{namespace="prod", pod="gw-0", outcome="success"}'
        values: '0x512'
      - series: 'wakegate_certificate_renewal_timestamp_seconds{namespace="prod", pod="gw-0", name="aim.example.com"}'
        values: '5000000x512'
    alert_rule_test:
      - eval_time: 30m
        alertname: WakegateAcmeOrdersFailing
      - eval_time: 70m
        alertname: WakegateAcmeOrdersFailing
        exp_alerts:
          - exp_labels: {severity: warning, namespace: wakegate}
      - eval_time: 500m
        alertname: WakegateAcmeOrdersFailing

  # ACME, lifetime 43,200 s (12 h): valid from -28,200 s, renewal planned at
  # 600 s (two thirds in), expiry at 15,000 s. Overdue after a quarter of the
  # 4 h margin (t > 4,200 s) for 1 h; critical with a sixth of the lifetime
  # left (t > 7,800 s) for 1 h. Replica gw-1 still serves an older
  # certificate (expiry 9,000 s): critical for it alone first.
  - interval: 1m
    input_series:
      - series: 'wakegate_certificate_renewal_timestamp_seconds{namespace="wakegate", pod="gw-0", name="aim.example.com"}'
        values: '600x300'
      - series: 'wakegate_certificate_expiry_timestamp_seconds{namespace="wakegate", pod="gw-0", name="aim.example.com"}'
        values: '15000x300'
      - series: 'wakegate_certificate_not_before_timestamp_seconds{namespace="wakegate", pod="gw-0", name="aim.example.com"}'
        values: '-28200x300'
      - series: 'wakegate_certificate_expiry_timestamp_seconds{namespace="wakegate", pod="gw-1", name="aim.example.com"}'
        values: '9000x300'
      - series: 'wakegate_certificate_not_before_timestamp_seconds{namespace="wakegate", pod="gw-1", name="aim.example.com"}'
        values: '-34200x300'
    alert_rule_test:
      - eval_time: 125m
        alertname: WakegateCertificateRenewalOverdue
      - eval_time: 135m
        alertname: WakegateCertificateRenewalOverdue
        exp_alerts:
          - exp_labels: {severity: warning, namespace: wakegate, name: aim.example.com}
      - eval_time: 85m
        alertname: WakegateCertificateExpiresSoon
      - eval_time: 95m
        alertname: WakegateCertificateExpiresSoon
        exp_alerts:
          - exp_labels: {severity: critical, namespace: wakegate, name: aim.example.com, pod: gw-1}
      - eval_time: 195m
        alertname: WakegateCertificateExpiresSoon
        exp_alerts:
          - exp_labels: {severity: critical, namespace: wakegate, name: aim.example.com, pod: gw-0}
          - exp_labels: {severity: critical, namespace: wakegate, name: aim.example.com, pod: gw-1}

  # The same, renewed at last at 150m: the next plan is far ahead, both end.
  - interval: 1m
    input_series:
      - series: 'wakegate_certificate_renewal_timestamp_seconds{namespace="wakegate", pod="gw-0", name="aim.example.com"}'
        values: '600x150 50000x100'
      - series: 'wakegate_certificate_expiry_timestamp_seconds{namespace="wakegate", pod="gw-0", name="aim.example.com"}'
        values: '15000x150 80000x100'
      - series: 'wakegate_certificate_not_before_timestamp_seconds{namespace="wakegate", pod="gw-0", name="aim.example.com"}'
        values: '-28200x150 6000x100'
    alert_rule_test:
      - eval_time: 140m
        alertname: WakegateCertificateRenewalOverdue
        exp_alerts:
          - exp_labels: {severity: warning, namespace: wakegate, name: aim.example.com}
      - eval_time: 200m
        alertname: WakegateCertificateRenewalOverdue
      - eval_time: 200m
        alertname: WakegateCertificateExpiresSoon
"#;

/// The same over weeks, evaluated hourly (every minute would take promtool half a minute).
const LONG_CASES: &str = r#"
rule_files: [rules-bare.yaml]
evaluation_interval: 1h
tests:
  # Orders failing at the longest backoff, 6 h apart: the 7 h window keeps
  # the alert firing between them.
  - interval: 1h
    input_series:
      - series: 'wakegate_acme_orders_total{namespace="wakegate", pod="gw-0", outcome="dns"}'
        values: '0 1 1 2 2 2 2 2 2 3 3 3 3 3 3 4 4 4 4 4 4 5 5 5 5 5 5 6 6 6 6 6 6 7 7 7'
      - series: 'wakegate_acme_orders_total{namespace="wakegate", pod="gw-0", outcome="success"}'
        values: '0x35'
    alert_rule_test:
      - eval_time: 8h
        alertname: WakegateAcmeOrdersFailing
        exp_alerts:
          - exp_labels: {severity: warning, namespace: wakegate}
      - eval_time: 20h
        alertname: WakegateAcmeOrdersFailing
        exp_alerts:
          - exp_labels: {severity: warning, namespace: wakegate}
      - eval_time: 32h
        alertname: WakegateAcmeOrdersFailing
        exp_alerts:
          - exp_labels: {severity: warning, namespace: wakegate}

  # tls-source files, a 30-day certificate: critical with 5 days left (and
  # for 1 h); the files replaced at 650 h end it.
  - interval: 1h
    input_series:
      - series: 'wakegate_certificate_expiry_timestamp_seconds{namespace="wakegate", pod="gw-0", name="aim.example.com"}'
        values: '2592000x649 9000000x100'
      - series: 'wakegate_certificate_not_before_timestamp_seconds{namespace="wakegate", pod="gw-0", name="aim.example.com"}'
        values: '0x649 2340000x100'
    alert_rule_test:
      - eval_time: 600h
        alertname: WakegateCertificateExpiresSoon
      - eval_time: 603h
        alertname: WakegateCertificateExpiresSoon
        exp_alerts:
          - exp_labels: {severity: critical, namespace: wakegate, name: aim.example.com, pod: gw-0}
      - eval_time: 660h
        alertname: WakegateCertificateExpiresSoon
      - eval_time: 603h
        alertname: WakegateCertificateRenewalOverdue

  # A 6-day certificate: quiet for its first five days (a fixed 7-day
  # threshold would fire from its first hour).
  - interval: 1h
    input_series:
      - series: 'wakegate_certificate_expiry_timestamp_seconds{namespace="wakegate", pod="gw-0", name="aim.example.com"}'
        values: '518400x200'
      - series: 'wakegate_certificate_not_before_timestamp_seconds{namespace="wakegate", pod="gw-0", name="aim.example.com"}'
        values: '0x200'
    alert_rule_test:
      - eval_time: 2h
        alertname: WakegateCertificateExpiresSoon
      - eval_time: 119h
        alertname: WakegateCertificateExpiresSoon
      - eval_time: 122h
        alertname: WakegateCertificateExpiresSoon
        exp_alerts:
          - exp_labels: {severity: critical, namespace: wakegate, name: aim.example.com, pod: gw-0}
"#;

/// A year, evaluated daily.
const YEAR_CASES: &str = r#"
rule_files: [rules-bare.yaml]
evaluation_interval: 1d
tests:
  # A 1-year certificate (tls-source files): critical 14 days before its
  # expiry, not a sixth of a year (61 days) before.
  - interval: 1d
    input_series:
      - series: 'wakegate_certificate_expiry_timestamp_seconds{namespace="wakegate", pod="gw-0", name="aim.example.com"}'
        values: '31536000x370'
      - series: 'wakegate_certificate_not_before_timestamp_seconds{namespace="wakegate", pod="gw-0", name="aim.example.com"}'
        values: '0x370'
    alert_rule_test:
      - eval_time: 310d
        alertname: WakegateCertificateExpiresSoon
      - eval_time: 350d
        alertname: WakegateCertificateExpiresSoon
      - eval_time: 355d
        alertname: WakegateCertificateExpiresSoon
        exp_alerts:
          - exp_labels: {severity: critical, namespace: wakegate, name: aim.example.com, pod: gw-0}
"#;

#[test]
fn each_alert_fires_when_it_should_and_only_then() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    rule_file(dir.path(), false);
    std::fs::write(dir.path().join("cases.yaml"), CASES).expect("a cases file");
    std::fs::write(dir.path().join("long-cases.yaml"), LONG_CASES).expect("a cases file");
    std::fs::write(dir.path().join("year-cases.yaml"), YEAR_CASES).expect("a cases file");
    let out = promtool(&["test", "rules", "cases.yaml", "long-cases.yaml", "year-cases.yaml"], dir.path());
    assert_eq!(out.matches("SUCCESS").count(), 3, "{out}");
}
