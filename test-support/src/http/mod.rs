//! HTTP servers on 127.0.0.1 for tests.
//!
//! * [`TestServer`] (`raw`): a raw `TcpListener` server with full control over status,
//!   headers, Range handling and cutting a body short (what the fetch tests need and a
//!   mock library cannot do).
//! * [`Mock`] (`mock`): a tiny_http server with a handler per request plus injected
//!   failures and delays, the base of the metadata service mocks in [`crate::metadata`].
//! * [`Hostile`] (`hostile`): a raw-TCP server that misbehaves on purpose: an endless
//!   body, a huge Content-Length, a drip-feed, a gzip bomb, redirects.

mod hostile;
mod mock;
mod raw;

pub use hostile::{gzip_bomb, Behaviour, Hostile};
pub use mock::{closed_port_url, Faults, Mock, Req, Resp};
pub use raw::{ranged, Reply, Request, TestServer, UNREACHABLE};

/// The value of header `name` (any case) among `headers`.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A free TCP port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
