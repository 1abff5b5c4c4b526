//! Google Compute Engine metadata server, `computeMetadata/v1`. Every request carries
//! `Metadata-Flavor: Google` (the server refuses requests without it). User data is the
//! instance attribute `user-data`; metadata: hostname, id, zone (and its region),
//! network-interfaces/0/ip, the first access config's external IP, `ssh-keys` and the
//! other instance attributes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::endpoint::Endpoint;
use super::{DataSource, Metadata, Platform, SourceContext, SourceError};

pub(crate) const SOURCE_NAME: &str = "gcp";
const HEADERS: &[(&str, &str)] = &[("Metadata-Flavor", "Google")];

pub(crate) struct GcpSource {
    endpoint: Endpoint,
}

impl GcpSource {
    pub fn new(ctx: &SourceContext) -> Self {
        GcpSource {
            endpoint: Endpoint::new(
                SOURCE_NAME,
                format!("{}/computeMetadata/v1", ctx.endpoint(Platform::Gcp)),
                HEADERS,
                ctx.timeouts,
            ),
        }
    }

    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        self.endpoint.get(path)
    }

    fn text(&self, path: &str) -> Result<Option<String>, SourceError> {
        self.endpoint.text(path)
    }

    fn ip(&self, path: &str) -> Result<Option<IpAddr>, SourceError> {
        self.endpoint.ip(path)
    }
}

impl DataSource for GcpSource {
    fn name(&self) -> &'static str {
        SOURCE_NAME
    }

    fn user_data(&self) -> Result<Option<Vec<u8>>, SourceError> {
        self.endpoint.user_data("instance/attributes/user-data")
    }

    fn metadata(&self) -> Result<Metadata, SourceError> {
        // "projects/123456/zones/europe-west1-b"
        let zone = self
            .text("instance/zone")?
            .map(|z| z.rsplit('/').next().unwrap_or(&z).to_string());
        let region = zone
            .as_ref()
            .and_then(|z| z.rsplit_once('-').map(|(r, _)| r.to_string()));
        let mut attributes = BTreeMap::new();
        let mut keys = Vec::new();
        if let Some(raw) = self.get("instance/attributes/?recursive=true")? {
            let doc: BTreeMap<String, serde_json::Value> =
                serde_json::from_slice(&raw).map_err(|e| {
                    SourceError::format(SOURCE_NAME, format!("instance/attributes: {e}"))
                })?;
            for (k, v) in doc {
                let Some(v) = v.as_str() else { continue };
                match k.as_str() {
                    "user-data" => {}
                    // "user:ssh-ed25519 AAAA… comment" per line
                    "ssh-keys" => {
                        keys.extend(v.lines().filter_map(|l| {
                            l.split_once(':').map(|(_, key)| key.trim().to_string())
                        }))
                    }
                    _ => {
                        attributes.insert(k, v.to_string());
                    }
                }
            }
        }
        Ok(Metadata {
            hostname: self.text("instance/hostname")?,
            instance_id: self.text("instance/id")?,
            local_ipv4: self.ip("instance/network-interfaces/0/ip")?,
            public_ipv4: self.ip("instance/network-interfaces/0/access-configs/0/external-ip")?,
            availability_zone: zone,
            region,
            ssh_authorized_keys: keys,
            attributes,
        })
    }
}
