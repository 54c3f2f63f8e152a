//! Metric names both roles agree on: the gateway exports them, the scaler reads
//! them back from every gateway replica to decide on idle scale-down.

/// Prefix of every wakegate metric.
pub const PREFIX: &str = "wakegate";
/// Unix time of the last request seen for a solution (gauge, `{solution}`).
pub const LAST_REQUEST_TIMESTAMP: &str = "last_request_timestamp_seconds";
/// Requests answered (counter, `{solution,method,code}`).
pub const REQUESTS: &str = "requests";
/// Time to answer a request (histogram, `{solution}`).
pub const REQUEST_DURATION: &str = "request_duration_seconds";
/// Requests being forwarded now (gauge, `{solution}`).
pub const IN_FLIGHT: &str = "in_flight_requests";
/// Requests held while a solution wakes (gauge, `{solution}`).
pub const HELD: &str = "held_requests";
/// Upgraded connections and streams open now (gauge, `{solution}`).
pub const OPEN_STREAMS: &str = "open_streams";
/// Wake-ups by outcome (counter, `{solution,outcome}`).
pub const WAKEUPS: &str = "wakeups";
/// Time from wake request to ready (histogram, `{solution}`).
pub const WAKEUP_DURATION: &str = "wakeup_duration_seconds";
/// Ready replicas or processes (gauge, `{solution}`).
pub const READY_REPLICAS: &str = "ready_replicas";
/// Scale-downs to zero by reason (counter, `{solution,reason}`).
pub const SCALE_DOWNS: &str = "scale_downs";
/// Configuration reloads by outcome (counter, `{outcome}`).
pub const CONFIG_RELOADS: &str = "config_reloads";
/// 1 while the configuration last read is applied, 0 while it is refused (gauge).
pub const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "config_last_reload_successful";
/// Refused requests by reason (counter, `{solution,reason}`).
pub const REJECTED: &str = "rejected_requests";

/// The content type of a metrics page in OpenMetrics.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of a metrics page in the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metrics page in the format a scraper's `Accept` asks for: OpenMetrics
/// if it names it (Prometheus does), else the Prometheus text format.
/// Returns the content type and the page.
pub fn negotiate(accept: &str, openmetrics: String) -> (&'static str, String) {
    if accept.contains("application/openmetrics-text") {
        (OPENMETRICS, openmetrics)
    } else {
        (PROMETHEUS_TEXT, to_prometheus_text(&openmetrics))
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics page, for scrapers
/// that do not ask for OpenMetrics (`promtool check metrics`, older agents;
/// client_golang serves it the same way by default). The samples are the
/// same; what differs is the metadata: a counter's `# TYPE` and `# HELP` name
/// its `_total` sample, an info metric is a gauge named `…_info`, and there
/// is no `# UNIT` and no `# EOF`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut types = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|r| r.split_once(' ')) {
            types.insert(name, kind);
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line.strip_prefix("# HELP ").map(|r| ("# HELP ", r)).or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        let Some((prefix, rest)) = meta else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        let (name, tail) = match types.get(name).copied() {
            Some("counter") if !name.ends_with("_total") => (format!("{name}_total"), tail),
            Some("info") => (format!("{name}_info"), if prefix == "# TYPE " { "gauge" } else { tail }),
            Some("unknown") if prefix == "# TYPE " => (name.to_string(), "untyped"),
            Some("gaugehistogram" | "stateset") if prefix == "# TYPE " => (name.to_string(), "untyped"),
            _ => (name.to_string(), tail),
        };
        out.push_str(prefix);
        out.push_str(&name);
        out.push(' ');
        out.push_str(tail);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::to_prometheus_text;

    #[test]
    fn openmetrics_becomes_the_prometheus_text_format() {
        let om = "# HELP wakegate_requests Requests.\n# TYPE wakegate_requests counter\n\
                  wakegate_requests_total{code=\"200\"} 3\n\
                  # HELP wakegate_build Build.\n# TYPE wakegate_build info\nwakegate_build_info{version=\"1\"} 1\n\
                  # HELP wakegate_wait_seconds Wait.\n# TYPE wakegate_wait_seconds histogram\n# UNIT wakegate_wait_seconds seconds\n\
                  wakegate_wait_seconds_sum 1.5\nwakegate_wait_seconds_count 2\nwakegate_wait_seconds_bucket{le=\"+Inf\"} 2\n\
                  # HELP wakegate_held Held.\n# TYPE wakegate_held gauge\nwakegate_held 0\n# EOF\n";
        let want = "# HELP wakegate_requests_total Requests.\n# TYPE wakegate_requests_total counter\n\
                    wakegate_requests_total{code=\"200\"} 3\n\
                    # HELP wakegate_build_info Build.\n# TYPE wakegate_build_info gauge\nwakegate_build_info{version=\"1\"} 1\n\
                    # HELP wakegate_wait_seconds Wait.\n# TYPE wakegate_wait_seconds histogram\n\
                    wakegate_wait_seconds_sum 1.5\nwakegate_wait_seconds_count 2\nwakegate_wait_seconds_bucket{le=\"+Inf\"} 2\n\
                    # HELP wakegate_held Held.\n# TYPE wakegate_held gauge\nwakegate_held 0\n";
        assert_eq!(to_prometheus_text(om), want);
    }
}
