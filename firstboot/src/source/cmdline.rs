//! The kernel command line: parameter lookup, and the `firstboot.config_url=` source.
//!
//! `firstboot.config_url=http(s)://host/path/{mac}.yaml` names the user data directly.
//! Placeholders are filled from the machine and percent-encoded:
//! * `{mac}`: `<root>/sys/class/net/<if>/address` of the first interface by name that is
//!   not loopback (`lo`, or an all-zero address);
//! * `{uuid}`: `<root>/sys/class/dmi/id/product_uuid` (lower case);
//! * `{serial}`: `<root>/sys/class/dmi/id/product_serial`.
//!
//! `firstboot.config_sha256=<hex>` makes the fetched document's SHA-256 mandatory.
//!
//! The URL must be `https://`, or `http://` together with `firstboot.config_sha256=`:
//! a plain-HTTP config without a pinned digest could be replaced by anyone on the path,
//! and it makes the node root for whoever does. (Even with the digest a plain-HTTP
//! master config shows its CA keys to anyone listening: serve masters over https.)

use std::path::Path;

use sha2::{Digest, Sha256};

use super::{DataSource, SourceContext, SourceError};
use crate::net::{HashMismatch, Http};

pub(crate) const SOURCE_NAME: &str = "kernel-cmdline-url";

/// Kernel parameter: the URL relative URLs (the config's, a network boot's root image)
/// resolve against; a network boot's boot.ipxe passes the directory it was served from.
pub const BASE_URL_PARAM: &str = "nodeimage.base_url";

/// Split a kernel command line into words, honouring double quotes like the kernel does.
fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// The value of `key=value` on a kernel command line (the last one wins, as for most
/// kernel parameters). A bare `key` yields an empty value.
pub fn cmdline_param(cmdline: &str, key: &str) -> Option<String> {
    words(cmdline)
        .into_iter()
        .rev()
        .find_map(|w| match w.split_once('=') {
            Some((k, v)) if k == key => Some(v.to_string()),
            None if w == key => Some(String::new()),
            _ => None,
        })
}

/// Machine identifiers for URL placeholders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineIds {
    pub mac: Option<String>,
    pub uuid: Option<String>,
    pub serial: Option<String>,
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl MachineIds {
    pub fn from_root(root: &Path) -> Self {
        let net = nodeimage_core::files::rooted(root, "/sys/class/net");
        let mut ifaces: Vec<String> = std::fs::read_dir(&net)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        ifaces.sort();
        let mac = ifaces
            .iter()
            .filter(|n| n.as_str() != "lo")
            .filter_map(|n| read_trimmed(&net.join(n).join("address")))
            .find(|a| a != "00:00:00:00:00:00")
            .map(|a| a.to_ascii_lowercase());
        let dmi = nodeimage_core::files::rooted(root, "/sys/class/dmi/id");
        MachineIds {
            mac,
            uuid: read_trimmed(&dmi.join("product_uuid")).map(|u| u.to_ascii_lowercase()),
            serial: read_trimmed(&dmi.join("product_serial")),
        }
    }
}

/// Percent-encode everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Fill `{mac}`, `{uuid}`, `{serial}` in a URL template.
pub fn expand_placeholders(template: &str, ids: &MachineIds) -> Result<String, String> {
    let mut out = template.to_string();
    for (name, value) in [
        ("mac", &ids.mac),
        ("uuid", &ids.uuid),
        ("serial", &ids.serial),
    ] {
        let ph = format!("{{{name}}}");
        if out.contains(&ph) {
            let v = value
                .as_ref()
                .ok_or_else(|| format!("the URL uses {ph} but this machine has no {name}"))?;
            out = out.replace(&ph, &percent_encode(v));
        }
    }
    Ok(out)
}

/// The `firstboot.config_url=` source.
pub(crate) struct ConfigUrlSource {
    url: String,
    sha256: Option<String>,
    http: Http,
}

impl ConfigUrlSource {
    /// `None` when the kernel command line names no URL.
    pub fn from_context(ctx: &SourceContext) -> Result<Option<Self>, SourceError> {
        let Some(template) = cmdline_param(&ctx.cmdline, "firstboot.config_url") else {
            return Ok(None);
        };
        let bad = |m: String| SourceError::Invalid(format!("firstboot.config_url: {m}"));
        let ids = MachineIds::from_root(&ctx.root);
        let absolute = template.starts_with("http://") || template.starts_with("https://");
        // A relative URL is resolved against nodeimage.base_url= (a network boot's
        // boot.ipxe passes the directory it was served from).
        let base = cmdline_param(&ctx.cmdline, BASE_URL_PARAM).filter(|b| !b.is_empty());
        let url = match (absolute, base) {
            (true, _) => expand_placeholders(&template, &ids).map_err(bad)?,
            (false, Some(base)) => {
                let rel = expand_placeholders(&template, &ids).map_err(bad)?;
                let base = url::Url::parse(&base).map_err(|e| {
                    bad(format!("`{template}` is relative and nodeimage.base_url=`{base}` is not a URL ({e})"))
                })?;
                let joined = base.join(&rel).map_err(|e| bad(format!("`{rel}` relative to `{base}`: {e}")))?;
                joined.to_string()
            }
            (false, None) => {
                return Err(bad(format!(
                    "expected an http:// or https:// URL (or one relative to nodeimage.base_url=), found `{template}`"
                )))
            }
        };
        url::Url::parse(&url).map_err(|e| bad(format!("`{url}`: {e}")))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad(format!(
                "expected an http:// or https:// URL, found `{url}`"
            )));
        }
        let sha256_param = cmdline_param(&ctx.cmdline, "firstboot.config_sha256");
        if url.starts_with("http://") && sha256_param.is_none() {
            return Err(bad(format!(
                "`{url}` is plain HTTP, which anyone on the path can change: use https://, \
                 or pin the document with firstboot.config_sha256=<its SHA-256>"
            )));
        }
        let sha256 = match sha256_param {
            None => None,
            Some(h) => {
                let h = h.to_ascii_lowercase();
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(SourceError::Invalid(format!(
                        "firstboot.config_sha256: expected 64 hexadecimal digits, found `{h}`"
                    )));
                }
                Some(h)
            }
        };
        // The operator named this URL: a refused connection is retried until the deadline.
        let http = Http::new(SOURCE_NAME, ctx.timeouts, false);
        Ok(Some(ConfigUrlSource { url, sha256, http }))
    }
}

impl DataSource for ConfigUrlSource {
    fn name(&self) -> &'static str {
        SOURCE_NAME
    }

    fn user_data(&self) -> Result<Option<Vec<u8>>, SourceError> {
        let body = self.http.get_required(&self.url, &[])?;
        if let Some(expected) = &self.sha256 {
            let actual = hex::encode(Sha256::digest(&body));
            if &actual != expected {
                return Err(SourceError::HashMismatch(Box::new(HashMismatch {
                    source_name: SOURCE_NAME.into(),
                    what: self.url.clone(),
                    algorithm: "sha256",
                    expected: expected.clone(),
                    actual,
                })));
            }
        }
        Ok(Some(body))
    }

    fn attributes(&self) -> Result<std::collections::BTreeMap<String, String>, SourceError> {
        Ok([("config_url".to_string(), self.url.clone())].into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_with_quotes_and_last_wins() {
        let c = r#"BOOT_IMAGE=/vmlinuz ro firstboot.platform=qemu quiet foo="a b" firstboot.platform=ec2 flag"#;
        assert_eq!(
            cmdline_param(c, "firstboot.platform").as_deref(),
            Some("ec2")
        );
        assert_eq!(cmdline_param(c, "foo").as_deref(), Some("a b"));
        assert_eq!(cmdline_param(c, "flag").as_deref(), Some(""));
        assert_eq!(cmdline_param(c, "firstboot.config_url"), None);
    }

    #[test]
    fn placeholders_are_encoded() {
        let ids = MachineIds {
            mac: Some("52:54:00:ab:cd:ef".into()),
            uuid: None,
            serial: Some("A B/1".into()),
        };
        assert_eq!(
            expand_placeholders("http://h/{mac}/{serial}", &ids).unwrap(),
            "http://h/52%3A54%3A00%3Aab%3Acd%3Aef/A%20B%2F1"
        );
        assert!(expand_placeholders("http://h/{uuid}", &ids)
            .unwrap_err()
            .contains("{uuid}"));
    }
}
