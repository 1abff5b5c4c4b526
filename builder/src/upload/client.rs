//! The few AWS calls an AMI upload makes, signed with SigV4 over the blocking HTTP
//! client: EBS direct APIs (REST/JSON: StartSnapshot, PutSnapshotBlock,
//! CompleteSnapshot) and the EC2 Query API (form-encoded POST, XML replies:
//! DescribeSnapshots, RegisterImage, DeleteSnapshot). Errors carry AWS's error code and
//! message and the HTTP status, never a header or a key.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;

use super::credentials::Credentials;
use super::sigv4::{self, UNSIGNED_PAYLOAD};

/// The EC2 Query API version of the calls below.
const EC2_VERSION: &str = "2016-11-15";

/// A failed call; `retryable` for throttling, 5xx and transport errors.
#[derive(Debug, thiserror::Error)]
#[error("{call}: {detail}")]
pub struct CallError {
    pub call: String,
    pub detail: String,
    pub retryable: bool,
}

/// One request before signing.
struct Call<'a> {
    call: &'a str,
    service: &'a str,
    method: &'a str,
    base: &'a str,
    path: &'a str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    payload_hash: &'a str,
}

pub struct Aws {
    http: reqwest::blocking::Client,
    creds: Credentials,
    pub region: String,
    /// Base URLs, e.g. `https://ebs.eu-west-1.amazonaws.com`.
    ebs: String,
    ec2: String,
}

/// `YYYYMMDD'T'HHMMSS'Z'` of now.
fn amz_date() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

impl Aws {
    /// `endpoint` replaces both services' endpoints (a test server, a VPC endpoint).
    pub fn new(creds: Credentials, region: &str, endpoint: Option<&str>) -> Result<Aws> {
        let (ebs, ec2) = match endpoint {
            Some(e) => (
                e.trim_end_matches('/').to_string(),
                e.trim_end_matches('/').to_string(),
            ),
            None => (
                format!("https://ebs.{region}.amazonaws.com"),
                format!("https://ec2.{region}.amazonaws.com"),
            ),
        };
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Per attempt: a block is at most 512 KiB, so a stalled connection is given
            // up on (and the block retried) instead of holding a worker for minutes.
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("nodeimage/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Aws {
            http,
            creds,
            region: region.to_string(),
            ebs,
            ec2,
        })
    }

    /// Send one signed request; returns the body of a 2xx answer.
    fn send(&self, c: Call) -> Result<Vec<u8>, CallError> {
        let Call {
            call,
            service,
            method,
            base,
            path,
            mut headers,
            body,
            payload_hash,
        } = c;
        let fail = |detail: String, retryable: bool| CallError {
            call: call.to_string(),
            detail,
            retryable,
        };
        let url = url::Url::parse(&format!("{base}{path}"))
            .map_err(|e| fail(format!("bad endpoint {base}: {e}"), false))?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => return Err(fail(format!("endpoint {base} has no host"), false)),
        };
        let date = amz_date();
        headers.push(("host".into(), host));
        headers.push(("x-amz-date".into(), date.clone()));
        headers.push(("x-amz-content-sha256".into(), payload_hash.into()));
        if let Some(t) = &self.creds.session_token {
            headers.push(("x-amz-security-token".into(), t.clone()));
        }
        let signed = sigv4::sign(
            &sigv4::Request {
                method,
                path: url.path(),
                query: &[],
                headers: &headers,
                payload_hash,
            },
            &self.creds,
            &self.region,
            service,
            &date,
        );
        let mut rq = self
            .http
            .request(method.parse().expect("a valid method"), url)
            .header("authorization", signed.authorization)
            .body(body);
        for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
            rq = rq.header(k, v);
        }
        let resp = rq.send().map_err(|e| fail(format!("{e}"), true))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .map_err(|e| fail(format!("reading the answer: {e}"), true))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let retryable = status.is_server_error() || status.as_u16() == 429;
        Err(fail(
            format!("HTTP {status}: {}", aws_error(&bytes)),
            retryable,
        ))
    }

    fn ebs_json(
        &self,
        call: &str,
        method: &str,
        path: &str,
        headers: Vec<(String, String)>,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, CallError> {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let mut headers = headers;
        headers.push(("content-type".into(), "application/json".into()));
        let hash = sigv4::sha256_hex(&body);
        let out = self.send(Call {
            call,
            service: "ebs",
            method,
            base: &self.ebs,
            path,
            headers,
            body,
            payload_hash: &hash,
        })?;
        if out.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&out).map_err(|e| CallError {
            call: call.into(),
            detail: format!("the answer is not JSON: {e}"),
            retryable: false,
        })
    }

    /// An EC2 Query API call; returns the XML answer.
    fn ec2(&self, action: &str, params: &[(String, String)]) -> Result<String, CallError> {
        let mut form = vec![
            ("Action".to_string(), action.to_string()),
            ("Version".to_string(), EC2_VERSION.to_string()),
        ];
        form.extend(params.iter().cloned());
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", sigv4::uri_encode(k), sigv4::uri_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes();
        let hash = sigv4::sha256_hex(&body);
        let headers = vec![(
            "content-type".to_string(),
            "application/x-www-form-urlencoded; charset=utf-8".to_string(),
        )];
        let out = self.send(Call {
            call: action,
            service: "ec2",
            method: "POST",
            base: &self.ec2,
            path: "/",
            headers,
            body,
            payload_hash: &hash,
        })?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// StartSnapshot: the snapshot id and the block size to write with.
    pub fn start_snapshot(
        &self,
        volume_gib: u64,
        description: &str,
        tags: &[(String, String)],
        client_token: &str,
    ) -> Result<(String, u64)> {
        let tags: Vec<_> = tags
            .iter()
            .map(|(k, v)| serde_json::json!({"Key": k, "Value": v}))
            .collect();
        let v = self.ebs_json(
            "StartSnapshot",
            "POST",
            "/snapshots",
            vec![],
            Some(serde_json::json!({
                "VolumeSize": volume_gib,
                "Description": description,
                "Tags": tags,
                "Timeout": 60,
                "ClientToken": client_token,
            })),
        )?;
        let id = v["SnapshotId"]
            .as_str()
            .ok_or_else(|| anyhow!("StartSnapshot: no SnapshotId in {v}"))?;
        let block = v["BlockSize"]
            .as_u64()
            .filter(|b| *b > 0 && b.is_power_of_two())
            .ok_or_else(|| anyhow!("StartSnapshot: no usable BlockSize in {v}"))?;
        Ok((id.to_string(), block))
    }

    /// PutSnapshotBlock; `checksum` is the block's base64 sha256 (the body is not signed;
    /// the checksum header is, and EBS checks the data against it).
    pub fn put_block(
        &self,
        snapshot: &str,
        index: u64,
        data: Vec<u8>,
        checksum: &str,
        progress: u8,
    ) -> Result<(), CallError> {
        let headers = vec![
            (
                "content-type".to_string(),
                "application/octet-stream".to_string(),
            ),
            ("x-amz-data-length".to_string(), data.len().to_string()),
            ("x-amz-checksum".to_string(), checksum.to_string()),
            ("x-amz-checksum-algorithm".to_string(), "SHA256".to_string()),
            ("x-amz-progress".to_string(), progress.to_string()),
        ];
        let path = format!("/snapshots/{snapshot}/blocks/{index}");
        self.send(Call {
            call: "PutSnapshotBlock",
            service: "ebs",
            method: "PUT",
            base: &self.ebs,
            path: &path,
            headers,
            body: data,
            payload_hash: UNSIGNED_PAYLOAD,
        })
        .map(drop)
    }

    /// CompleteSnapshot with the LINEAR aggregate checksum; returns the status.
    pub fn complete_snapshot(
        &self,
        snapshot: &str,
        changed_blocks: u64,
        aggregate: &str,
    ) -> Result<String, CallError> {
        let headers = vec![
            (
                "x-amz-changedblockscount".to_string(),
                changed_blocks.to_string(),
            ),
            ("x-amz-checksum".to_string(), aggregate.to_string()),
            ("x-amz-checksum-algorithm".to_string(), "SHA256".to_string()),
            (
                "x-amz-checksum-aggregation-method".to_string(),
                "LINEAR".to_string(),
            ),
        ];
        let v = self.ebs_json(
            "CompleteSnapshot",
            "POST",
            &format!("/snapshots/completion/{snapshot}"),
            headers,
            None,
        )?;
        Ok(v["Status"].as_str().unwrap_or("").to_string())
    }

    /// DescribeSnapshots for one snapshot: (state, progress).
    pub fn snapshot_state(&self, snapshot: &str) -> Result<(String, String), CallError> {
        let xml = self.ec2(
            "DescribeSnapshots",
            &[("SnapshotId.1".to_string(), snapshot.to_string())],
        )?;
        let bad = |detail: String| CallError {
            call: "DescribeSnapshots".into(),
            detail,
            retryable: false,
        };
        let doc = roxmltree::Document::parse(&xml).map_err(|e| bad(format!("bad XML: {e}")))?;
        let item = doc
            .descendants()
            .find(|n| {
                n.has_tag_name("item") && n.parent().is_some_and(|p| p.has_tag_name("snapshotSet"))
            })
            .ok_or_else(|| bad(format!("{snapshot} is not in the answer")))?;
        Ok((child_text(item, "status"), child_text(item, "progress")))
    }

    pub fn register_image(&self, params: &[(String, String)]) -> Result<String> {
        let xml = self.ec2("RegisterImage", params)?;
        let doc = roxmltree::Document::parse(&xml).context("RegisterImage: bad XML")?;
        let id = doc
            .descendants()
            .find(|n| n.has_tag_name("imageId"))
            .and_then(|n| n.text())
            .ok_or_else(|| anyhow!("RegisterImage: no imageId in the answer"))?;
        Ok(id.trim().to_string())
    }

    pub fn delete_snapshot(&self, snapshot: &str) -> Result<(), CallError> {
        self.ec2(
            "DeleteSnapshot",
            &[("SnapshotId".to_string(), snapshot.to_string())],
        )
        .map(drop)
    }
}

fn child_text(node: roxmltree::Node, tag: &str) -> String {
    node.children()
        .find(|c| c.has_tag_name(tag))
        .and_then(|c| c.text())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// AWS's error code and message from a JSON (EBS) or XML (EC2) error body.
fn aws_error(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let code = v["__type"].as_str().or(v["code"].as_str()).unwrap_or("");
        let msg = v["message"]
            .as_str()
            .or(v["Message"].as_str())
            .unwrap_or("");
        if !code.is_empty() || !msg.is_empty() {
            return format!("{code} {msg}").trim().to_string();
        }
    }
    if let Ok(doc) = roxmltree::Document::parse(&text) {
        if let Some(e) = doc.descendants().find(|n| n.has_tag_name("Error")) {
            return format!("{} {}", child_text(e, "Code"), child_text(e, "Message"))
                .trim()
                .to_string();
        }
    }
    text.chars().take(300).collect()
}

/// The LINEAR aggregate: sha256 over the blocks' raw 32-byte digests in block order,
/// base64 (as awslabs/coldsnap sends it).
pub fn linear_checksum<'a>(digests: impl Iterator<Item = &'a [u8; 32]>) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for d in digests {
        h.update(d);
    }
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Bail unless `s` is an AWS resource id with `prefix` (snap-, ami-).
pub fn check_id(s: &str, prefix: &str) -> Result<()> {
    if s.starts_with(prefix)
        && s.len() > prefix.len()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        Ok(())
    } else {
        bail!("expected an id starting with {prefix}, got `{s}`")
    }
}
