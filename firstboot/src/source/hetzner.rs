//! Hetzner Cloud metadata service: user data at `/hetzner/v1/userdata` (empty: none);
//! metadata from `/hetzner/v1/metadata` (YAML: hostname, instance-id, public-ipv4,
//! availability-zone, region, public-keys) and `/hetzner/v1/metadata/private-networks`
//! (the first private network's `ip` is the local IPv4).

use std::collections::BTreeMap;

use super::endpoint::Endpoint;
use super::{DataSource, Metadata, Platform, SourceContext, SourceError};

pub(crate) const SOURCE_NAME: &str = "hetzner";

pub(crate) struct HetznerSource {
    endpoint: Endpoint,
}

impl HetznerSource {
    pub fn new(ctx: &SourceContext) -> Self {
        HetznerSource {
            endpoint: Endpoint::new(
                SOURCE_NAME,
                format!("{}/hetzner/v1", ctx.endpoint(Platform::Hetzner)),
                &[],
                ctx.timeouts,
            ),
        }
    }

    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        self.endpoint.get(path)
    }
}

fn yaml_str(v: &yaml_serde::Value) -> Option<String> {
    match v {
        yaml_serde::Value::String(s) if !s.is_empty() => Some(s.clone()),
        yaml_serde::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl DataSource for HetznerSource {
    fn name(&self) -> &'static str {
        SOURCE_NAME
    }

    fn user_data(&self) -> Result<Option<Vec<u8>>, SourceError> {
        Ok(self
            .get("userdata")?
            .filter(|d| !d.iter().all(|b| b.is_ascii_whitespace())))
    }

    fn metadata(&self) -> Result<Metadata, SourceError> {
        let Some(raw) = self.get("metadata")? else {
            return Ok(Metadata::default());
        };
        let doc: BTreeMap<String, yaml_serde::Value> = yaml_serde::from_slice(&raw)
            .map_err(|e| SourceError::format(SOURCE_NAME, format!("metadata: {e}")))?;
        let s = |k: &str| doc.get(k).and_then(yaml_str);
        let mut local_ipv4 = s("local-ipv4").and_then(|v| v.parse().ok());
        if local_ipv4.is_none() {
            if let Some(raw) = self.get("metadata/private-networks")? {
                let nets: Vec<BTreeMap<String, yaml_serde::Value>> = yaml_serde::from_slice(&raw)
                    .map_err(|e| {
                    SourceError::format(SOURCE_NAME, format!("private-networks: {e}"))
                })?;
                local_ipv4 = nets
                    .first()
                    .and_then(|n| n.get("ip"))
                    .and_then(yaml_str)
                    .and_then(|v| v.parse().ok());
            }
        }
        let keys = doc
            .get("public-keys")
            .and_then(|v| v.as_sequence())
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str().map(|k| k.trim().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Metadata {
            hostname: s("hostname"),
            instance_id: s("instance-id"),
            local_ipv4,
            public_ipv4: s("public-ipv4").and_then(|v| v.parse().ok()),
            availability_zone: s("availability-zone"),
            region: s("region"),
            ssh_authorized_keys: keys,
            attributes: BTreeMap::new(),
        })
    }
}
