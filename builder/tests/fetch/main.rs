//! The fetcher: against a real HTTP server on 127.0.0.1 ([`http`]) and with local
//! sources, offline mode, the cache location and archive members ([`local`]). What it
//! logs is tested in its own binary (`fetch_logs`).

mod http;
mod local;
mod support;
