//! The mutual-TLS client for the cluster's own services.

use std::time::Duration;

use reqwest::blocking::Client;

/// Which part of a [`tls_client`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the CA certificate")]
    Ca(#[source] reqwest::Error),
    #[error("the client identity")]
    Identity(#[source] reqwest::Error),
    #[error("building the HTTPS client")]
    Build(#[source] reqwest::Error),
}

/// An HTTPS client that trusts only `ca_pem` (no built-in roots, no proxy), optionally
/// authenticating with `identity_pem` (certificate and key), with `timeout` per request
/// (connecting: at most 3 s of it).
pub fn tls_client(
    ca_pem: &str,
    identity_pem: Option<&str>,
    timeout: Duration,
) -> Result<Client, TlsError> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(TlsError::Ca)?;
    let mut b = Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .connect_timeout(timeout.min(Duration::from_secs(3)))
        .timeout(timeout)
        .no_proxy();
    if let Some(id) = identity_pem {
        b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).map_err(TlsError::Identity)?);
    }
    b.build().map_err(TlsError::Build)
}
