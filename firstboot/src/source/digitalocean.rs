//! DigitalOcean metadata service: user data at `/metadata/v1/user-data` (404 or empty:
//! none); metadata from `/metadata/v1.json` (droplet_id, hostname, region, the first
//! public and private IPv4, public_keys, tags).

use std::collections::BTreeMap;

use super::endpoint::Endpoint;
use super::{
    json_document, non_empty_str, DataSource, Metadata, Platform, SourceContext, SourceError,
};

pub(crate) const SOURCE_NAME: &str = "digitalocean";

pub(crate) struct DigitalOceanSource {
    endpoint: Endpoint,
}

impl DigitalOceanSource {
    pub fn new(ctx: &SourceContext) -> Self {
        DigitalOceanSource {
            endpoint: Endpoint::new(
                SOURCE_NAME,
                format!("{}/metadata", ctx.endpoint(Platform::DigitalOcean)),
                &[],
                ctx.timeouts,
            ),
        }
    }
}

impl DataSource for DigitalOceanSource {
    fn name(&self) -> &'static str {
        SOURCE_NAME
    }

    fn user_data(&self) -> Result<Option<Vec<u8>>, SourceError> {
        self.endpoint.user_data("v1/user-data")
    }

    fn metadata(&self) -> Result<Metadata, SourceError> {
        let Some(raw) = self.endpoint.get("v1.json")? else {
            return Ok(Metadata::default());
        };
        let doc = json_document(SOURCE_NAME, "v1.json", &raw)?;
        let s = |p: &str| non_empty_str(doc.pointer(p));
        let mut attributes = BTreeMap::new();
        if let Some(tags) = doc.get("tags").and_then(|v| v.as_array()) {
            for t in tags.iter().filter_map(|t| t.as_str()) {
                attributes.insert(format!("tag:{t}"), String::new());
            }
        }
        Ok(Metadata {
            hostname: s("/hostname"),
            instance_id: doc
                .get("droplet_id")
                .map(|v| v.to_string().trim_matches('"').to_string()),
            local_ipv4: s("/interfaces/private/0/ipv4/ip_address").and_then(|v| v.parse().ok()),
            public_ipv4: s("/interfaces/public/0/ipv4/ip_address").and_then(|v| v.parse().ok()),
            availability_zone: None,
            region: s("/region"),
            ssh_authorized_keys: doc
                .get("public_keys")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(|k| k.trim().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            attributes,
        })
    }
}
