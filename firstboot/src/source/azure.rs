//! Microsoft Azure.
//!
//! * `azure` (IMDS): requests carry `Metadata: true` and `api-version`; user data is
//!   `/metadata/instance/compute/userData?api-version=2021-02-01&format=text`, base64 text
//!   (empty: none). Metadata comes from `/metadata/instance?api-version=2021-02-01`
//!   (compute.name, vmId, location, zone, tagsList; the first interface's private and
//!   public IPv4).
//! * `azure-ovf` (custom data): `<root>/var/lib/waagent/CustomData` when the Azure agent
//!   already wrote it (base64 or plain), otherwise `ovf-env.xml` in the root of an ISO9660
//!   provisioning medium (any probed volume), element `CustomData` (base64). A UDF medium
//!   is not read (the reader knows FAT and ISO9660 only).

use std::collections::BTreeMap;

use base64::Engine;

use super::endpoint::Endpoint;
use super::{
    json_document, non_empty_str, DataSource, Metadata, Platform, SourceContext, SourceError,
};

pub(crate) const SOURCE_NAME: &str = "azure";
pub(crate) const OVF_SOURCE_NAME: &str = "azure-ovf";
/// The IMDS API version used for every request.
pub const API_VERSION: &str = "2021-02-01";
const HEADERS: &[(&str, &str)] = &[("Metadata", "true")];

pub(crate) struct AzureImdsSource {
    endpoint: Endpoint,
}

impl AzureImdsSource {
    pub fn new(ctx: &SourceContext) -> Self {
        AzureImdsSource {
            endpoint: Endpoint::new(
                SOURCE_NAME,
                format!("{}/metadata", ctx.endpoint(Platform::Azure)),
                HEADERS,
                ctx.timeouts,
            ),
        }
    }

    fn get(&self, path_and_query: &str) -> Result<Option<Vec<u8>>, SourceError> {
        self.endpoint.get(path_and_query)
    }
}

fn decode_b64(source_name: &str, what: &str, raw: &[u8]) -> Result<Vec<u8>, SourceError> {
    let cleaned: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(&cleaned)
        .map_err(|e| SourceError::format(source_name, format!("{what}: expected base64: {e}")))
}

impl DataSource for AzureImdsSource {
    fn name(&self) -> &'static str {
        SOURCE_NAME
    }

    fn user_data(&self) -> Result<Option<Vec<u8>>, SourceError> {
        let Some(raw) = self.get(&format!(
            "instance/compute/userData?api-version={API_VERSION}&format=text"
        ))?
        else {
            return Ok(None);
        };
        let data = decode_b64(SOURCE_NAME, "userData", &raw)?;
        Ok((!data.is_empty()).then_some(data))
    }

    fn metadata(&self) -> Result<Metadata, SourceError> {
        let Some(raw) = self.get(&format!("instance?api-version={API_VERSION}"))? else {
            return Ok(Metadata::default());
        };
        let doc = json_document(SOURCE_NAME, "instance", &raw)?;
        let s = |p: &str| non_empty_str(doc.pointer(p));
        let ip = |p: &str| s(p).and_then(|v| v.parse().ok());
        let mut attributes = BTreeMap::new();
        if let Some(tags) = doc.pointer("/compute/tagsList").and_then(|v| v.as_array()) {
            for t in tags {
                if let (Some(n), Some(v)) = (t["name"].as_str(), t["value"].as_str()) {
                    attributes.insert(format!("tag:{n}"), v.to_string());
                }
            }
        }
        for (k, p) in [
            ("vm_size", "/compute/vmSize"),
            ("resource_group", "/compute/resourceGroupName"),
        ] {
            if let Some(v) = s(p) {
                attributes.insert(k.to_string(), v);
            }
        }
        let keys = doc
            .pointer("/compute/publicKeys")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|k| k["keyData"].as_str().map(|s| s.trim().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Metadata {
            hostname: s("/compute/osProfile/computerName").or_else(|| s("/compute/name")),
            instance_id: s("/compute/vmId"),
            local_ipv4: ip("/network/interface/0/ipv4/ipAddress/0/privateIpAddress"),
            public_ipv4: ip("/network/interface/0/ipv4/ipAddress/0/publicIpAddress"),
            availability_zone: s("/compute/zone"),
            region: s("/compute/location"),
            ssh_authorized_keys: keys,
            attributes,
        })
    }
}

/// Azure custom data from the agent's file or the OVF provisioning ISO.
pub(crate) struct AzureOvfSource {
    ctx: SourceContext,
}

impl AzureOvfSource {
    pub fn new(ctx: &SourceContext) -> Self {
        AzureOvfSource { ctx: ctx.clone() }
    }

    fn ovf_env(&self) -> Option<(String, Vec<u8>)> {
        for v in self.ctx.devices.volumes() {
            if v.fs.kind() != "iso9660" {
                continue;
            }
            if let Ok(Some(x)) = v.fs.read_file("ovf-env.xml") {
                return Some((v.path.display().to_string(), x));
            }
        }
        None
    }
}

/// The text of the first element whose local name is `name` (namespace prefix ignored).
pub(crate) fn xml_element(xml: &str, name: &str) -> Option<String> {
    let mut rest = xml;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>')?;
        let tag = &rest[..end];
        let tag_name = tag.split_whitespace().next().unwrap_or("");
        let local = tag_name.rsplit(':').next().unwrap_or(tag_name);
        if local == name && !tag.ends_with('/') {
            let body = &rest[end + 1..];
            let close = body.find("</")?;
            return Some(body[..close].trim().to_string());
        }
        rest = &rest[end + 1..];
    }
    None
}

impl DataSource for AzureOvfSource {
    fn name(&self) -> &'static str {
        OVF_SOURCE_NAME
    }

    fn user_data(&self) -> Result<Option<Vec<u8>>, SourceError> {
        let agent = nodeimage_core::files::rooted(&self.ctx.root, "/var/lib/waagent/CustomData");
        match std::fs::read(&agent) {
            Ok(raw) => {
                // The agent may store it base64-encoded (its default) or decoded.
                let decoded = decode_b64(OVF_SOURCE_NAME, "CustomData", &raw).unwrap_or(raw);
                return Ok((!decoded.is_empty()).then_some(decoded));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SourceError::io(
                    OVF_SOURCE_NAME,
                    format!("reading {}", agent.display()),
                    e,
                ))
            }
        }
        let Some((device, xml)) = self.ovf_env() else {
            return Err(SourceError::absent(
                OVF_SOURCE_NAME,
                "no /var/lib/waagent/CustomData and no ISO9660 medium with ovf-env.xml",
            ));
        };
        let xml = String::from_utf8(xml).map_err(|_| {
            SourceError::format(
                OVF_SOURCE_NAME,
                format!("{device}: ovf-env.xml is not UTF-8"),
            )
        })?;
        match xml_element(&xml, "CustomData") {
            None => Ok(None),
            Some(b64) if b64.is_empty() => Ok(None),
            Some(b64) => Ok(Some(decode_b64(
                OVF_SOURCE_NAME,
                "ovf-env.xml CustomData",
                b64.as_bytes(),
            )?)),
        }
    }

    fn hostname(&self) -> Result<Option<String>, SourceError> {
        Ok(self
            .ovf_env()
            .and_then(|(_, x)| String::from_utf8(x).ok())
            .and_then(|x| xml_element(&x, "HostName"))
            .filter(|h| !h.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_element_ignores_prefixes_and_attributes() {
        let x = r#"<?xml version="1.0"?><Environment xmlns:ns1="x"><ns1:HostName>vm1</ns1:HostName>
            <ns1:CustomData attr="1">aGVsbG8=</ns1:CustomData><Empty/></Environment>"#;
        assert_eq!(xml_element(x, "HostName").as_deref(), Some("vm1"));
        assert_eq!(xml_element(x, "CustomData").as_deref(), Some("aGVsbG8="));
        assert_eq!(xml_element(x, "Missing"), None);
    }
}
