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
