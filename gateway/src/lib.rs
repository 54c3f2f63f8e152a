//! The wakegate gateway: the edge that routes each subdomain to its solution,
//! holds requests while a cold solution wakes, and exports a metric for every
//! decision. The `wakegate` binary wires it with the scaler (embedded mode).

pub mod access_log;
pub mod admin;
pub mod app;
pub mod body;
pub mod catalog;
pub mod chunk;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod direct;
pub mod forward;
pub mod gateway;
pub mod h1;
pub mod h2streams;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod refusal;
pub mod reload;
pub mod request_id;
pub mod router;
pub mod server;
pub mod solution;
pub mod tls;
pub mod upstream;
pub mod waiting;

pub use body::Body;
pub use gateway::Gateway;
