//! Hosts from `terraform output -json` (Pharos' `pharos` output).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use nodeimage_core::config::{Host, LabelKey, Role};

/// One group of Terraform's `pharos` output.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TfGroup {
    address: OneOrMany,
    #[serde(default)]
    private_address: Option<OneOrMany>,
    role: Role,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    ssh_key_path: Option<String>,
    #[serde(default)]
    container_runtime: Option<String>,
    #[serde(default)]
    hostname: Option<OneOrMany>,
    #[serde(default, alias = "labels")]
    label: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Hosts from `terraform output -json`: the output named `pharos` whose `value` maps
/// group names to `{address: [..], private_address: [..], role, user, label: {..}}`.
/// Groups are taken in name order, addresses in list order.
pub fn hosts_from_terraform(json: &str) -> Result<Vec<Host>> {
    let v: serde_json::Value =
        serde_json::from_str(json).context("terraform output is not JSON")?;
    let value = v
        .get("pharos")
        .ok_or_else(|| anyhow!("terraform output has no `pharos` output"))?
        .get("value")
        .ok_or_else(|| {
            anyhow!("terraform output `pharos` has no `value` (use `terraform output -json`)")
        })?;
    let groups: BTreeMap<String, serde_json::Value> = serde_json::from_value(value.clone())
        .context("`pharos.value` must map group names to host groups")?;
    let mut hosts = Vec::new();
    for (name, g) in groups {
        let g: TfGroup = serde_json::from_value(g)
            .with_context(|| format!("terraform output pharos.value.{name}"))?;
        let addresses = g.address.into_vec();
        let private = g
            .private_address
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        let hostnames = g.hostname.map(OneOrMany::into_vec).unwrap_or_default();
        if !private.is_empty() && private.len() != addresses.len() {
            bail!(
                "terraform output pharos.value.{name}: {} addresses but {} private addresses",
                addresses.len(),
                private.len()
            );
        }
        if !hostnames.is_empty() && hostnames.len() != addresses.len() {
            bail!(
                "terraform output pharos.value.{name}: {} addresses but {} hostnames",
                addresses.len(),
                hostnames.len()
            );
        }
        let labels: BTreeMap<LabelKey, String> = g
            .label
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                let k = k
                    .parse()
                    .with_context(|| format!("terraform output pharos.value.{name}.label"))?;
                Ok((k, v))
            })
            .collect::<Result<_>>()?;
        for (i, address) in addresses.into_iter().enumerate() {
            hosts.push(Host {
                address,
                private_address: private.get(i).cloned().filter(|p| !p.is_empty()),
                role: g.role,
                labels: labels.clone(),
                bootstrap: false,
                hostname: hostnames
                    .get(i)
                    .map(|h| h.parse())
                    .transpose()
                    .with_context(|| format!("terraform output pharos.value.{name}.hostname"))?,
                user: g.user.clone(),
                ssh_key_path: g.ssh_key_path.clone(),
                container_runtime: g.container_runtime.clone(),
            });
        }
    }
    if hosts.is_empty() {
        bail!("terraform output `pharos` lists no hosts");
    }
    Ok(hosts)
}
