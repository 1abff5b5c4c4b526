//! Bearer-token auth: a small proxy in front of docker-registry demands
//! `Authorization: Bearer <token>` (401 + `WWW-Authenticate: Bearer realm=…,service=…`
//! otherwise), serves the token at /token for Basic credentials from an auth file, and
//! redirects blob requests to the registry itself (as registry.k8s.io does to storage).
//! (A raw `TcpListener`, one exchange per connection: tiny_http sometimes held a request
//! back on parallel keep-alive connections.)

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support::*;
use base64::Engine as _;
use nodeimage::fetch::{Cache, FetchOptions, ProgressMode};
use nodeimage::oci::{self, PullOptions, Registry, RegistryOptions};
use test_support::registry::*;

const TOKEN: &str = "tok-3f9a";
const USER: &str = "puller";
const PASS: &str = "s3cret";

/// One HTTP/1.1 exchange per connection (`Connection: close`), a thread per connection.
fn respond(mut s: TcpStream, status: u16, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

/// Like `respond`, for HEAD: the length of `body` but not its bytes.
fn respond_head(mut s: TcpStream, status: u16, headers: &[(String, String)], len: usize) {
    let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
}

/// What the proxy saw: tokens handed out, token requests that carried credentials.
#[derive(Default)]
struct Seen {
    asked: AtomicUsize,
    issued: AtomicUsize,
    with_credentials: AtomicUsize,
}

fn handle(stream: TcpStream, realm: &str, backend: &str, seen: &Seen) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let method = line.split_whitespace().next().unwrap_or("GET").to_string();
    let url = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap() == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
    );
    if url.starts_with("/token") {
        seen.asked.fetch_add(1, Ordering::SeqCst);
        if header("authorization").is_some() {
            seen.with_credentials.fetch_add(1, Ordering::SeqCst);
        }
        let ok = header("authorization").as_deref() == Some(basic.as_str())
            && url.contains("service=test-registry")
            && url.contains("scope=repository%3Atest%2Fsecret%3Apull");
        if ok {
            seen.issued.fetch_add(1, Ordering::SeqCst);
            respond(
                stream,
                200,
                &[],
                format!("{{\"token\":\"{TOKEN}\",\"expires_in\":300}}").as_bytes(),
            );
        } else {
            respond(stream, 401, &[], b"denied");
        }
        return;
    }
    if header("authorization") != Some(format!("Bearer {TOKEN}")) {
        let challenge = format!("Bearer realm=\"{realm}\",service=\"test-registry\"");
        respond(
            stream,
            401,
            &[("WWW-Authenticate".into(), challenge)],
            b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
        );
        return;
    }
    // Blobs live elsewhere (as registry.k8s.io sends them to storage): redirect there.
    if url.contains("/blobs/") {
        respond(
            stream,
            307,
            &[("Location".into(), format!("{backend}{url}"))],
            b"",
        );
        return;
    }
    let mut fwd = reqwest::blocking::Client::new().get(format!("{backend}{url}"));
    if let Some(a) = header("accept") {
        fwd = fwd.header("Accept", a);
    }
    match fwd.send() {
        Ok(r) => {
            let status = r.status().as_u16();
            let copied: Vec<(String, String)> = ["content-type", "docker-content-digest"]
                .iter()
                .filter_map(|n| {
                    r.headers()
                        .get(*n)
                        .map(|v| (n.to_string(), v.to_str().unwrap().to_string()))
                })
                .collect();
            let body = r.bytes().map(|b| b.to_vec()).unwrap_or_default();
            if method == "HEAD" {
                respond_head(stream, status, &copied, body.len());
            } else {
                respond(stream, status, &copied, &body);
            }
        }
        Err(_) => respond(stream, 502, &[], b"backend down"),
    }
}

/// Starts the proxy, its challenges naming `realm(port)`; returns its port and what it
/// saw.
fn start_proxy_with_realm(backend: String, realm: impl FnOnce(u16) -> String) -> (u16, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let shared = seen.clone();
    let realm = realm(port);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (backend, seen, realm) = (backend.clone(), shared.clone(), realm.clone());
            std::thread::spawn(move || handle(stream, &realm, &backend, &seen));
        }
    });
    (port, seen)
}

/// The proxy with its own token endpoint as the realm.
fn start_proxy(backend: String) -> (u16, Arc<Seen>) {
    start_proxy_with_realm(backend, |port| format!("http://127.0.0.1:{port}/token"))
}

/// A profile with the one image `127.0.0.1:{port}/test/secret:1`, and registry options
/// taking `127.0.0.1:{port}` as plain HTTP with an auth file that gives USER:PASS to each
/// of `auth_keys`.
fn secret_profile(
    dir: &std::path::Path,
    port: u16,
    auth_keys: &[String],
) -> (nodeimage::profile::LoadedProfile, RegistryOptions) {
    let lp = write_profile(
        dir,
        "s",
        "x86_64",
        &image_entry("secret", &format!("127.0.0.1:{port}/test/secret:1"), ""),
    );
    let auth_file = dir.join("config.json");
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    let auths: Vec<String> = auth_keys
        .iter()
        .map(|k| format!("\"{k}\":{{\"auth\":\"{encoded}\"}}"))
        .collect();
    std::fs::write(&auth_file, format!("{{\"auths\":{{{}}}}}", auths.join(","))).unwrap();
    let opts = RegistryOptions {
        plain_http_registries: vec![format!("127.0.0.1:{port}")],
        auth_file: Some(auth_file),
        ..Default::default()
    };
    (lp, opts)
}

#[test]
fn bearer_token_flow_with_credentials() {
    let Some(reg) = TestRegistry::start() else {
        return;
    };
    let (amd, _, _) = push_multiarch(&reg.base(), "test/secret", "1");
    let (port, tokens) = start_proxy(reg.base());
    let d = tempfile::tempdir().unwrap();
    let (lp, opts) = secret_profile(d.path(), port, &[format!("http://127.0.0.1:{port}")]);

    let lf = oci::lock::lock_profile(&lp, &Registry::new(&opts).unwrap()).unwrap();
    assert_eq!(
        lf.images[0].manifest.digest.to_string(),
        amd.manifest_digest()
    );
    assert!(tokens.issued.load(Ordering::SeqCst) >= 1);

    // The pull gets its own token and sends it with every blob request.
    let cache = Cache::new(d.path().join("cache"));
    let fetch = FetchOptions {
        progress: ProgressMode::Never,
        retries: 0,
        ..Default::default()
    };
    let pulled = oci::pull_images(
        &lp,
        &lf,
        &cache,
        &PullOptions {
            fetch,
            registry: opts,
            epoch: 0,
        },
        &d.path().join("out"),
    )
    .unwrap();
    assert!(pulled.images[0].archive.is_file());

    // Without credentials the token endpoint refuses, and the error says what to do.
    let anonymous = RegistryOptions {
        plain_http_registries: vec![format!("127.0.0.1:{port}")],
        ..Default::default()
    };
    let e = format!(
        "{:#}",
        oci::lock::lock_profile(&lp, &Registry::new(&anonymous).unwrap()).unwrap_err()
    );
    assert!(e.contains("401") && e.contains("--auth-file"), "{e}");
}

/// Credentials go only to the realm of the registry's own host, over https or to a host
/// given as plain HTTP: a realm on another host (`localhost` is not `127.0.0.1`, another
/// port is another host) gets the token request without them.
#[test]
fn credentials_never_go_to_a_foreign_or_plain_http_realm() {
    let Some(reg) = TestRegistry::start() else {
        return;
    };
    push_multiarch(&reg.base(), "test/secret", "1");
    // A second proxy only as the token server of the plain-http-realm case: it counts
    // what reaches it.
    let (token_port, token_server) = start_proxy(reg.base());
    type Realm = Box<dyn FnOnce(u16) -> String>;
    let cases: [(&str, Realm, Option<Arc<Seen>>); 2] = [
        (
            "a foreign host",
            Box::new(|port| format!("http://localhost:{port}/token")),
            None,
        ),
        (
            "an http realm on a host not given as plain HTTP",
            Box::new(move |_| format!("http://127.0.0.1:{token_port}/token")),
            Some(token_server),
        ),
    ];
    for (what, realm, realm_server) in cases {
        let (port, seen) = start_proxy_with_realm(reg.base(), realm);
        let seen = realm_server.unwrap_or(seen);
        let d = tempfile::tempdir().unwrap();
        let (lp, opts) = secret_profile(
            d.path(),
            port,
            &[format!("127.0.0.1:{port}"), format!("localhost:{port}")],
        );
        let r = oci::lock::lock_profile(&lp, &Registry::new(&opts).unwrap());
        assert!(r.is_err(), "{what}: the lock needs a token");
        assert!(
            seen.asked.load(Ordering::SeqCst) >= 1,
            "{what}: the realm was asked for a token"
        );
        assert_eq!(
            seen.with_credentials.load(Ordering::SeqCst),
            0,
            "{what}: credentials were sent to the realm"
        );
    }
}
