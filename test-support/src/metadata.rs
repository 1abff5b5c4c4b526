//! Mock metadata servers on 127.0.0.1 that behave like the real ones: same paths, and
//! they refuse requests without the header or token the real service demands, so a
//! client that forgets it fails the test.

use base64::Engine;

use crate::http::{Faults, Mock, Resp};

pub const EC2_TOKEN: &str = "AQAEAFakeImdsV2Token==";

/// EC2 IMDS. `v1_only`: the token call answers 405 and GETs need no token. Otherwise the
/// token PUT needs the TTL header (400 without), and every GET needs the token (401).
pub struct Ec2 {
    pub v1_only: bool,
    pub token_status: Option<u16>,
    pub user_data: Option<Vec<u8>>,
    pub tags: Vec<(String, String)>,
}

impl Ec2 {
    /// IMDSv2 with a working token call, `user_data` and no tags.
    pub fn serving(user_data: Option<&str>) -> Ec2 {
        Ec2 {
            v1_only: false,
            token_status: None,
            user_data: user_data.map(|u| u.as_bytes().to_vec()),
            tags: vec![],
        }
    }
}

pub fn ec2(cfg: Ec2, faults: Faults) -> Mock {
    Mock::start(faults, move |r| {
        if r.path == "/latest/api/token" {
            if r.method != "PUT" {
                return Resp::status(405, "");
            }
            if cfg.v1_only {
                return Resp::status(405, "Method Not Allowed");
            }
            if let Some(s) = cfg.token_status {
                return Resp::status(s, "Forbidden");
            }
            return match r
                .header("X-aws-ec2-metadata-token-ttl-seconds")
                .and_then(|v| v.parse::<u32>().ok())
            {
                Some(ttl) if (1..=21600).contains(&ttl) => Resp::ok(EC2_TOKEN),
                _ => Resp::status(400, "Bad Request"),
            };
        }
        if r.method != "GET" {
            return Resp::status(405, "");
        }
        if !cfg.v1_only && r.header("X-aws-ec2-metadata-token") != Some(EC2_TOKEN) {
            return Resp::status(401, "Unauthorized");
        }
        let m = |s: &str| Resp::ok(s.to_string());
        match r.path.as_str() {
            "/latest/user-data" => cfg
                .user_data
                .clone()
                .map(Resp::ok)
                .unwrap_or_else(Resp::not_found),
            "/latest/meta-data/instance-id" => m("i-0123456789abcdef0"),
            "/latest/meta-data/local-ipv4" => m("172.31.5.6"),
            "/latest/meta-data/public-ipv4" => m("203.0.113.7"),
            "/latest/meta-data/hostname" => m("ip-172-31-5-6.eu-west-1.compute.internal"),
            "/latest/meta-data/placement/availability-zone" => m("eu-west-1b"),
            "/latest/meta-data/placement/region" => m("eu-west-1"),
            "/latest/meta-data/public-keys" => m("0=deployer"),
            "/latest/meta-data/public-keys/0/openssh-key" => m("ssh-ed25519 AAAAC3Nza deployer\n"),
            "/latest/meta-data/tags/instance" if !cfg.tags.is_empty() => m(&cfg
                .tags
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join("\n")),
            p => match p.strip_prefix("/latest/meta-data/tags/instance/") {
                Some(k) => cfg
                    .tags
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| m(v))
                    .unwrap_or_else(Resp::not_found),
                None => Resp::not_found(),
            },
        }
    })
}

/// GCE metadata server: 403 without `Metadata-Flavor: Google`.
pub fn gcp(user_data: Option<&str>, faults: Faults) -> Mock {
    let user_data = user_data.map(str::to_string);
    Mock::start(faults, move |r| {
        if r.header("Metadata-Flavor") != Some("Google") || r.header("X-Forwarded-For").is_some() {
            return Resp::status(403, "Your client does not have permission to get URL. Missing Metadata-Flavor:Google header.");
        }
        let Some(p) = r.path.strip_prefix("/computeMetadata/v1/") else {
            return Resp::not_found();
        };
        let m = |s: &str| Resp::ok(s.to_string());
        match p {
            "instance/attributes/user-data" => user_data
                .clone()
                .map(|u| m(&u))
                .unwrap_or_else(Resp::not_found),
            "instance/attributes/"
                if r.query.get("recursive").map(String::as_str) == Some("true") =>
            {
                let mut doc = serde_json::json!({"enable-oslogin": "FALSE", "ssh-keys": "core:ssh-ed25519 AAAAgcp core@host"});
                if let Some(u) = &user_data {
                    doc["user-data"] = u.clone().into();
                }
                m(&doc.to_string())
            }
            "instance/hostname" => m("node-1.c.project.internal"),
            "instance/id" => m("4520031799277581759"),
            "instance/zone" => m("projects/123456789/zones/europe-west1-b"),
            "instance/network-interfaces/0/ip" => m("10.132.0.2"),
            "instance/network-interfaces/0/access-configs/0/external-ip" => m("198.51.100.9"),
            _ => Resp::not_found(),
        }
    })
}

/// Azure IMDS: 400 without `Metadata: true` or without `api-version`.
pub fn azure(user_data: Option<&[u8]>, faults: Faults) -> Mock {
    let b64 = user_data
        .map(|u| base64::engine::general_purpose::STANDARD.encode(u))
        .unwrap_or_default();
    Mock::start(faults, move |r| {
        if r.header("Metadata") != Some("true") {
            return Resp::status(
                400,
                r#"{"error":"Bad request. Required metadata header not specified"}"#,
            );
        }
        if !r.query.contains_key("api-version") {
            return Resp::status(
                400,
                r#"{"error":"Bad request. api-version was not specified in the request"}"#,
            );
        }
        match r.path.as_str() {
            "/metadata/instance/compute/userData" => Resp::ok(b64.clone()),
            "/metadata/instance" => Resp::ok(
                serde_json::json!({
                    "compute": {"name": "vm-1", "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6", "location": "westeurope",
                                "zone": "2", "vmSize": "Standard_D2s_v3", "osProfile": {"computerName": "node-az"},
                                "tagsList": [{"name": "role", "value": "worker"}]},
                    "network": {"interface": [{"ipv4": {"ipAddress": [{"privateIpAddress": "10.1.0.4", "publicIpAddress": "20.0.0.5"}]}}]}
                })
                .to_string(),
            ),
            _ => Resp::not_found(),
        }
    })
}

/// OpenStack metadata service.
pub fn openstack(user_data: Option<&str>, faults: Faults) -> Mock {
    let user_data = user_data.map(str::to_string);
    Mock::start(faults, move |r| match r.path.as_str() {
        "/openstack/latest/user_data" => user_data
            .clone()
            .map(Resp::ok)
            .unwrap_or_else(Resp::not_found),
        "/openstack/latest/meta_data.json" => Resp::ok(
            r#"{"uuid":"83679162-1378-4288-a2d4-70e13ec132aa","hostname":"node-os.novalocal","name":"node-os",
               "availability_zone":"nova","public_keys":{"mykey":"ssh-ed25519 AAAAos key"},"meta":{"role":"worker"}}"#,
        ),
        "/latest/meta-data/local-ipv4" => Resp::ok("192.168.0.10"),
        "/latest/meta-data/public-ipv4" => Resp::not_found(),
        _ => Resp::not_found(),
    })
}

/// DigitalOcean metadata service.
pub fn digitalocean(user_data: Option<&str>, faults: Faults) -> Mock {
    let user_data = user_data.map(str::to_string);
    Mock::start(faults, move |r| {
        match r.path.as_str() {
        "/metadata/v1/user-data" => user_data.clone().map(Resp::ok).unwrap_or_else(Resp::not_found),
        "/metadata/v1.json" => Resp::ok(
            serde_json::json!({
                "droplet_id": 2756294, "hostname": "node-do", "region": "ams3",
                "public_keys": ["ssh-ed25519 AAAAdo key"], "tags": ["k8s"],
                "interfaces": {
                    "public": [{"ipv4": {"ip_address": "104.131.20.105", "netmask": "255.255.192.0", "gateway": "104.131.0.1"}, "mac": "04:01:2a:0f:2a:01", "type": "public"}],
                    "private": [{"ipv4": {"ip_address": "10.132.255.113", "netmask": "255.255.0.0", "gateway": "0.0.0.0"}, "mac": "04:01:2a:0f:2a:02", "type": "private"}]
                },
                "user_data": user_data
            })
            .to_string(),
        ),
        _ => Resp::not_found(),
    }
    })
}

/// Hetzner Cloud metadata service.
pub fn hetzner(user_data: Option<&str>, faults: Faults) -> Mock {
    let user_data = user_data.map(str::to_string);
    Mock::start(faults, move |r| {
        match r.path.as_str() {
        "/hetzner/v1/userdata" => Resp::ok(user_data.clone().unwrap_or_default()),
        "/hetzner/v1/metadata" => Resp::ok(
            "availability-zone: fsn1-dc14\nhostname: node-hz\ninstance-id: 12345678\npublic-ipv4: 192.0.2.10\n\
             region: eu-central\nlocal-ipv4: ''\npublic-keys: [ssh-ed25519 AAAAhz key]\nvendor_data: blah\n",
        ),
        "/hetzner/v1/metadata/private-networks" => Resp::ok("- ip: 10.0.0.2\n  alias_ips: []\n- ip: 10.128.0.2\n"),
        _ => Resp::not_found(),
    }
    })
}
