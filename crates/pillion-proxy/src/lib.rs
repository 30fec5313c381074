//! Pillion's data path: listeners, protocol detection, the TCP relay, the HTTP proxy, routing and
//! clusters.
//!
//! A [`Proxy`] is compiled from a validated config once; each accepted connection goes through
//! one pipeline: accept, detect the protocol (on `auto` listeners), then serve HTTP or relay TCP.

mod ascii;
pub mod cluster;
pub mod connect;
pub mod detect;
mod h1_client;
mod h1_server;
pub mod http;
pub mod io;
pub mod metrics;
pub mod pool;
mod server;
pub mod tcp;
mod wake;

pub use self::server::{listen, BindError, BuildError, ListenerInfo, Proxy};
