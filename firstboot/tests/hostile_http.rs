//! firstboot's HTTP clients against a hostile server on 127.0.0.1 (issue 11, M1 and M7):
//! an endless body, a huge announced length, a drip-feed, gzip bombs, redirects that
//! change origin, loop or leave http(s). Each must fail clearly, within its deadline,
//! naming the size or what happened, with bounded memory; headers never follow a
//! redirect to another origin.
//!
//! The https → http rule itself is a unit test in `net/http.rs`: firstboot's clients
//! trust only the public web PKI, so no local test server can speak https to them.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use firstboot::ignition::{stage, IgnitionError};
use firstboot::net::NetError;
use firstboot::source::{acquire, DeviceSet, Platform, SourceContext, SourceError, Timeouts};
use serde_json::json;
use test_support::http::{gzip_bomb, Behaviour, Hostile};

fn fast() -> Timeouts {
    Timeouts {
        request: Duration::from_millis(400),
        deadline: Duration::from_millis(1500),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
    }
}

/// An EC2-style service (IMDSv1: the token call is 404) whose user data is `user_data`.
fn ec2(user_data: Behaviour) -> Hostile {
    Hostile::start(move |r| match r.path.as_str() {
        "/latest/user-data" => user_data.clone(),
        _ => Behaviour::Status(404),
    })
}

fn ctx(root: &Path, h: &Hostile) -> SourceContext {
    SourceContext::new(root, "")
        .with_platform(Platform::Ec2)
        .with_endpoint(Platform::Ec2, &h.base)
        .with_devices(DeviceSet::files(Vec::<std::path::PathBuf>::new()))
        .with_timeouts(fast())
}

/// The measurement from the issue: the firstboot binary against EC2 user data that never
/// ends grew to 1.97 GB in 60 s and then named neither the size nor what happened. It
/// must stop at the size limit at once, say so, and stay small.
#[test]
fn the_binary_against_an_endless_user_data_stops_at_the_limit_with_bounded_memory() {
    // GNU time reports the peak resident set of the process it starts (a wait4 of its
    // own small child: a child of this test would inherit the test's high-water mark).
    if !test_support::needs_tool("the_binary_against_an_endless_user_data", "time", "time") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let report = root.path().join("time.out");
    let h = ec2(Behaviour::Endless);
    let started = Instant::now();
    let out = Command::new("time")
        .arg("-o")
        .arg(&report)
        .args(["-f", "%M"])
        .arg(env!("CARGO_BIN_EXE_firstboot"))
        .args([
            "--root",
            root.path().join("tree").to_str().unwrap(),
            "--platform",
            "ec2",
            "--metadata-url",
            &h.base,
        ])
        .output()
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let peak_kib: u64 = std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let peak_mib = peak_kib / 1024;
    println!(
        "endless user data: exit {:?}, {} ms, peak RSS {peak_mib} MiB: {}",
        out.status.code(),
        took.as_millis(),
        stdout.trim()
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    test_support::assert_contains(
        &stdout,
        &["larger than 16777216 bytes", "/latest/user-data"],
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(peak_mib < 200, "peak RSS {peak_mib} MiB");
    assert_eq!(
        h.requests()
            .iter()
            .filter(|r| r.path == "/latest/user-data")
            .count(),
        1,
        "a body over the limit is not fetched again"
    );
}

#[test]
fn a_huge_content_length_is_refused_before_reading() {
    let d = tempfile::tempdir().unwrap();
    let h = ec2(Behaviour::Announced(10 << 30));
    let t = Instant::now();
    let e = acquire(&ctx(d.path(), &h)).unwrap_err();
    assert!(
        matches!(e, SourceError::Net(NetError::TooLarge { .. })),
        "{e}"
    );
    let s = e.to_string();
    assert!(s.contains("Content-Length: 10737418240"), "{s}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

/// One byte a second: every try ends at the request timeout, the source at its
/// deadline, and the error says the body was being read.
#[test]
fn a_drip_feed_ends_at_the_deadline_naming_the_body() {
    let d = tempfile::tempdir().unwrap();
    let h = ec2(Behaviour::Drip {
        len: 1000,
        every: Duration::from_secs(1),
    });
    let t = Instant::now();
    let e = acquire(&ctx(d.path(), &h)).unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(e, SourceError::Net(NetError::Timeout { .. })),
        "{e}"
    );
    let s = e.to_string();
    assert!(s.contains("reading the body after"), "{s}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

/// gzip'd user data that decompresses beyond the user-data limit.
#[test]
fn a_gzip_bomb_as_user_data_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let h = ec2(Behaviour::Body(gzip_bomb(80)));
    let e = acquire(&ctx(d.path(), &h)).unwrap_err().to_string();
    assert!(e.contains("larger than 64 MiB"), "{e}");
}

fn ignition(cfg: serde_json::Value) -> Result<firstboot::ignition::StagedIgnition, IgnitionError> {
    let mut cfg = cfg;
    cfg["ignition"] = json!({"version": "3.4.0"});
    stage("test", cfg.to_string().as_bytes(), fast())
}

/// Like [`ignition`], with time to read the whole budget (256 MiB) in a debug build.
fn ignition_slow(
    cfg: serde_json::Value,
) -> Result<firstboot::ignition::StagedIgnition, IgnitionError> {
    let mut cfg = cfg;
    cfg["ignition"] = json!({"version": "3.4.0"});
    let t = Timeouts {
        request: Duration::from_secs(60),
        deadline: Duration::from_secs(120),
        ..fast()
    };
    stage("test", cfg.to_string().as_bytes(), t)
}

/// An Ignition file fetched with `compression: gzip` that decompresses beyond the
/// staging budget: an error naming the budget, never a silently truncated file.
#[test]
fn an_ignition_gzip_bomb_is_an_error_not_a_truncated_file() {
    let bomb = gzip_bomb(300);
    let h = Hostile::start(move |_| Behaviour::Body(bomb.clone()));
    let e = ignition_slow(json!({"storage": {"files": [
        {"path": "/etc/big", "contents": {"source": h.url("/big.gz"), "compression": "gzip"}}
    ]}}))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("storage.files[/etc/big].contents.compression")
            && e.contains("decompresses to")
            && e.contains("268435456-byte budget"),
        "{e}"
    );
}

/// Many resources, each under the limit, together over the budget.
#[test]
fn all_ignition_contents_share_one_budget() {
    use base64::Engine;
    let bomb = base64::engine::general_purpose::STANDARD.encode(gzip_bomb(100));
    let file = |i: usize| {
        json!({"path": format!("/etc/f{i}"), "contents": {
            "source": format!("data:;base64,{bomb}"), "compression": "gzip"}})
    };
    let e = ignition(json!({"storage": {"files": [file(0), file(1), file(2)]}}))
        .unwrap_err()
        .to_string();
    test_support::assert_contains(
        &e,
        &["storage.files[/etc/f2]", "budget for all the contents"],
    );
    // Two fit.
    assert!(ignition(json!({"storage": {"files": [file(0), file(1)]}})).is_ok());
}

/// An Ignition resource larger than what is left of the budget stops downloading there.
#[test]
fn an_endless_ignition_resource_stops_at_the_budget() {
    let h = Hostile::start(|_| Behaviour::Endless);
    let e = ignition_slow(json!({"storage": {"files": [
        {"path": "/etc/endless", "contents": {"source": h.url("/endless")}}
    ]}}))
    .unwrap_err()
    .to_string();
    assert!(e.contains("larger than 268435456 bytes"), "{e}");
}

/// The caller's headers (here an Ignition `httpHeaders` secret) go to the origin they
/// were meant for: kept across a redirect on the same origin, dropped when it leads to
/// another host (`localhost` is not `127.0.0.1`).
#[test]
fn headers_do_not_follow_a_redirect_to_another_origin() {
    let other = Hostile::start(|_| Behaviour::Body(b"from the other host".to_vec()));
    let other_port = other.base.rsplit(':').next().unwrap().to_string();
    let origin = Hostile::start(move |r| match r.path.as_str() {
        "/same" => Behaviour::Redirect(302, "/same-target".into()),
        "/same-target" => Behaviour::Body(b"same origin".to_vec()),
        "/away" => Behaviour::Redirect(307, format!("http://localhost:{other_port}/target")),
        _ => Behaviour::Status(404),
    });
    let hdr = json!([{"name": "X-Secret", "value": "s3cr3t"}]);
    let s = ignition(json!({"storage": {"files": [
        {"path": "/etc/same", "contents": {"source": origin.url("/same"), "httpHeaders": hdr}},
        {"path": "/etc/away", "contents": {"source": origin.url("/away"), "httpHeaders": hdr}}
    ]}}))
    .unwrap();
    assert_eq!(s.file_paths(), ["/etc/same", "/etc/away"]);
    let with_secret = |reqs: Vec<test_support::http::Request>| {
        reqs.iter()
            .filter(|r| r.header("x-secret") == Some("s3cr3t"))
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        with_secret(origin.requests()),
        ["/same", "/same-target", "/away"]
    );
    assert_eq!(other.requests().len(), 1);
    assert!(
        with_secret(other.requests()).is_empty(),
        "{:?}",
        other.requests()
    );
}

#[test]
fn redirect_loops_and_other_schemes_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let h = Hostile::start(|r| match r.path.as_str() {
        "/latest/user-data" => Behaviour::Redirect(302, "/loop".into()),
        "/loop" => Behaviour::Redirect(302, "/loop".into()),
        "/file" => Behaviour::Redirect(302, "file:///etc/shadow".into()),
        _ => Behaviour::Status(404),
    });
    let e = acquire(&ctx(d.path(), &h)).unwrap_err();
    assert!(
        matches!(e, SourceError::Net(NetError::Redirect { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("more than 10 redirects"), "{e}");
    let e = ignition(json!({"storage": {"files": [
        {"path": "/etc/x", "contents": {"source": h.url("/file")}}
    ]}}))
    .unwrap_err()
    .to_string();
    test_support::assert_contains(
        &e,
        &[
            "redirect to file:///etc/shadow refused",
            "http and https only",
        ],
    );
}

/// The kernel-command-line URL: https, or http only with a pinned digest.
#[test]
fn a_plain_http_config_url_needs_a_digest() {
    let d = tempfile::tempdir().unwrap();
    let h = Hostile::start(|_| Behaviour::Body(b"version: 1\n".to_vec()));
    let c = SourceContext::new(
        d.path(),
        &format!("firstboot.config_url={}/node.yaml", h.base),
    )
    .with_timeouts(fast());
    let e = acquire(&c).unwrap_err().to_string();
    test_support::assert_contains(&e, &["is plain HTTP", "firstboot.config_sha256"]);
    assert!(h.requests().is_empty(), "nothing is fetched");
}
