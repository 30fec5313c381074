//! Pillion's TLS: rustls server and client configs, SPIFFE identities, certificate reload and
//! authorization by identity.
//!
//! - [`ServerTls`] terminates mutual TLS on a listener and reports the peer's identity.
//! - [`ClientTls`] originates TLS from a cluster, checking the server's SPIFFE identity, and
//!   [`TlsConnector`] plugs it into the connection pools (a tower `Service<Uri>`).
//! - [`authz::Policy`] decides per request (or per TCP connection) from the peer identity.
//! - [`cert`] is the `pillion cert` subcommand that makes a CA and workload certificates.
//!
//! Every certificate, key and CA file is polled for changes and reloaded without dropping
//! connections; see [`reload`](crate::reload) for how.
//!
//! The crypto provider is rustls' `ring` provider; only TLS 1.2 and 1.3 are enabled.

pub mod authz;
pub mod cert;
mod client;
mod connector;
mod error;
mod identity;
mod material;
mod metrics;
mod reload;
mod server;

pub use self::client::ClientTls;
pub use self::connector::{MaybeTls, TlsConnector};
pub use self::error::{
    find_peer_alert, find_tls_error, HandshakeFailure, IdentityMismatch, TlsError,
};
pub use self::metrics::TlsMetrics;
pub use self::server::{PeerInfo, ServerTls};

use rustls::crypto::CryptoProvider;
use std::sync::{Arc, OnceLock};

/// The protocol versions Pillion speaks: TLS 1.3 first, then 1.2. Never 1.0 or 1.1.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The ALPN protocols a listener offers, in order of preference.
pub const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Whether the first bytes of a connection look like a TLS ClientHello: a handshake record
/// (type 0x16) with a record version 3.x (0x0300 to 0x0304). Needs at least 3 bytes; with 6 or
/// more the handshake message type must also be ClientHello (1).
pub fn is_client_hello(first_bytes: &[u8]) -> bool {
    match first_bytes {
        [0x16, 0x03, minor, rest @ ..] if *minor <= 0x04 => match rest {
            [_len_hi, _len_lo, msg_type, ..] => *msg_type == 0x01,
            _ => true,
        },
        _ => false,
    }
}

/// The crypto provider every config is built with (rustls' `ring` provider).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::is_client_hello;

    #[test]
    fn client_hello_detection() {
        assert!(is_client_hello(&[0x16, 0x03, 0x01]));
        assert!(is_client_hello(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]));
        assert!(is_client_hello(&[0x16, 0x03, 0x03, 0x00, 0x10]));
        assert!(!is_client_hello(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x02]));
        assert!(!is_client_hello(&[0x16, 0x03, 0x05]));
        assert!(!is_client_hello(&[0x16, 0x02, 0x00]));
        assert!(!is_client_hello(b"GET / HTTP/1.1\r\n"));
        assert!(!is_client_hello(b"PRI * HTTP/2.0\r\n"));
        assert!(!is_client_hello(&[0x16, 0x03]));
        assert!(!is_client_hello(&[]));
    }
}
