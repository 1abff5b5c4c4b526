//! Network sources against mock metadata servers on 127.0.0.1 (one per cloud), plus the
//! kernel-command-line URL, retries, deadlines and refused connections.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};
use test_support::{http, metadata};

use firstboot::net::NetError;
use firstboot::source::{
    acquire, Acquired, Attempt, DeviceSet, Platform, SourceContext, SourceError, Timeouts,
};
use sha2::Digest;
use test_support::http::{Faults, Mock};

const NODE_YAML: &str = "version: 1\nrole: worker\nhostname: node-1\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1:6443\n";

fn fast() -> Timeouts {
    Timeouts {
        request: Duration::from_millis(300),
        deadline: Duration::from_millis(1500),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
    }
}

fn ctx(root: &Path, platform: Platform, mock: &Mock) -> SourceContext {
    SourceContext::new(root, "")
        .with_platform(platform)
        .with_endpoint(platform, &mock.base)
        .with_devices(DeviceSet::files(Vec::<std::path::PathBuf>::new()))
        .with_timeouts(fast())
}

/// What `acquire` finds on `platform` with `mock` as its metadata service, checking the
/// source that supplied it is `source`.
fn acquired(root: &Path, platform: Platform, mock: &Mock, source: &str) -> Acquired {
    let a = acquire(&ctx(root, platform, mock)).unwrap();
    assert_eq!(a.source, source);
    a
}

/// Some source `a` tried and passed over is one `attempted` accepts.
fn assert_attempted(a: &Acquired, attempted: impl Fn(&Attempt) -> bool) {
    assert!(a.attempts.iter().any(attempted), "{:?}", a.attempts);
}

fn ec2_cfg(user_data: Option<&str>) -> metadata::Ec2 {
    metadata::Ec2 {
        tags: vec![
            ("Name".into(), "worker-1".into()),
            ("team".into(), "k8s".into()),
        ],
        ..metadata::Ec2::serving(user_data)
    }
}

#[test]
fn ec2_imdsv2_user_data_and_metadata() {
    let d = tempfile::tempdir().unwrap();
    let mock = metadata::ec2(ec2_cfg(Some(NODE_YAML)), Faults::default());
    let a = acquired(d.path(), Platform::Ec2, &mock, "ec2");
    assert_eq!(a.node_config.hostname.as_deref(), Some("node-1"));
    let m = &a.metadata;
    assert_eq!(m.instance_id.as_deref(), Some("i-0123456789abcdef0"));
    assert_eq!(m.local_ipv4, Some("172.31.5.6".parse().unwrap()));
    assert_eq!(m.public_ipv4, Some("203.0.113.7".parse().unwrap()));
    assert_eq!(
        m.hostname.as_deref(),
        Some("ip-172-31-5-6.eu-west-1.compute.internal")
    );
    assert_eq!(m.availability_zone.as_deref(), Some("eu-west-1b"));
    assert_eq!(m.region.as_deref(), Some("eu-west-1"));
    assert_eq!(
        m.ssh_authorized_keys,
        vec!["ssh-ed25519 AAAAC3Nza deployer".to_string()]
    );
    assert_eq!(
        m.attributes.get("tag:Name").map(String::as_str),
        Some("worker-1")
    );
    assert_eq!(
        m.attributes.get("tag:team").map(String::as_str),
        Some("k8s")
    );
    let hits = mock.hits();
    assert_eq!(hits[0], "PUT /latest/api/token", "{hits:?}");
    assert_eq!(
        hits.iter().filter(|h| h.contains("api/token")).count(),
        1,
        "token is fetched once: {hits:?}"
    );
    assert_attempted(&a, |x| x.source == "nodeconfig-partition");
}

#[test]
fn ec2_falls_back_to_imdsv1_only_when_the_token_call_is_unsupported() {
    let d = tempfile::tempdir().unwrap();
    let mock = metadata::ec2(
        metadata::Ec2 {
            v1_only: true,
            ..ec2_cfg(Some(NODE_YAML))
        },
        Faults::default(),
    );
    let a = acquired(d.path(), Platform::Ec2, &mock, "ec2");
    assert_eq!(
        a.metadata.instance_id.as_deref(),
        Some("i-0123456789abcdef0")
    );
}

#[test]
fn ec2_token_refusal_is_an_error_not_a_downgrade() {
    let d = tempfile::tempdir().unwrap();
    for status in [401u16, 403] {
        let mock = metadata::ec2(
            metadata::Ec2 {
                token_status: Some(status),
                ..ec2_cfg(Some(NODE_YAML))
            },
            Faults::default(),
        );
        let e = acquire(&ctx(d.path(), Platform::Ec2, &mock)).unwrap_err();
        assert!(
            matches!(e, SourceError::Net(NetError::Status { status: s, .. }) if s == status),
            "{e}"
        );
        assert!(e.to_string().starts_with("ec2: "), "{e}");
        assert!(
            mock.hits().iter().all(|h| !h.starts_with("GET")),
            "no IMDSv1 GETs: {:?}",
            mock.hits()
        );
    }
}

#[test]
fn ec2_without_user_data_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let mock = metadata::ec2(ec2_cfg(None), Faults::default());
    let e = acquire(&ctx(d.path(), Platform::Ec2, &mock))
        .unwrap_err()
        .to_string();
    test_support::assert_contains(&e, &["ec2 (present, no user data)", "platform ec2"]);
}

#[test]
fn ec2_retries_server_errors_then_succeeds() {
    let d = tempfile::tempdir().unwrap();
    let mock = metadata::ec2(
        ec2_cfg(Some(NODE_YAML)),
        Faults {
            failures: 3,
            delay: Duration::ZERO,
        },
    );
    acquired(d.path(), Platform::Ec2, &mock, "ec2");
    assert!(mock.hits().len() > 3);
}

#[test]
fn a_slow_server_is_a_timeout_within_the_deadline() {
    let d = tempfile::tempdir().unwrap();
    let mock = metadata::ec2(
        ec2_cfg(Some(NODE_YAML)),
        Faults {
            failures: 0,
            delay: Duration::from_secs(5),
        },
    );
    let t = Instant::now();
    let e = acquire(&ctx(d.path(), Platform::Ec2, &mock)).unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(e, SourceError::Net(NetError::Timeout { .. })),
        "{e}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(e.to_string().contains("/latest/api/token"), "{e}");
}

#[test]
fn a_server_that_keeps_failing_is_an_http_error_at_the_deadline() {
    let d = tempfile::tempdir().unwrap();
    let mock = metadata::gcp(
        Some(NODE_YAML),
        Faults {
            failures: 1000,
            delay: Duration::ZERO,
        },
    );
    let t = Instant::now();
    let e = acquire(&ctx(d.path(), Platform::Gcp, &mock)).unwrap_err();
    assert!(
        matches!(e, SourceError::Net(NetError::Status { status: 500, .. })),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn connection_refused_is_a_quick_absent() {
    let d = tempfile::tempdir().unwrap();
    let url = http::closed_port_url();
    // Every platform with a metadata service.
    for p in Platform::ALL
        .into_iter()
        .filter(|p| p.default_endpoint().is_some())
    {
        let c = SourceContext::new(d.path(), "")
            .with_platform(p)
            .with_endpoint(p, &url)
            .with_devices(DeviceSet::files(Vec::<std::path::PathBuf>::new()))
            .with_timeouts(Timeouts {
                deadline: Duration::from_secs(30),
                ..fast()
            });
        let t = Instant::now();
        let e = acquire(&c).unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{p}: {:?}",
            t.elapsed()
        );
        let s = e.to_string();
        assert!(
            matches!(e, SourceError::NoSource { .. }) && s.contains("connection refused"),
            "{p}: {s}"
        );
    }
}

#[test]
fn gcp_requires_the_flavor_header_and_reads_attributes() {
    let d = tempfile::tempdir().unwrap();
    let mock = metadata::gcp(Some(NODE_YAML), Faults::default());
    let a = acquired(d.path(), Platform::Gcp, &mock, "gcp");
    let m = &a.metadata;
    assert_eq!(m.hostname.as_deref(), Some("node-1.c.project.internal"));
    assert_eq!(m.instance_id.as_deref(), Some("4520031799277581759"));
    assert_eq!(m.local_ipv4, Some("10.132.0.2".parse().unwrap()));
    assert_eq!(m.public_ipv4, Some("198.51.100.9".parse().unwrap()));
    assert_eq!(m.availability_zone.as_deref(), Some("europe-west1-b"));
    assert_eq!(m.region.as_deref(), Some("europe-west1"));
    assert_eq!(
        m.ssh_authorized_keys,
        vec!["ssh-ed25519 AAAAgcp core@host".to_string()]
    );
    assert_eq!(
        m.attributes.get("enable-oslogin").map(String::as_str),
        Some("FALSE")
    );
    assert!(!m.attributes.contains_key("user-data"));
}

#[test]
fn azure_imds_user_data_is_base64_decoded() {
    let d = tempfile::tempdir().unwrap();
    let mock = metadata::azure(Some(NODE_YAML.as_bytes()), Faults::default());
    let a = acquired(d.path(), Platform::Azure, &mock, "azure");
    let m = &a.metadata;
    assert_eq!(m.hostname.as_deref(), Some("node-az"));
    assert_eq!(
        m.instance_id.as_deref(),
        Some("02aab8a4-74ef-476e-8182-f6d2ba4166a6")
    );
    assert_eq!(m.region.as_deref(), Some("westeurope"));
    assert_eq!(m.local_ipv4, Some("10.1.0.4".parse().unwrap()));
    assert_eq!(m.public_ipv4, Some("20.0.0.5".parse().unwrap()));
    assert_eq!(
        m.attributes.get("tag:role").map(String::as_str),
        Some("worker")
    );
}

#[test]
fn azure_falls_back_to_custom_data_from_the_agent_or_the_ovf_iso() {
    let d = tempfile::tempdir().unwrap();
    let mock = metadata::azure(None, Faults::default());
    // 1. The provisioning ISO with ovf-env.xml.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(NODE_YAML);
    let ovf = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Environment xmlns=\"http://schemas.dmtf.org/ovf/environment/1\" \
             xmlns:wa=\"http://schemas.microsoft.com/windowsazure\"><wa:ProvisioningSection><LinuxProvisioningConfigurationSet>\
             <HostName>node-ovf</HostName><UserName>azureuser</UserName><CustomData>{b64}</CustomData>\
             </LinuxProvisioningConfigurationSet></wa:ProvisioningSection></Environment>"
        );
    let iso = test_support::images::iso_image(
        d.path(),
        "ovf.iso",
        "rd_rdfe_stable",
        "genisoimage",
        &["-J", "-r"],
        &[("ovf-env.xml", ovf.as_bytes())],
    );
    let c = ctx(d.path(), Platform::Azure, &mock).with_devices(DeviceSet::files([iso]));
    let a = acquire(&c).unwrap();
    assert_eq!(a.source, "azure-ovf");
    assert_eq!(a.metadata.hostname.as_deref(), Some("node-ovf"));
    assert_attempted(&a, |x| {
        x.source == "azure" && x.outcome.contains("no user data")
    });

    // 2. The agent's copy wins when present (base64, as the agent stores it).
    fs::create_dir_all(d.path().join("var/lib/waagent")).unwrap();
    fs::write(d.path().join("var/lib/waagent/CustomData"), &b64).unwrap();
    let a = acquired(d.path(), Platform::Azure, &mock, "azure-ovf");
    assert_eq!(a.node_config.hostname.as_deref(), Some("node-1"));
}

#[test]
fn azure_refuses_requests_without_metadata_header_so_the_mock_is_strict() {
    // Guard the mock itself: a plain GET is refused like the real IMDS does.
    let mock = metadata::azure(Some(b"x"), Faults::default());
    let r = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!(
            "{}/metadata/instance?api-version=2021-02-01",
            mock.base
        ))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[test]
fn openstack_metadata_service() {
    let d = tempfile::tempdir().unwrap();
    let mock = metadata::openstack(Some(NODE_YAML), Faults::default());
    let a = acquired(d.path(), Platform::OpenStack, &mock, "openstack-metadata");
    let m = &a.metadata;
    assert_eq!(
        m.instance_id.as_deref(),
        Some("83679162-1378-4288-a2d4-70e13ec132aa")
    );
    assert_eq!(m.hostname.as_deref(), Some("node-os.novalocal"));
    assert_eq!(m.availability_zone.as_deref(), Some("nova"));
    assert_eq!(m.local_ipv4, Some("192.168.0.10".parse().unwrap()));
    assert_eq!(m.public_ipv4, None);
    assert_eq!(
        m.attributes.get("meta:role").map(String::as_str),
        Some("worker")
    );
    assert_attempted(&a, |x| x.source == "openstack-config-drive");
}

#[test]
fn digitalocean_metadata_service() {
    let d = tempfile::tempdir().unwrap();
    let mock = metadata::digitalocean(Some(NODE_YAML), Faults::default());
    let a = acquired(d.path(), Platform::DigitalOcean, &mock, "digitalocean");
    let m = &a.metadata;
    assert_eq!(m.instance_id.as_deref(), Some("2756294"));
    assert_eq!(m.hostname.as_deref(), Some("node-do"));
    assert_eq!(m.region.as_deref(), Some("ams3"));
    assert_eq!(m.public_ipv4, Some("104.131.20.105".parse().unwrap()));
    assert_eq!(m.local_ipv4, Some("10.132.255.113".parse().unwrap()));
    assert!(m.attributes.contains_key("tag:k8s"));
}

#[test]
fn hetzner_metadata_service() {
    let d = tempfile::tempdir().unwrap();
    let mock = metadata::hetzner(Some(NODE_YAML), Faults::default());
    let a = acquired(d.path(), Platform::Hetzner, &mock, "hetzner");
    let m = &a.metadata;
    assert_eq!(m.instance_id.as_deref(), Some("12345678"));
    assert_eq!(m.hostname.as_deref(), Some("node-hz"));
    assert_eq!(m.availability_zone.as_deref(), Some("fsn1-dc14"));
    assert_eq!(m.region.as_deref(), Some("eu-central"));
    assert_eq!(m.public_ipv4, Some("192.0.2.10".parse().unwrap()));
    assert_eq!(m.local_ipv4, Some("10.0.0.2".parse().unwrap()));
    assert_eq!(
        m.ssh_authorized_keys,
        vec!["ssh-ed25519 AAAAhz key".to_string()]
    );
    // Empty user data means none.
    let empty = metadata::hetzner(None, Faults::default());
    let e = acquire(&ctx(d.path(), Platform::Hetzner, &empty))
        .unwrap_err()
        .to_string();
    assert!(e.contains("hetzner (present, no user data)"), "{e}");
}

#[test]
fn cloud_config_user_data_is_refused_naming_the_source() {
    let d = tempfile::tempdir().unwrap();
    let mock = metadata::digitalocean(Some("#cloud-config\npackages: [vim]\n"), Faults::default());
    let e = acquire(&ctx(d.path(), Platform::DigitalOcean, &mock))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("digitalocean: user data is a cloud-init document"),
        "{e}"
    );
}

/// A fake machine: one NIC, DMI uuid and serial.
fn machine_root(root: &Path) {
    for (p, v) in [
        ("sys/class/net/lo/address", "00:00:00:00:00:00\n"),
        ("sys/class/net/ens3/address", "52:54:00:AB:CD:EF\n"),
        ("sys/class/net/ens4/address", "52:54:00:00:00:02\n"),
        (
            "sys/class/dmi/id/product_uuid",
            "4C4C4544-0042-4610-8052-B4C04F4E3132\n",
        ),
        ("sys/class/dmi/id/product_serial", "SN 42/7\n"),
    ] {
        fs::create_dir_all(root.join(p).parent().unwrap()).unwrap();
        fs::write(root.join(p), v).unwrap();
    }
}

fn url_server() -> Mock {
    Mock::start(Faults::default(), |r| {
        if r.path == "/configs/52%3A54%3A00%3Aab%3Acd%3Aef/4c4c4544-0042-4610-8052-b4c04f4e3132/SN%2042%2F7.yaml" {
            http::Resp::ok(NODE_YAML)
        } else {
            http::Resp::not_found()
        }
    })
}

#[test]
fn kernel_cmdline_url_with_placeholders_and_hash() {
    let d = tempfile::tempdir().unwrap();
    machine_root(d.path());
    let mock = url_server();
    let sha = hex::encode(sha2::Sha256::digest(NODE_YAML));
    let cmdline = format!(
        "ro quiet firstboot.config_url={}/configs/{{mac}}/{{uuid}}/{{serial}}.yaml firstboot.config_sha256={sha}",
        mock.base
    );
    fs::create_dir_all(d.path().join("proc")).unwrap();
    fs::write(d.path().join("proc/cmdline"), &cmdline).unwrap();
    let c = SourceContext::from_system(d.path(), None)
        .unwrap()
        .with_timeouts(fast());
    let a = acquire(&c).unwrap();
    assert_eq!(a.source, "kernel-cmdline-url");
    assert_eq!(a.node_config.hostname.as_deref(), Some("node-1"));
    assert!(
        a.attempts.is_empty(),
        "the URL is the only source: {:?}",
        a.attempts
    );
}

#[test]
fn kernel_cmdline_url_relative_to_the_network_boot_base() {
    // A network boot's boot.ipxe passes nodeimage.base_url= (the directory it was served
    // from) and, by default, a config URL relative to it.
    let d = tempfile::tempdir().unwrap();
    machine_root(d.path());
    let mock = url_server();
    let sha = hex::encode(sha2::Sha256::digest(NODE_YAML));
    let c = SourceContext::new(
        d.path(),
        &format!(
            "nodeimage.base_url={}/configs/boot.ipxe firstboot.config_url={{mac}}/{{uuid}}/{{serial}}.yaml firstboot.config_sha256={sha}",
            mock.base
        ),
    )
    .with_timeouts(fast());
    let a = acquire(&c).unwrap();
    assert_eq!(a.source, "kernel-cmdline-url");
    assert_eq!(a.node_config.hostname.as_deref(), Some("node-1"));
    // Without a base, a relative URL is an error that says what is missing.
    let c = SourceContext::new(
        d.path(),
        &format!("firstboot.config_url=config/{{mac}}.yaml firstboot.config_sha256={sha}"),
    )
    .with_timeouts(fast());
    let e = acquire(&c).unwrap_err().to_string();
    assert!(e.contains("nodeimage.base_url"), "{e}");
    // The plain-HTTP rule holds for the resolved URL.
    let c = SourceContext::new(
        d.path(),
        &format!(
            "nodeimage.base_url={}/configs/ firstboot.config_url=x.yaml",
            mock.base
        ),
    )
    .with_timeouts(fast());
    let e = acquire(&c).unwrap_err().to_string();
    assert!(e.contains("plain HTTP"), "{e}");
}

#[test]
fn kernel_cmdline_url_hash_mismatch_and_missing_document_are_errors() {
    let d = tempfile::tempdir().unwrap();
    machine_root(d.path());
    let mock = url_server();
    let wrong = "0".repeat(64);
    let c = SourceContext::new(
        d.path(),
        &format!("firstboot.config_url={}/configs/{{mac}}/{{uuid}}/{{serial}}.yaml firstboot.config_sha256={wrong}", mock.base),
    )
    .with_timeouts(fast());
    let e = acquire(&c).unwrap_err();
    assert!(matches!(e, SourceError::HashMismatch { .. }), "{e}");
    assert!(e.to_string().contains("expected sha256 0000"), "{e}");

    let c = SourceContext::new(
        d.path(),
        &format!(
            "firstboot.config_url={}/nothing-here firstboot.config_sha256={}",
            mock.base, wrong
        ),
    )
    .with_timeouts(fast());
    let e = acquire(&c).unwrap_err();
    assert!(
        matches!(e, SourceError::Net(NetError::Status { status: 404, .. })),
        "{e}"
    );

    let c =
        SourceContext::new(d.path(), "firstboot.config_url=ftp://example/x").with_timeouts(fast());
    assert!(acquire(&c)
        .unwrap_err()
        .to_string()
        .contains("expected an http:// or https:// URL"));
    let c = SourceContext::new(
        d.path(),
        "firstboot.config_url=http://127.0.0.1:1/x firstboot.config_sha256=abc",
    );
    assert!(acquire(&c)
        .unwrap_err()
        .to_string()
        .contains("64 hexadecimal digits"));
}
