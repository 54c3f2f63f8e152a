//! `activity-source = prometheus`: the reaper's reading through Prometheus's
//! query API instead of every gateway replica's `/metrics` — the same gauges,
//! merged by PromQL the way the direct reading merges them (latest request
//! over all replicas, busy work summed), as a KEDA Prometheus scaler would
//! query them.
//!
//! Fail-safe as the direct reading is: Prometheus unreachable or answering an
//! error, or a gateway replica that stopped reporting within the last five
//! minutes (down, unreachable for Prometheus, or replaced by a rollout: its
//! recent requests would be missing), makes the round scale nothing down.

use proto::metrics as names;
use proto::settings::HttpUrl;
use serde_json::Value;

use super::scrape::{self, Activity, ScrapeError};

/// One sample of an instant vector: its labels and value.
type Sample = (serde_json::Map<String, Value>, f64);

/// How far back a replica that stopped reporting is still waited for.
const GONE_WINDOW: &str = "5m";

/// The queries of one reading: (latest request, busy work, vanished replicas,
/// time of the oldest scrape the reading rests on).
fn queries() -> [String; 4] {
    let p = names::PREFIX;
    let last = format!("{p}_{}", names::LAST_REQUEST_TIMESTAMP);
    let busy = [names::IN_FLIGHT, names::HELD, names::OPEN_STREAMS].join("|");
    [
        format!("max by (solution) ({last})"),
        format!("sum by (solution) ({{__name__=~\"{p}_({busy})\"}})"),
        format!("count by (job, instance) (max_over_time({last}[{GONE_WINDOW}]) unless on (job, instance) {last})"),
        format!("min(timestamp({last}))"),
    ]
}

/// Reads every solution's activity through Prometheus at `url`.
pub async fn activity(url: &HttpUrl) -> Result<Activity, ScrapeError> {
    let fail = |reason: String| ScrapeError::Prometheus { url: url.to_string(), reason };
    let [last, busy, gone, as_of] = queries();
    if let Some((labels, _)) = query(url, &gone).await.map_err(fail)?.first() {
        let who = |k: &str| labels.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        return Err(fail(format!(
            "gateway {} (job {}) stopped reporting within the last {GONE_WINDOW}: its latest requests are unknown",
            who("instance"),
            who("job")
        )));
    }
    // Asked first: the samples read next are at least as new.
    let as_of = query(url, &as_of).await.map_err(fail)?.first().map(|(_, t)| *t);
    let mut activity = Activity { as_of, ..Activity::default() };
    for (labels, value) in query(url, &last).await.map_err(fail)? {
        if let Some(s) = labels.get("solution").and_then(Value::as_str) {
            activity.last_request.insert(s.to_string(), value);
        }
    }
    for (labels, value) in query(url, &busy).await.map_err(fail)? {
        if let Some(s) = labels.get("solution").and_then(Value::as_str) {
            activity.busy.insert(s.to_string(), value);
        }
    }
    Ok(activity)
}

/// One instant query: its samples as (labels, value).
async fn query(url: &HttpUrl, promql: &str) -> Result<Vec<Sample>, String> {
    let encoded: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
    let path = format!("{}/api/v1/query?query={encoded}", url.path);
    let (status, body) = scrape::fetch((url.host.as_str(), url.port), &url.authority, &path).await?;
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
        let value = sample["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
        match value {
            Some(v) => out.push((labels, v)),
            None => return Err(format!("unreadable sample {sample}")),
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
        let s = samples(StatusCode::OK, ok).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].0["solution"].as_str(), s[0].1), (Some("nlp"), 1764409990.5));
        assert!(samples(StatusCode::OK, r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#).unwrap().is_empty());

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
    fn queries_name_the_gateway_metrics() {
        let [last, busy, gone, as_of] = queries();
        assert_eq!(as_of, "min(timestamp(wakegate_last_request_timestamp_seconds))");
        assert_eq!(last, "max by (solution) (wakegate_last_request_timestamp_seconds)");
        assert_eq!(busy, r#"sum by (solution) ({__name__=~"wakegate_(in_flight_requests|held_requests|open_streams)"})"#);
        assert!(gone.contains("max_over_time(wakegate_last_request_timestamp_seconds[5m]) unless on (job, instance)"), "{gone}");
    }
}
