//! AWS credentials, found the way the AWS CLI and SDKs find them: a named profile when
//! one is asked for; otherwise the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), then the profile `AWS_PROFILE` (else
//! `default`) of the shared files (`AWS_SHARED_CREDENTIALS_FILE`, else
//! `~/.aws/credentials`; `AWS_CONFIG_FILE`, else `~/.aws/config`, whose sections are
//! `[profile NAME]`), then the instance's role through IMDSv2 (a session token first;
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` moves it, `AWS_EC2_METADATA_DISABLED=true` turns
//! it off). Secrets never reach a log line or an error message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// One set of credentials and where it came from (`source` names the place, never a
/// secret).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("source", &self.source)
            .finish()
    }
}

/// Where to look: the process environment (as a map, so tests can give their own) and
/// an explicitly chosen profile.
pub struct Lookup {
    pub env: BTreeMap<String, String>,
    pub profile: Option<String>,
}

impl Lookup {
    pub fn from_process(profile: Option<String>) -> Self {
        Lookup {
            env: std::env::vars().collect(),
            profile,
        }
    }

    fn var(&self, k: &str) -> Option<&str> {
        self.env
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn home_file(&self, var: &str, default: &str) -> Option<PathBuf> {
        self.var(var)
            .map(PathBuf::from)
            .or_else(|| self.var("HOME").map(|h| Path::new(h).join(default)))
    }

    fn profile_name(&self) -> &str {
        self.profile
            .as_deref()
            .or_else(|| self.var("AWS_PROFILE"))
            .unwrap_or("default")
    }

    /// The region: `AWS_REGION`, `AWS_DEFAULT_REGION`, else the profile's `region` in
    /// the config file.
    pub fn region(&self) -> Option<String> {
        if let Some(r) = self
            .var("AWS_REGION")
            .or_else(|| self.var("AWS_DEFAULT_REGION"))
        {
            return Some(r.to_string());
        }
        let config = self.home_file("AWS_CONFIG_FILE", ".aws/config")?;
        let text = std::fs::read_to_string(config).ok()?;
        let sections = parse_ini(&text);
        config_section(&sections, self.profile_name())?
            .get("region")
            .cloned()
    }

    /// The first credentials of the chain, or an error that lists every place looked at.
    pub fn credentials(&self) -> Result<Credentials> {
        let mut looked = Vec::new();
        if self.profile.is_none() {
            match (
                self.var("AWS_ACCESS_KEY_ID"),
                self.var("AWS_SECRET_ACCESS_KEY"),
            ) {
                (Some(id), Some(secret)) => {
                    return Ok(Credentials {
                        access_key_id: id.into(),
                        secret_access_key: secret.into(),
                        session_token: self.var("AWS_SESSION_TOKEN").map(Into::into),
                        source: "environment".into(),
                    })
                }
                (Some(_), None) => {
                    bail!("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
                }
                _ => looked.push("the environment".to_string()),
            }
        }
        let name = self.profile_name();
        for (var, default, config) in [
            ("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials", false),
            ("AWS_CONFIG_FILE", ".aws/config", true),
        ] {
            let Some(path) = self.home_file(var, default) else {
                continue;
            };
            looked.push(format!("profile `{name}` in {}", path.display()));
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            let sections = parse_ini(&text);
            let section = if config {
                config_section(&sections, name)
            } else {
                sections.get(name)
            };
            let Some(s) = section else { continue };
            match (s.get("aws_access_key_id"), s.get("aws_secret_access_key")) {
                (Some(id), Some(secret)) => {
                    return Ok(Credentials {
                        access_key_id: id.clone(),
                        secret_access_key: secret.clone(),
                        session_token: s.get("aws_session_token").cloned(),
                        source: format!("profile `{name}` in {}", path.display()),
                    })
                }
                (Some(_), None) | (None, Some(_)) => bail!(
                    "{}: profile `{name}` has only one of aws_access_key_id and aws_secret_access_key",
                    path.display()
                ),
                (None, None) => {}
            }
        }
        if self.profile.is_some() {
            bail!(
                "no credentials for profile `{name}`: looked at {}",
                looked.join(", ")
            );
        }
        if self.var("AWS_EC2_METADATA_DISABLED") == Some("true") {
            looked.push("IMDS (disabled by AWS_EC2_METADATA_DISABLED)".into());
        } else {
            let endpoint = self
                .var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                .unwrap_or("http://169.254.169.254")
                .trim_end_matches('/')
                .to_string();
            match imds(&endpoint) {
                Ok(c) => return Ok(c),
                Err(e) => looked.push(format!(
                    "the instance role through IMDSv2 at {endpoint} ({e:#})"
                )),
            }
        }
        bail!("no AWS credentials found: looked at {}", looked.join("; "))
    }
}

/// `[section]` → key → value; `#` and `;` start comments.
fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_string();
            out.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(sec), Some((k, v))) = (&current, line.split_once('=')) {
            out.get_mut(sec)
                .expect("section exists")
                .insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    out
}

/// The config file names a profile `[profile NAME]`, except `[default]`.
fn config_section<'a>(
    sections: &'a BTreeMap<String, BTreeMap<String, String>>,
    name: &str,
) -> Option<&'a BTreeMap<String, String>> {
    sections.get(&format!("profile {name}")).or_else(|| {
        (name == "default")
            .then(|| sections.get("default"))
            .flatten()
    })
}

/// The instance role's credentials through IMDSv2.
fn imds(endpoint: &str) -> Result<Credentials> {
    let http = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let token = http
        .put(format!("{endpoint}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "300")
        .send()
        .and_then(|r| r.error_for_status())
        .context("no IMDSv2 session token")?
        .text()?;
    let get = |path: &str| -> Result<String> {
        Ok(http
            .get(format!("{endpoint}{path}"))
            .header("X-aws-ec2-metadata-token", token.trim())
            .send()
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("GET {path}"))?
            .text()?)
    };
    let base = "/latest/meta-data/iam/security-credentials/";
    let roles = get(base)?;
    let Some(role) = roles.lines().map(str::trim).find(|l| !l.is_empty()) else {
        bail!("the instance has no IAM role");
    };
    let v: serde_json::Value = serde_json::from_str(&get(&format!("{base}{role}"))?)
        .context("the role's credentials are not JSON")?;
    let field = |k: &str| v[k].as_str().map(str::to_string);
    match (field("AccessKeyId"), field("SecretAccessKey")) {
        (Some(id), Some(secret)) if v["Code"] == "Success" || v["Code"].is_null() => {
            Ok(Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: field("Token"),
                source: format!("instance role `{role}` (IMDSv2)"),
            })
        }
        _ => bail!(
            "the role `{role}` returned no credentials (Code {})",
            v["Code"]
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(env: &[(&str, &str)], profile: Option<&str>) -> Lookup {
        Lookup {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            profile: profile.map(Into::into),
        }
    }

    #[test]
    fn environment_first_then_profiles_of_both_files() {
        let d = tempfile::tempdir().unwrap();
        let creds = d.path().join("credentials");
        let config = d.path().join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s-default\n\n# c\n[ci]\naws_access_key_id=AKIDCI\naws_secret_access_key=s-ci\naws_session_token=tok\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[default]\nregion = eu-west-1\n[profile cfg]\nregion = us-west-2\naws_access_key_id = AKIDCFG\naws_secret_access_key = s-cfg\n",
        )
        .unwrap();
        let files = [
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ];
        let mut env = files.to_vec();
        env.extend([
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "s-env"),
        ]);
        let c = lookup(&env, None).credentials().unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.source.as_str()),
            ("AKIDENV", "environment")
        );
        // An explicit profile wins over the environment.
        let c = lookup(&env, Some("ci")).credentials().unwrap();
        assert_eq!(c.access_key_id, "AKIDCI");
        assert_eq!(c.session_token.as_deref(), Some("tok"));
        let c = lookup(&files, None).credentials().unwrap();
        assert_eq!(c.access_key_id, "AKIDDEFAULT");
        let mut env = files.to_vec();
        env.push(("AWS_PROFILE", "cfg"));
        let l = lookup(&env, None);
        assert_eq!(l.credentials().unwrap().access_key_id, "AKIDCFG");
        assert_eq!(l.region().as_deref(), Some("us-west-2"));
        assert_eq!(lookup(&files, None).region().as_deref(), Some("eu-west-1"));
        // No secret in Debug or in an error.
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s-default"), "{dbg}");
        let e = lookup(&files, Some("nope"))
            .credentials()
            .unwrap_err()
            .to_string();
        assert!(e.contains("profile `nope`") && !e.contains("s-ci"), "{e}");
    }

    #[test]
    fn instance_role_through_imdsv2() {
        use test_support::http::{Faults, Mock, Resp};
        let imds = Mock::start(Faults::default(), |r| {
            let token = r.header("X-aws-ec2-metadata-token") == Some("t0k");
            match (r.method.as_str(), r.path.as_str()) {
                ("PUT", "/latest/api/token")
                    if r.header("X-aws-ec2-metadata-token-ttl-seconds").is_some() =>
                {
                    Resp::ok("t0k")
                }
                ("GET", "/latest/meta-data/iam/security-credentials/") if token => {
                    Resp::ok("node-role\n")
                }
                ("GET", "/latest/meta-data/iam/security-credentials/node-role") if token => {
                    Resp::ok(
                        r#"{"Code":"Success","AccessKeyId":"ASIAROLE","SecretAccessKey":"s-role","Token":"role-token"}"#,
                    )
                }
                _ => Resp::status(401, "Unauthorized"),
            }
        });
        let d = tempfile::tempdir().unwrap();
        let env = [
            ("HOME", d.path().to_str().unwrap()),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.base.as_str()),
        ];
        let c = lookup(&env, None).credentials().unwrap();
        assert_eq!(c.access_key_id, "ASIAROLE");
        assert_eq!(c.session_token.as_deref(), Some("role-token"));
        assert!(c.source.contains("node-role"), "{}", c.source);
        // IMDSv1 (no token) is never used.
        assert_eq!(imds.hits()[0], "PUT /latest/api/token");
        let closed = test_support::http::closed_port_url();
        let env = [
            ("HOME", d.path().to_str().unwrap()),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", closed.as_str()),
        ];
        let e = lookup(&env, None).credentials().unwrap_err().to_string();
        assert!(e.contains("the environment") && e.contains("IMDSv2"), "{e}");
    }
}
