//! Fetcher against a real HTTP server on 127.0.0.1.

use std::fs;
use std::time::Instant;

use crate::support::*;
use nodeimage::fetch::{Cache, FetchError, FetchOptions, FetchRequest, Mirror};
use test_support::files::*;
use test_support::http::*;

const PATH: &str = "/release/v1.35.1/bin/linux/amd64/kubelet";

/// `content(len, seed)` served at PATH, and an empty cache directory.
fn serve_content(len: usize, seed: u8) -> (Vec<u8>, TestServer, tempfile::TempDir) {
    let body = content(len, seed);
    let server = TestServer::files(vec![(PATH, body.clone())]);
    (body, server, tempfile::tempdir().unwrap())
}

/// Fetch PATH from `server` into a fresh cache with the digest of `body`, and check the
/// result is `body`; the cache directory.
fn fetch_body_ok(server: &TestServer, body: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = fetcher(dir.path(), test_options())
        .fetch(&server.url(PATH), &sha256(body))
        .unwrap();
    assert_eq!(fs::read(path).unwrap(), body);
    dir
}

#[test]
fn good_download_then_cache_hit_without_request() {
    let (body, server, dir) = serve_content(300_000, 1);
    let digest = sha256(&body);

    let f = fetcher(dir.path(), test_options());
    let path = f.fetch(&server.url(PATH), &digest).unwrap();
    assert_eq!(path, Cache::new(dir.path()).path_for(&digest));
    assert_eq!(path, dir.path().join("blobs/sha256").join(digest.hex()));
    assert_eq!(fs::read(&path).unwrap(), body);
    assert_eq!(server.count(), 1);
    assert!(list(&dir.path().join("partial")).is_empty());

    // Same fetcher, then a fresh one: served from the cache, no request.
    assert_eq!(f.fetch(&server.url(PATH), &digest).unwrap(), path);
    let f2 = fetcher(dir.path(), test_options());
    assert_eq!(f2.fetch(&server.url(PATH), &digest).unwrap(), path);
    assert_eq!(server.count(), 1);
}

#[test]
fn tampered_body_is_rejected_and_removed() {
    let body = content(50_000, 2);
    let tampered = content(50_000, 3);
    let server = TestServer::files(vec![(PATH, tampered.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let digest = sha256(&body);
    let url = server.url(PATH);

    let err = fetcher(dir.path(), test_options())
        .fetch(&url, &digest)
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::HashMismatch { .. }), "{err:?}");
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains(&digest.to_string()), "{msg}");
    assert!(msg.contains(&sha256(&tampered).to_string()), "{msg}");
    assert!(files_below(&dir.path().join("blobs")).is_empty());
    assert!(list(&dir.path().join("partial")).is_empty());
    assert_eq!(server.count(), 1, "a hash mismatch is not retried");
}

#[test]
fn two_500s_then_success() {
    let body = content(10_000, 4);
    let b = body.clone();
    let server = TestServer::start(move |_, i| {
        if i < 2 {
            Reply::status(500)
        } else {
            Reply::ok(&b)
        }
    });
    let _dir = fetch_body_ok(&server, &body);
    assert_eq!(server.count(), 3);
}

#[test]
fn persistent_503_names_status_and_attempts() {
    let server = TestServer::start(|_, _| Reply::status(503).header("Retry-After", "1"));
    let dir = tempfile::tempdir().unwrap();
    let mut opts = test_options();
    opts.retries = 2;
    let t = Instant::now();
    let err = fetcher(dir.path(), opts)
        .fetch(&server.url(PATH), &sha256(b"x"))
        .unwrap_err();
    // Retry-After is honored but capped by backoff_max (20 ms in tests).
    assert!(t.elapsed().as_secs() < 2);
    assert_eq!(
        err.to_string(),
        format!(
            "503 Service Unavailable for {} (after 3 attempts)",
            server.url(PATH)
        )
    );
    assert_eq!(server.count(), 3);
}

#[test]
fn cut_mid_body_is_resumed_with_range() {
    let body = content(200_000, 5);
    let half = body.len() / 2;
    let b = body.clone();
    let server = TestServer::start(move |req, i| {
        if i == 0 {
            Reply::ok(&b).header("ETag", "\"v1\"").cut_after(half)
        } else {
            ranged(req, &b, "\"v1\"")
        }
    });
    let dir = fetch_body_ok(&server, &body);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].header("range"), None);
    assert_eq!(
        reqs[1].header("range"),
        Some(format!("bytes={half}-").as_str())
    );
    assert_eq!(reqs[1].header("if-range"), Some("\"v1\""));
    assert!(list(&dir.path().join("partial")).is_empty());
}

#[test]
fn server_ignoring_range_restarts_from_zero() {
    let body = content(120_000, 6);
    let b = body.clone();
    let server = TestServer::start(move |_, i| {
        let r = Reply::ok(&b).header("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT");
        if i == 0 {
            r.cut_after(40_000)
        } else {
            r // 200 with the whole body, whatever the Range said
        }
    });
    let _dir = fetch_body_ok(&server, &body);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].range_start(), Some(40_000));
    assert_eq!(
        reqs[1].header("if-range"),
        Some("Wed, 21 Oct 2015 07:28:00 GMT")
    );
}

#[test]
fn stale_partial_that_does_not_match_is_downloaded_again() {
    // A partial left by an earlier run whose bytes are wrong: the resumed result
    // mismatches, so the fetcher discards it and downloads from 0 once.
    let body = content(80_000, 7);
    let b = body.clone();
    let server = TestServer::start(move |req, _| ranged(req, &b, "\"v2\""));
    let dir = tempfile::tempdir().unwrap();
    let digest = sha256(&body);
    let url = server.url(PATH);
    let cache = Cache::new(dir.path());
    fs::create_dir_all(dir.path().join("partial")).unwrap();
    fs::write(cache.partial_path(&digest), content(30_000, 99)).unwrap();
    fs::write(
        dir.path()
            .join("partial")
            .join(format!("sha256-{}.part.json", digest.hex())),
        format!(r#"{{"url":"{url}","etag":"\"v2\"","total":80000}}"#),
    )
    .unwrap();
    let path = fetcher(dir.path(), test_options())
        .fetch(&url, &digest)
        .unwrap();
    assert_eq!(fs::read(path).unwrap(), body);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].range_start(), Some(30_000));
    assert_eq!(reqs[1].range_start(), None);
}

#[test]
fn not_found_is_fatal_without_retries() {
    let server = TestServer::files(vec![]);
    let dir = tempfile::tempdir().unwrap();
    let url = server.url(PATH);
    let err = fetcher(dir.path(), test_options())
        .fetch(&url, &sha256(b"x"))
        .unwrap_err();
    assert_eq!(err.to_string(), format!("404 Not Found for {url}"));
    assert!(matches!(err, FetchError::HttpStatus { status: 404, .. }));
    assert_eq!(server.count(), 1);
}

#[test]
fn offline_with_empty_cache_names_url_digest_and_remedy() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{UNREACHABLE}{PATH}");
    let digest = sha256(b"kubelet");
    let opts = FetchOptions {
        offline: true,
        ..test_options()
    };
    let err = fetcher(dir.path(), opts).fetch(&url, &digest).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains(&digest.to_string()), "{msg}");
    assert!(
        msg.contains("run without --offline or pre-fill the cache"),
        "{msg}"
    );
}

#[test]
fn mirror_http_server_serves_host_and_path() {
    let body = content(40_000, 8);
    // Upstream is a closed loopback port; the mirror holds <host>/<path>.
    let upstream = format!("{UNREACHABLE}{PATH}");
    let mirror = TestServer::files(vec![(&format!("/pub/127.0.0.1{PATH}"), body.clone())]);
    let dir = tempfile::tempdir().unwrap();
    let opts = FetchOptions {
        mirrors: vec![Mirror::parse(&mirror.url("/pub/")).unwrap()],
        ..test_options()
    };
    let path = fetcher(dir.path(), opts)
        .fetch(&upstream, &sha256(&body))
        .unwrap();
    assert_eq!(fs::read(path).unwrap(), body);
    assert_eq!(mirror.count(), 1);
}

#[test]
fn mirrors_in_order_then_upstream_and_headers_only_upstream() {
    let body = content(20_000, 9);
    let empty_mirror = TestServer::files(vec![]);
    let b = body.clone();
    let upstream = TestServer::start(move |_, _| Reply::ok(&b));
    let dir = tempfile::tempdir().unwrap();
    let opts = FetchOptions {
        mirrors: vec![Mirror::parse(&empty_mirror.base).unwrap()],
        ..test_options()
    };
    let req = FetchRequest::new(upstream.url(PATH), sha256(&body))
        .with_size(body.len() as u64)
        .with_header("Authorization", "Bearer t0ken");
    let path = fetcher(dir.path(), opts).fetch_with(&req).unwrap();
    assert_eq!(fs::read(path).unwrap(), body);
    let m = empty_mirror.requests();
    assert_eq!(m.len(), 1, "404 from a mirror is not retried");
    assert!(m[0].path.ends_with(PATH) && m[0].path.starts_with("/127.0.0.1/"));
    assert_eq!(m[0].header("authorization"), None);
    assert_eq!(
        upstream.requests()[0].header("authorization"),
        Some("Bearer t0ken")
    );
}

#[test]
fn mirror_only_never_contacts_upstream_and_names_every_url() {
    let upstream = TestServer::files(vec![(PATH, b"upstream".to_vec())]);
    let m1 = TestServer::files(vec![]);
    let m2 = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = FetchOptions {
        mirrors: vec![
            Mirror::parse(&m1.base).unwrap(),
            Mirror::Dir(m2.path().to_path_buf()),
        ],
        mirror_only: true,
        ..test_options()
    };
    let err = fetcher(dir.path(), opts)
        .fetch(&upstream.url(PATH), &sha256(b"upstream"))
        .unwrap_err();
    let msg = err.to_string();
    assert_eq!(upstream.count(), 0);
    assert!(matches!(err, FetchError::AllSourcesFailed { .. }));
    let host = upstream.base.trim_start_matches("http://");
    let host = host.split(':').next().unwrap();
    assert!(msg.contains(&format!("{}/{host}{PATH}", m1.base)), "{msg}");
    assert!(
        msg.contains(&m2.path().join(host).join(&PATH[1..]).display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("--mirror-only"), "{msg}");
    assert!(msg.contains(&upstream.url(PATH)), "{msg}");
}

#[test]
fn unreachable_upstream_without_mirror_explains_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{UNREACHABLE}{PATH}");
    let mut opts = test_options();
    opts.retries = 2;
    let err = fetcher(dir.path(), opts)
        .fetch(&url, &sha256(b"x"))
        .unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        matches!(err, FetchError::Unreachable { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(
        msg.starts_with(&format!("could not reach {url}: ")),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
    assert!(
        msg.contains("to build without network access, serve the pinned files from a mirror and pass --mirror <URL|DIR> (layout: <DIR>/<host>/<path>"),
        "{msg}"
    );
    assert!(msg.contains(&format!("<DIR>/127.0.0.1{PATH}")), "{msg}");
}

#[test]
fn sha512_over_http() {
    let (body, server, dir) = serve_content(70_000, 10);
    let digest = sha512(&body);
    let path = fetcher(dir.path(), test_options())
        .fetch(&server.url(PATH), &digest)
        .unwrap();
    assert_eq!(path, dir.path().join("blobs/sha512").join(digest.hex()));
    assert_eq!(fs::read(&path).unwrap(), body);
    // A wrong sha512 names both sha512 values.
    let other = sha512(b"other");
    let msg = fetcher(dir.path(), test_options())
        .fetch(&server.url(PATH), &other)
        .unwrap_err()
        .to_string();
    test_support::assert_contains(&msg, &[&other.to_string(), &digest.to_string()]);
}

#[test]
fn size_mismatch_is_reported() {
    let (body, server, dir) = serve_content(1000, 11);
    let req = FetchRequest::new(server.url(PATH), sha256(&body)).with_size(999);
    let msg = fetcher(dir.path(), test_options())
        .fetch_with(&req)
        .unwrap_err()
        .to_string();
    test_support::assert_contains(&msg, &["expected 999 bytes", "1000"]);
}

#[test]
fn fetch_all_in_parallel_with_duplicates() {
    let bodies: Vec<Vec<u8>> = (0..6)
        .map(|i| content(30_000 + i * 1000, i as u8))
        .collect();
    let files: Vec<(String, Vec<u8>)> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| (format!("/f{i}"), b.clone()))
        .collect();
    let f2 = files.clone();
    let server = TestServer::start(move |req, _| {
        f2.iter()
            .find(|(p, _)| *p == req.path)
            .map(|(_, b)| Reply::ok(b))
            .unwrap_or_else(|| Reply::status(404))
    });
    let dir = tempfile::tempdir().unwrap();
    let mut items: Vec<FetchRequest> = files
        .iter()
        .map(|(p, b)| FetchRequest::new(server.url(p), sha256(b)))
        .collect();
    items.push(items[0].clone());
    let paths = fetcher(dir.path(), test_options())
        .fetch_all(&items)
        .unwrap();
    assert_eq!(paths.len(), 7);
    for (i, p) in paths.iter().enumerate() {
        assert_eq!(fs::read(p).unwrap(), bodies[i % 6]);
    }
    assert_eq!(server.count(), 6, "the duplicate is served from the cache");

    // Failures are all reported.
    let bad = vec![
        FetchRequest::new(server.url("/missing-a"), sha256(b"a")),
        FetchRequest::new(server.url("/f1"), sha256(&bodies[1])),
        FetchRequest::new(server.url("/missing-b"), sha256(b"b")),
    ];
    let msg = fetcher(dir.path(), test_options())
        .fetch_all(&bad)
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("2 downloads failed"), "{msg}");
    test_support::assert_contains(&msg, &["/missing-a", "/missing-b"]);
}

#[test]
fn stalled_body_times_out_and_resumes() {
    let body = content(90_000, 12);
    let b = body.clone();
    let server = TestServer::start(move |req, i| {
        if i == 0 {
            Reply::ok(&b)
                .header("ETag", "\"s\"")
                .cut_after(30_000)
                .stall(std::time::Duration::from_secs(3))
        } else {
            ranged(req, &b, "\"s\"")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let opts = FetchOptions {
        read_timeout: std::time::Duration::from_millis(300),
        ..test_options()
    };
    let t = Instant::now();
    let path = fetcher(dir.path(), opts)
        .fetch(&server.url(PATH), &sha256(&body))
        .unwrap();
    assert!(
        t.elapsed().as_secs() < 3,
        "the read timeout cut the stall short"
    );
    assert_eq!(fs::read(path).unwrap(), body);
    assert_eq!(server.requests()[1].range_start(), Some(30_000));
}
