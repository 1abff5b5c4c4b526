//! The API waits over real TLS on 127.0.0.1: `openssl s_server` serves `/readyz` with
//! the apiserver certificate a master mints, and firstboot's waits talk to it with the
//! cluster CA (and, on a master, its client certificate).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use firstboot::assemble::{self, Progress, WaitOptions};
use firstboot::pki;
use nodeimage_core::config::Role;
use nodeimage_core::layout::paths;
use test_support::http::free_port;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `openssl s_server -HTTP` in `www` (each file is a whole HTTP response, served by
/// path), asking for a client certificate signed by the cluster CA but not requiring one.
/// `require`: refuse clients without such a certificate (`-Verify`).
fn serve(root: &Path, www: &Path, port: u16, require: bool) -> Option<Server> {
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-HTTP", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(path(root, paths::APISERVER_CRT))
        .arg("-key")
        .arg(path(root, paths::APISERVER_KEY))
        .arg("-CAfile")
        .arg(path(root, paths::CA_CRT))
        .args([if require { "-Verify" } else { "-verify" }, "1"])
        .current_dir(www)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = child else {
        let _ = test_support::Needs::new("TLS test server")
            .tool("openssl", "openssl")
            .met();
        return None;
    };
    let s = Server(child);
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(s)
}

fn quick() -> WaitOptions {
    WaitOptions {
        deadline: Duration::from_millis(800),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        announce_every: Duration::from_secs(60),
    }
}

/// A master's PKI under `root` (its apiserver certificate names 127.0.0.1).
fn master_root(root: &Path) {
    let s = ClusterSecrets::new();
    let c = s.node(Role::Master, true, "master-1", MASTERS[0]);
    let id = pki::MasterIdentity::from_node_config(&c, "master-1", &[]);
    let secrets = pki::MasterSecrets::from_secrets(&c.secrets, false).unwrap();
    pki::ensure_master_pki(root, &id, &secrets, time::OffsetDateTime::now_utc()).unwrap();
}

#[test]
fn waits_for_the_local_api_and_the_tls_bootstrap_over_tls() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    master_root(root);
    let www = root.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let respond = |status: &str, body: &str| {
        // firstboot asks for `/readyz?verbose` (the failing checks by name).
        std::fs::write(
            www.join("readyz?verbose"),
            format!("HTTP/1.0 {status}\r\nContent-Type: text/plain\r\n\r\n{body}"),
        )
        .unwrap()
    };
    respond("200 OK", "ok");
    let (port, strict_port) = (free_port(), free_port());
    let Some(_server) = serve(root, &www, port, false) else {
        return;
    };
    let Some(_strict) = serve(root, &www, strict_port, true) else {
        return;
    };
    let url = format!("https://127.0.0.1:{port}");
    let progress = Progress::new(None, "control-plane", Duration::from_secs(60));

    // A master: the CA verifies the server, its client certificate identifies it (the
    // strict server refuses clients without one).
    let strict = format!("https://127.0.0.1:{strict_port}");
    assemble::wait_local_api(root, &strict, &quick(), &progress, false).unwrap();
    let e = assemble::wait_tls_bootstrap(root, &strict, &quick(), &progress)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("API server not ready"),
        "anonymous is refused: {e}"
    );
    // Another cluster's CA does not trust this server.
    let other = tempfile::tempdir().unwrap();
    master_root(other.path());
    let e = assemble::wait_local_api(other.path(), &url, &quick(), &progress, false)
        .unwrap_err()
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // A worker whose kubelet has not joined yet: the API answers, so it says what is
    // missing; once kubelet.conf exists the wait ends.
    let e = assemble::wait_tls_bootstrap(root, &url, &quick(), &progress)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "waiting for the kubelet's TLS bootstrap through {url}"
        )) && e.contains("the API server is ready; the kubelet has no client certificate yet"),
        "{e}"
    );
    std::fs::write(path(root, paths::KUBELET_CONF), "apiVersion: v1\n").unwrap();
    assemble::wait_tls_bootstrap(root, &url, &quick(), &progress).unwrap();

    // Not ready: what the server said.
    respond(
        "500 Internal Server Error",
        "[-]etcd failed: reason withheld",
    );
    let e = assemble::wait_local_api(root, &url, &quick(), &progress, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/readyz; last: HTTP 500 Internal Server Error: [-]etcd failed"),
        "{e}"
    );
}

#[test]
fn an_unreachable_api_is_named_in_the_wait() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    master_root(root);
    let url = format!("https://127.0.0.1:{}", free_port());
    let progress = Progress::new(None, "kubelet", Duration::from_secs(60));
    let e = assemble::wait_tls_bootstrap(root, &url, &quick(), &progress)
        .unwrap_err()
        .to_string();
    assert!(e.contains("last: API server not ready: "), "{e}");
    assert!(e.to_lowercase().contains("connect"), "{e}");
}
