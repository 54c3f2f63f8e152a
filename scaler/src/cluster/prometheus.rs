//! `activity-source = prometheus`: the reaper's reading through Prometheus's
//! query API instead of every gateway replica's `/metrics` — the same gauges,
//! merged by PromQL the way the direct reading merges them (latest request
//! over all replicas, busy work summed), as a KEDA Prometheus scaler would
//! query them.
//!
//! Fail-safe as the direct reading is. The round scales nothing down when
//! Prometheus cannot be asked or answers an error; when it has figures from
//! fewer gateways than are ready (a new replica not scraped yet); when a
//! gateway that reported within the last five minutes no longer does (down,
//! unreachable for Prometheus, replaced by a rollout: its recent requests
//! would be missing); and when it has no figures at all. One reading asks one
//! Prometheus server (the name is resolved once): replicas behind a Service
//! may hold different samples.

use std::net::SocketAddr;

use proto::metrics as names;
use proto::settings::HttpUrl;
use serde_json::Value;

use super::scrape::{self, Activity, ScrapeError};

/// How far back a replica that stopped reporting is still waited for.
const GONE_WINDOW: &str = "5m";

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    labels: serde_json::Map<String, Value>,
    /// The query's evaluation time (Prometheus's clock), Unix seconds.
    at: f64,
    value: f64,
}

/// The queries of one reading, `selector` (label matchers, may be empty)
/// scoping every series to this installation's gateways.
struct Queries {
    /// Time of the oldest scrape the reading rests on.
    as_of: String,
    /// Latest request per solution, over all gateways.
    last: String,
    /// In flight + held + open streams per solution, summed.
    busy: String,
    /// How many gateways Prometheus has figures from.
    reporting: String,
    /// Gateways that reported within [`GONE_WINDOW`] and no longer do.
    gone: String,
}

impl Queries {
    fn new(selector: &str) -> Queries {
        let p = names::PREFIX;
        let scoped = |matchers: String| {
            let all: Vec<&str> = [matchers.as_str(), selector].into_iter().filter(|m| !m.is_empty()).collect();
            format!("{{{}}}", all.join(", "))
        };
        let last = scoped(format!("__name__=\"{p}_{}\"", names::LAST_REQUEST_TIMESTAMP));
        let busy = scoped(format!("__name__=~\"{p}_({})\"", [names::IN_FLIGHT, names::HELD, names::OPEN_STREAMS].join("|")));
        Queries {
            as_of: format!("min(timestamp({last}))"),
            last: format!("max by (solution) ({last})"),
            busy: format!("sum by (solution) ({busy})"),
            reporting: format!("count(count by (job, instance) ({last}))"),
            gone: format!("count by (job, instance) (max_over_time({last}[{GONE_WINDOW}]) unless on (job, instance) {last})"),
        }
    }
}

/// Reads every solution's activity through Prometheus at `url`, expecting
/// figures from `gateways` ready gateway replicas.
pub async fn activity(url: &HttpUrl, selector: &str, gateways: usize) -> Result<Activity, ScrapeError> {
    let fail = |reason: String| ScrapeError::Prometheus { url: url.to_string(), reason };
    let server = resolve(url).await.map_err(fail)?;
    let q = Queries::new(selector);
    // Asked first: the samples read next are at least as new.
    let Some(oldest) = query(server, url, &q.as_of).await.map_err(fail)?.into_iter().next() else {
        return Err(fail("no wakegate figures at all: is it scraping the gateways' admin port?".into()));
    };
    let mut activity = Activity { as_of: Some(oldest.value), evaluated: Some(oldest.at), ..Activity::default() };
    for s in query(server, url, &q.last).await.map_err(fail)? {
        if let Some(solution) = s.labels.get("solution").and_then(Value::as_str) {
            activity.last_request.insert(solution.to_string(), s.value);
        }
    }
    for s in query(server, url, &q.busy).await.map_err(fail)? {
        if let Some(solution) = s.labels.get("solution").and_then(Value::as_str) {
            activity.busy.insert(solution.to_string(), s.value);
        }
    }
    // Asked last: a gateway that went away while the figures were read is seen.
    let reporting = query(server, url, &q.reporting).await.map_err(fail)?.first().map_or(0, |s| s.value as usize);
    if reporting < gateways {
        return Err(fail(format!("it has figures from {reporting} gateway(s), {gateways} are ready: not all are scraped yet")));
    }
    if let Some(s) = query(server, url, &q.gone).await.map_err(fail)?.first() {
        let who = |k: &str| s.labels.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        return Err(fail(format!(
            "gateway {} (job {}) stopped reporting within the last {GONE_WINDOW}: its latest requests are unknown",
            who("instance"),
            who("job")
        )));
    }
    Ok(activity)
}

/// One address of `url`'s host, so that every query of a reading goes to the same server.
async fn resolve(url: &HttpUrl) -> Result<SocketAddr, String> {
    let lookup = tokio::net::lookup_host((url.host.as_str(), url.port));
    let mut addrs = tokio::time::timeout(scrape::SCRAPE_TIMEOUT, lookup)
        .await
        .map_err(|_| "name lookup timed out".to_string())?
        .map_err(|e| format!("name lookup: {e}"))?;
    addrs.next().ok_or_else(|| format!("{} has no address", url.host))
}

/// One instant query.
async fn query(server: SocketAddr, url: &HttpUrl, promql: &str) -> Result<Vec<Sample>, String> {
    let encoded: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
    let path = format!("{}/api/v1/query?query={encoded}", url.path);
    let (status, body) = scrape::fetch(server, &url.authority, &path).await?;
    samples(status, &body).map_err(|e| format!("{e} (query {promql})"))
}

/// The samples of an instant-vector answer, or why there are none.
fn samples(status: http::StatusCode, body: &str) -> Result<Vec<Sample>, String> {
    let json: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(_) if !status.is_success() => return Err(format!("status {status}")),
        Err(e) => return Err(format!("not a Prometheus answer: {e}")),
    };
    if json["status"] != "success" {
        let error = json["error"].as_str().unwrap_or("no reason given");
        return Err(format!("status {status}: {error}"));
    }
    if json["data"]["resultType"] != "vector" {
        return Err(format!("expected a vector, got {}", json["data"]["resultType"]));
    }
    let mut out = Vec::new();
    for sample in json["data"]["result"].as_array().into_iter().flatten() {
        let labels = sample["metric"].as_object().cloned().unwrap_or_default();
        // `value` is [evaluation time, "number"]; NaN and ±Inf are spelled out.
        let at = sample["value"][0].as_f64();
        let value = sample["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
        match (at, value) {
            (Some(at), Some(value)) => out.push(Sample { labels, at, value }),
            _ => return Err(format!("unreadable sample {sample}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn reads_a_vector_and_refuses_the_rest() {
        let ok = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"solution":"nlp"},"value":[1764410000.123,"1764409990.5"]},
            {"metric":{"solution":"vision"},"value":[1764410000.123,"0"]}]}}"#;
        let s = samples(StatusCode::OK, ok).expect("a vector answer");
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].labels["solution"].as_str(), s[0].at, s[0].value), (Some("nlp"), 1764410000.123, 1764409990.5));
        assert!(
            samples(StatusCode::OK, r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#)
                .expect("an empty vector answer")
                .is_empty()
        );

        let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#;
        assert_eq!(samples(StatusCode::BAD_REQUEST, bad).unwrap_err(), "status 400 Bad Request: parse error at char 4");
        assert_eq!(samples(StatusCode::BAD_GATEWAY, "<html>").unwrap_err(), "status 502 Bad Gateway");
        assert!(samples(StatusCode::OK, "<html>").unwrap_err().starts_with("not a Prometheus answer"));
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(samples(StatusCode::OK, matrix).unwrap_err().contains("expected a vector"));
        let nan = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        assert!(samples(StatusCode::OK, nan).unwrap_err().starts_with("unreadable sample"));
    }

    #[test]
    fn queries_name_the_gateway_metrics_in_scope() {
        let q = Queries::new("");
        let last = r#"{__name__="wakegate_last_request_timestamp_seconds"}"#;
        assert_eq!(q.as_of, format!("min(timestamp({last}))"));
        assert_eq!(q.last, format!("max by (solution) ({last})"));
        assert_eq!(q.busy, r#"sum by (solution) ({__name__=~"wakegate_(in_flight_requests|held_requests|open_streams)"})"#);
        assert_eq!(q.reporting, format!("count(count by (job, instance) ({last}))"));
        assert_eq!(q.gone, format!("count by (job, instance) (max_over_time({last}[5m]) unless on (job, instance) {last})"));
        let scoped = Queries::new(r#"namespace="wakegate""#);
        assert_eq!(scoped.last, r#"max by (solution) ({__name__="wakegate_last_request_timestamp_seconds", namespace="wakegate"})"#);
        assert!(scoped.busy.ends_with(r#"open_streams)", namespace="wakegate"})"#), "{}", scoped.busy);
    }
}
