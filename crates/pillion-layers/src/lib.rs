//! Pillion's tower middleware, one module per concern. Each is built once when the config loads
//! and costs nothing on a route or cluster that does not use it.

/// A boxed error, shared by every layer (as in linkerd and tower's guide).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub mod error;

// Request layers.
pub mod fault;
pub mod limit;
pub mod ratelimit;
pub mod retry;
pub mod timeout;

// Endpoint selection and health.
pub mod balance;
pub mod health;
pub mod outlier;
