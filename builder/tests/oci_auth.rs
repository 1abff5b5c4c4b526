//! Bearer-token auth: a small proxy in front of docker-registry demands
//! `Authorization: Bearer <token>` (401 + `WWW-Authenticate: Bearer realm=…,service=…`
//! otherwise) and serves the token at /token, for Basic credentials from an auth file.

mod oci_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use nodeimage::fetch::{Cache, FetchOptions, ProgressMode};
use nodeimage::oci::{self, PullOptions, Registry, RegistryOptions};
use oci_support::*;

const TOKEN: &str = "tok-3f9a";
const USER: &str = "puller";
const PASS: &str = "s3cret";

/// Starts the proxy; returns its port and the number of tokens it handed out.
fn start_proxy(backend: String) -> (u16, Arc<AtomicUsize>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    let tokens = Arc::new(AtomicUsize::new(0));
    let issued = tokens.clone();
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::new();
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}")));
        for req in server.incoming_requests() {
            let auth = req.headers().iter().find(|h| h.field.equiv("Authorization")).map(|h| h.value.as_str().to_string());
            let url = req.url().to_string();
            if url.starts_with("/token") {
                let ok = auth.as_deref() == Some(basic.as_str())
                    && url.contains("service=test-registry")
                    && url.contains("scope=repository%3Atest%2Fsecret%3Apull");
                let resp = if ok {
                    issued.fetch_add(1, Ordering::SeqCst);
                    tiny_http::Response::from_string(format!("{{\"token\":\"{TOKEN}\",\"expires_in\":300}}")).with_status_code(200)
                } else {
                    tiny_http::Response::from_string("denied").with_status_code(401)
                };
                let _ = req.respond(resp);
                continue;
            }
            if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
                let challenge = format!("Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test-registry\"");
                let resp = tiny_http::Response::from_string("{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}")
                    .with_status_code(401)
                    .with_header(tiny_http::Header::from_bytes("WWW-Authenticate", challenge).unwrap());
                let _ = req.respond(resp);
                continue;
            }
            let mut fwd = client.get(format!("{backend}{url}"));
            if let Some(a) = req.headers().iter().find(|h| h.field.equiv("Accept")) {
                fwd = fwd.header("Accept", a.value.as_str());
            }
            let r = fwd.send().unwrap();
            let mut resp = tiny_http::Response::from_data(Vec::new()).with_status_code(r.status().as_u16());
            for name in ["content-type", "docker-content-digest"] {
                if let Some(v) = r.headers().get(name) {
                    resp.add_header(tiny_http::Header::from_bytes(name, v.as_bytes()).unwrap());
                }
            }
            let body = r.bytes().unwrap().to_vec();
            let _ = req.respond(resp.with_data(std::io::Cursor::new(body.clone()), Some(body.len())));
        }
    });
    (port, tokens)
}

#[test]
fn bearer_token_flow_with_credentials() {
    let Some(reg) = TestRegistry::start() else { return };
    let (amd, _, _) = push_multiarch(&reg.base(), "test/secret", "1");
    let (port, tokens) = start_proxy(reg.base());
    let d = tempfile::tempdir().unwrap();
    let lp = write_profile(d.path(), "s", "x86_64", &image_entry("secret", &format!("127.0.0.1:{port}/test/secret:1"), ""));
    let auth_file = d.path().join("config.json");
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    std::fs::write(&auth_file, format!("{{\"auths\":{{\"http://127.0.0.1:{port}\":{{\"auth\":\"{encoded}\"}}}}}}")).unwrap();
    let opts = RegistryOptions { plain_http_registries: vec![format!("127.0.0.1:{port}")], auth_file: Some(auth_file), ..Default::default() };

    let lf = oci::lock::lock_profile(&lp, &Registry::new(&opts).unwrap()).unwrap();
    assert_eq!(lf.images[0].manifest.digest.to_string(), amd.manifest_digest());
    assert!(tokens.load(Ordering::SeqCst) >= 1);

    // The pull gets its own token and sends it with every blob request.
    let cache = Cache::new(d.path().join("cache"));
    let fetch = FetchOptions { progress: ProgressMode::Never, retries: 0, ..Default::default() };
    let pulled = oci::pull_images(&lp, &lf, &cache, &PullOptions { fetch, registry: opts, epoch: 0 }, &d.path().join("out")).unwrap();
    assert!(pulled.images[0].archive.is_file());

    // Without credentials the token endpoint refuses, and the error says what to do.
    let anonymous = RegistryOptions { plain_http_registries: vec![format!("127.0.0.1:{port}")], ..Default::default() };
    let e = format!("{:#}", oci::lock::lock_profile(&lp, &Registry::new(&anonymous).unwrap()).unwrap_err());
    assert!(e.contains("401") && e.contains("--auth-file"), "{e}");
}
