//! Limits that protect the solutions and the gateway itself: request rates (per
//! client and per solution), open connections per client, and request body
//! size and pace. All are per gateway replica; all come from the live settings.

pub mod body;
pub mod conns;
pub mod rate;

pub use body::{BodyLimit, LimitedBody};
pub use conns::ConnectionLimiter;
pub use rate::{RateLimiter, Verdict};
