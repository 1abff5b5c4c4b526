//! OpenStack.
//!
//! * `openstack-config-drive`: a filesystem (ISO9660 or FAT) labelled `config-2`
//!   (`CONFIG-2` on FAT) with `openstack/latest/user_data` and
//!   `openstack/latest/meta_data.json`.
//! * `openstack-metadata`: the metadata service, `http://169.254.169.254/openstack/latest/`
//!   `user_data` (404: none) and `meta_data.json`; the addresses come from the
//!   EC2-compatible `/latest/meta-data/local-ipv4` and `public-ipv4` (404: unknown).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::endpoint::Endpoint;
use super::{
    json_document, non_empty_str, read_labelled, DataSource, Metadata, Platform, SourceContext,
    SourceError,
};

pub(crate) const DRIVE_SOURCE_NAME: &str = "openstack-config-drive";
pub(crate) const SERVICE_SOURCE_NAME: &str = "openstack-metadata";
const LABELS: &[&str] = &["config-2"];

/// Fields of `meta_data.json` firstboot uses.
fn parse_meta_data(source_name: &str, raw: &[u8]) -> Result<Metadata, SourceError> {
    let doc = json_document(source_name, "meta_data.json", raw)?;
    let s = |k: &str| non_empty_str(doc.get(k));
    let mut keys: Vec<String> = doc
        .get("public_keys")
        .and_then(|v| v.as_object())
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(|k| k.trim().to_string()))
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    let mut attributes = BTreeMap::new();
    if let Some(meta) = doc.get("meta").and_then(|v| v.as_object()) {
        for (k, v) in meta {
            if let Some(v) = v.as_str() {
                attributes.insert(format!("meta:{k}"), v.to_string());
            }
        }
    }
    if let Some(name) = s("name") {
        attributes.insert("name".into(), name);
    }
    Ok(Metadata {
        hostname: s("hostname").or_else(|| s("name")),
        instance_id: s("uuid"),
        availability_zone: s("availability_zone"),
        ssh_authorized_keys: keys,
        attributes,
        ..Default::default()
    })
}

pub(crate) struct ConfigDriveSource {
    ctx: SourceContext,
}

impl ConfigDriveSource {
    pub fn new(ctx: &SourceContext) -> Self {
        ConfigDriveSource { ctx: ctx.clone() }
    }
}

impl DataSource for ConfigDriveSource {
    fn name(&self) -> &'static str {
        DRIVE_SOURCE_NAME
    }

    fn user_data(&self) -> Result<Option<Vec<u8>>, SourceError> {
        Ok(read_labelled(
            &self.ctx,
            DRIVE_SOURCE_NAME,
            LABELS,
            "openstack/latest/user_data",
        )?
        .1
        .filter(|d| !d.is_empty()))
    }

    fn metadata(&self) -> Result<Metadata, SourceError> {
        match read_labelled(
            &self.ctx,
            DRIVE_SOURCE_NAME,
            LABELS,
            "openstack/latest/meta_data.json",
        )?
        .1
        {
            Some(raw) => parse_meta_data(DRIVE_SOURCE_NAME, &raw),
            None => Ok(Metadata::default()),
        }
    }
}

pub(crate) struct OpenStackMetadataSource {
    endpoint: Endpoint,
}

impl OpenStackMetadataSource {
    pub fn new(ctx: &SourceContext) -> Self {
        OpenStackMetadataSource {
            endpoint: Endpoint::new(
                SERVICE_SOURCE_NAME,
                ctx.endpoint(Platform::OpenStack),
                &[],
                ctx.timeouts,
            ),
        }
    }

    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        self.endpoint.get(path)
    }

    /// An address that does not parse is left out (the service is not strict about it).
    fn ip(&self, path: &str) -> Result<Option<IpAddr>, SourceError> {
        Ok(self.endpoint.text(path)?.and_then(|s| s.parse().ok()))
    }
}

impl DataSource for OpenStackMetadataSource {
    fn name(&self) -> &'static str {
        SERVICE_SOURCE_NAME
    }

    fn user_data(&self) -> Result<Option<Vec<u8>>, SourceError> {
        self.endpoint.user_data("openstack/latest/user_data")
    }

    fn metadata(&self) -> Result<Metadata, SourceError> {
        let mut m = match self.get("openstack/latest/meta_data.json")? {
            Some(raw) => parse_meta_data(SERVICE_SOURCE_NAME, &raw)?,
            None => Metadata::default(),
        };
        m.local_ipv4 = self.ip("latest/meta-data/local-ipv4")?;
        m.public_ipv4 = self.ip("latest/meta-data/public-ipv4")?;
        Ok(m)
    }
}
