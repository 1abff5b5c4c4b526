//! `nodeimage upload aws` against moto's server mode on 127.0.0.1 (PyPI `moto[server]`,
//! installed by .ci/install-deps). moto accepts the EBS direct and EC2 calls but checks
//! little (it hands out 512-byte blocks and validates no checksum), so the tests also
//! read moto's request recording and check the exact calls: every non-zero block sent
//! once with its sha256, no zero block sent, the LINEAR aggregate as an independent
//! implementation (Python's hashlib) computes it, and RegisterImage's parameters. A
//! fault proxy of the test's own, in front of moto, fails a block twice (the upload
//! retries it) and fails CompleteSnapshot (the upload fails and deletes its snapshot).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

struct Moto {
    child: Child,
    base: String,
    /// moto's working directory and recording file.
    _dir: tempfile::TempDir,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    fn start() -> Option<Moto> {
        // The pinned moto that .ci/install-deps puts in its own venv, before any other
        // on PATH.
        let pinned = Path::new("/opt/nodeimage/moto/bin/moto_server");
        let program = if pinned.exists() {
            pinned.to_path_buf()
        } else {
            PathBuf::from("moto_server")
        };
        if !pinned.exists()
            && !test_support::Needs::new("AWS upload against moto")
                .tool("moto_server", "moto[server] from PyPI (.ci/install-deps)")
                .met()
        {
            return None;
        }
        if !test_support::Needs::new("AWS upload against moto")
            .tool("python3", "python3")
            .met()
        {
            return None;
        }
        let port = test_support::http::free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .env("MOTO_ENABLE_RECORDING", "True")
            .env("MOTO_RECORDER_FILEPATH", dir.path().join("recording"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let m = Moto {
            child,
            base,
            _dir: dir,
        };
        let http = reqwest::blocking::Client::new();
        http.post(format!("{}/moto-api/recorder/start-recording", m.base))
            .send()
            .unwrap()
            .error_for_status()
            .unwrap();
        Some(m)
    }

    /// Every request moto has recorded: (method, url, headers, body).
    fn recording(&self) -> Vec<Recorded> {
        let text = reqwest::blocking::get(format!(
            "{}/moto-api/recorder/download-recording",
            self.base
        ))
        .unwrap()
        .text()
        .unwrap();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let body = v["body"].as_str().unwrap_or("");
                let body = if v["body_encoded"] == true {
                    base64::engine::general_purpose::STANDARD
                        .decode(body)
                        .unwrap()
                } else {
                    body.as_bytes().to_vec()
                };
                Recorded {
                    method: v["method"].as_str().unwrap().to_string(),
                    url: v["url"].as_str().unwrap().to_string(),
                    headers: v["headers"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| {
                            (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_string())
                        })
                        .collect(),
                    body,
                }
            })
            .collect()
    }
}

struct Recorded {
    method: String,
    url: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Recorded {
    fn form(&self) -> BTreeMap<String, String> {
        url::form_urlencoded::parse(&self.body)
            .into_owned()
            .collect()
    }
}

/// A 2 MiB disk: 300 KiB of data at the start, 64 KiB at 1.5 MiB, zeros elsewhere.
fn disk(dir: &Path) -> PathBuf {
    let mut d = vec![0u8; 2 << 20];
    for (i, b) in d[..300 << 10].iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    for (i, b) in d[3 << 19..(3 << 19) + (64 << 10)].iter_mut().enumerate() {
        *b = (i % 13) as u8 + 7;
    }
    let p = dir.join("disk.raw");
    std::fs::write(&p, d).unwrap();
    p
}

/// The LINEAR aggregate of `raw` in `block`-byte blocks, by Python's hashlib (an
/// implementation independent of ours): sha256 over the non-zero blocks' digests.
fn python_aggregate(raw: &Path, block: usize) -> (String, usize) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import base64,hashlib,sys\n\
             d=open(sys.argv[1],'rb').read(); b=int(sys.argv[2]); h=hashlib.sha256(); n=0\n\
             for i in range(0,len(d),b):\n\
             \x20 blk=d[i:i+b].ljust(b,b'\\0')\n\
             \x20 if any(blk): h.update(hashlib.sha256(blk).digest()); n+=1\n\
             print(base64.b64encode(h.digest()).decode(), n)\n",
        )
        .arg(raw)
        .arg(block.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    let (a, n) = s.trim().split_once(' ').unwrap();
    (a.to_string(), n.parse().unwrap())
}

fn upload(endpoint: &str, raw: &Path, extra: &[&str]) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_nodeimage"))
        .args(["upload", "aws", "--region", "eu-west-1", "--arch", "x86_64"])
        .args([
            "--endpoint-url",
            endpoint,
            "--name",
            "nodeimage-test",
            "--tag",
            "team=edge",
        ])
        .args(extra)
        .arg(raw)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", home.path())
        .env("AWS_ACCESS_KEY_ID", "AKIDTESTUPLOAD")
        .env("AWS_SECRET_ACCESS_KEY", "secret-that-must-not-show")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap()
}

#[test]
fn upload_makes_a_snapshot_of_the_nonzero_blocks_and_registers_a_uefi_ami() {
    let Some(moto) = Moto::start() else { return };
    let d = tempfile::tempdir().unwrap();
    let raw = disk(d.path());
    let started = Instant::now();
    let out = upload(&moto.base, &raw, &["--workers", "8"]);
    let secs = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("secret-that-must-not-show"), "{stderr}");
    let ami = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(ami.starts_with("ami-"), "stdout: {ami}");

    let rec = moto.recording();
    let start: Vec<&Recorded> = rec
        .iter()
        .filter(|r| r.method == "POST" && r.url.ends_with("/snapshots"))
        .collect();
    assert_eq!(start.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&start[0].body).unwrap();
    assert_eq!(body["VolumeSize"], 1, "{body}");
    let puts: Vec<&Recorded> = rec
        .iter()
        .filter(|r| r.method == "PUT" && r.url.contains("/blocks/"))
        .collect();
    // moto's block size is 512 bytes.
    let (aggregate, nonzero) = python_aggregate(&raw, 512);
    assert_eq!(nonzero, (300 << 10) / 512 + (64 << 10) / 512);
    assert_eq!(
        puts.len(),
        nonzero,
        "one PutSnapshotBlock per non-zero block, none for zero blocks"
    );
    let data = std::fs::read(&raw).unwrap();
    let mut snapshot = String::new();
    for p in &puts {
        let (snap, index) = p.url.rsplit_once("/blocks/").unwrap();
        snapshot = snap.rsplit('/').next().unwrap().to_string();
        let i: usize = index.parse().unwrap();
        let block = &data[i * 512..(i + 1) * 512];
        assert_eq!(p.body, block, "block {i}");
        assert_eq!(p.headers["x-amz-checksum-algorithm"], "SHA256");
        assert_eq!(
            p.headers["x-amz-checksum"],
            base64::engine::general_purpose::STANDARD
                .encode(<sha2::Sha256 as sha2::Digest>::digest(block)),
            "block {i}"
        );
        assert_eq!(p.headers["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
        assert!(
            p.headers["authorization"].starts_with("AWS4-HMAC-SHA256 Credential=AKIDTESTUPLOAD/")
        );
    }
    let complete: Vec<&Recorded> = rec
        .iter()
        .filter(|r| r.url.contains("/snapshots/completion/"))
        .collect();
    assert_eq!(complete.len(), 1);
    let h = &complete[0].headers;
    assert_eq!(h["x-amz-changedblockscount"], nonzero.to_string());
    assert_eq!(
        h["x-amz-checksum"], aggregate,
        "the LINEAR aggregate differs from hashlib's"
    );
    assert_eq!(h["x-amz-checksum-aggregation-method"], "LINEAR");

    let register: Vec<BTreeMap<String, String>> = rec
        .iter()
        .map(Recorded::form)
        .filter(|f| f.get("Action").map(String::as_str) == Some("RegisterImage"))
        .collect();
    assert_eq!(register.len(), 1);
    let f = &register[0];
    for (k, v) in [
        ("Name", "nodeimage-test"),
        ("Architecture", "x86_64"),
        ("BootMode", "uefi"),
        ("EnaSupport", "true"),
        ("VirtualizationType", "hvm"),
        ("RootDeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.Ebs.SnapshotId", snapshot.as_str()),
        ("BlockDeviceMapping.1.Ebs.VolumeSize", "1"),
        ("TagSpecification.1.ResourceType", "image"),
        ("TagSpecification.1.Tag.1.Key", "team"),
        ("TagSpecification.1.Tag.1.Value", "edge"),
    ] {
        assert_eq!(
            f.get(k).map(String::as_str),
            Some(v),
            "RegisterImage {k}: {f:?}"
        );
    }
    // The snapshot's blocks read back from moto.
    let http = reqwest::blocking::Client::new();
    let got = http
        .get(format!("{}/snapshots/{snapshot}/blocks/3?blockToken=t", moto.base))
        .header("authorization", "AWS4-HMAC-SHA256 Credential=AKIDTESTUPLOAD/20261202/eu-west-1/ebs/aws4_request, SignedHeaders=host, Signature=0")
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(&got[..], &data[3 * 512..4 * 512]);

    let sent = puts.len() * 512;
    eprintln!(
        "upload benchmark (moto, 512-byte blocks, 8 workers): image {} KiB, non-zero data {} KiB, sent {} KiB ({:.0} % of the image) in {} requests, {secs:.2} s, {:.0} KiB/s",
        data.len() >> 10,
        ((300 << 10) + (64 << 10)) >> 10,
        sent >> 10,
        100.0 * sent as f64 / data.len() as f64,
        puts.len(),
        sent as f64 / 1024.0 / secs
    );
}

/// A proxy in front of moto that answers some requests itself (`fault` returns a status
/// for them) and forwards the rest; every request's "METHOD path" is logged.
struct Proxy {
    base: String,
    log: Arc<Mutex<Vec<String>>>,
    server: Arc<tiny_http::Server>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn proxy(
    upstream: &str,
    fault: impl Fn(&str, &str, usize) -> Option<u16> + Send + Sync + 'static,
) -> Proxy {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let fault = Arc::new(fault);
    let upstream = upstream.to_string();
    let http = reqwest::blocking::Client::new();
    {
        let (server, log) = (server.clone(), log.clone());
        std::thread::spawn(move || {
            for mut rq in server.incoming_requests() {
                let (log, fault, upstream) = (log.clone(), fault.clone(), upstream.clone());
                let http = http.clone();
                std::thread::spawn(move || {
                    let method = rq.method().to_string();
                    let url = rq.url().to_string();
                    let mut body = Vec::new();
                    rq.as_reader().read_to_end(&mut body).unwrap();
                    let form: BTreeMap<String, String> =
                        url::form_urlencoded::parse(&body).into_owned().collect();
                    let what = match form.get("Action") {
                        Some(a) if method == "POST" && url == "/" => format!("{method} / {a}"),
                        _ => format!("{method} {url}"),
                    };
                    let seen = {
                        let mut l = log.lock().unwrap();
                        l.push(what.clone());
                        l.iter().filter(|w| **w == what).count()
                    };
                    if let Some(status) = fault(&method, &what, seen) {
                        let _ = rq.respond(
                            tiny_http::Response::from_string("{\"message\":\"injected fault\"}")
                                .with_status_code(status),
                        );
                        return;
                    }
                    let mut fwd = http
                        .request(method.parse().unwrap(), format!("{upstream}{url}"))
                        .body(body);
                    for h in rq.headers() {
                        let k = h.field.as_str().as_str();
                        if !k.eq_ignore_ascii_case("host")
                            && !k.eq_ignore_ascii_case("content-length")
                        {
                            fwd = fwd.header(k, h.value.as_str());
                        }
                    }
                    let resp = fwd.send().unwrap();
                    let status = resp.status().as_u16();
                    let ctype = resp
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("application/octet-stream")
                        .to_string();
                    let bytes = resp.bytes().unwrap().to_vec();
                    let _ = rq.respond(
                        tiny_http::Response::from_data(bytes)
                            .with_status_code(status)
                            .with_header(
                                tiny_http::Header::from_bytes("Content-Type", ctype).unwrap(),
                            ),
                    );
                });
            }
        });
    }
    Proxy {
        base: format!("http://127.0.0.1:{port}"),
        log,
        server,
    }
}

#[test]
fn a_block_that_fails_twice_is_retried_and_a_failed_completion_deletes_the_snapshot() {
    let Some(moto) = Moto::start() else { return };
    let d = tempfile::tempdir().unwrap();
    // A small disk (16 non-zero blocks of moto's 512 bytes): every request goes through
    // the proxy.
    let raw = d.path().join("small.raw");
    let mut data = vec![0u8; 64 << 10];
    data[..8 << 10].fill(0x5a);
    std::fs::write(&raw, data).unwrap();

    // Block 7 fails twice with 503, then goes through.
    let p = proxy(&moto.base, |method, what, seen| {
        (method == "PUT" && what.ends_with("/blocks/7") && seen <= 2).then_some(503)
    });
    let out = upload(&p.base, &raw, &["--workers", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = p.log.lock().unwrap().clone();
    assert_eq!(
        log.iter().filter(|w| w.ends_with("/blocks/7")).count(),
        3,
        "three tries of block 7"
    );
    let at_moto = moto
        .recording()
        .iter()
        .filter(|r| r.method == "PUT" && r.url.ends_with("/blocks/7"))
        .count();
    assert_eq!(
        at_moto, 1,
        "moto received block 7 once, after the two injected failures"
    );
    drop(p);

    // CompleteSnapshot always fails: the upload fails, names the call, and deletes the
    // snapshot it started.
    let p = proxy(&moto.base, |_, what, _| {
        what.contains("/snapshots/completion/").then_some(500)
    });
    let out = upload(&p.base, &raw, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("CompleteSnapshot") && stderr.contains("500"),
        "{stderr}"
    );
    let log = p.log.lock().unwrap().clone();
    assert!(log.iter().any(|w| w == "POST / DeleteSnapshot"), "{log:?}");
    assert!(!log.iter().any(|w| w == "POST / RegisterImage"), "{log:?}");
    let deleted: Vec<BTreeMap<String, String>> = moto
        .recording()
        .iter()
        .map(Recorded::form)
        .filter(|f| f.get("Action").map(String::as_str) == Some("DeleteSnapshot"))
        .collect();
    assert_eq!(deleted.len(), 1);
    let snap = &deleted[0]["SnapshotId"];
    let left = reqwest::blocking::Client::new()
        .post(&moto.base)
        .header("authorization", "AWS4-HMAC-SHA256 Credential=AKIDTESTUPLOAD/20261202/eu-west-1/ec2/aws4_request, SignedHeaders=host, Signature=0")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("Action=DescribeSnapshots&Version=2016-11-15&SnapshotId.1={snap}"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        left.contains("InvalidSnapshot.NotFound"),
        "{snap} is still there: {left}"
    );
}

#[test]
fn bad_input_is_refused_before_any_call() {
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("odd.raw");
    std::fs::write(&raw, vec![1u8; 1000]).unwrap();
    let closed = test_support::http::closed_port_url();
    let out = upload(&closed, &raw, &[]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("multiple of 512"),
        "{e}"
    );
    std::fs::write(&raw, vec![1u8; 1024]).unwrap();
    let out = upload(&closed, &raw, &["--tag", "novalue"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("--tag `novalue`: expected KEY=VALUE"), "{e}");
    let out = upload(&closed, d.path(), &[]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("no manifest.json"), "{e}");
}

#[test]
fn dry_run_reads_in_aws_blocks_and_calls_nothing() {
    let d = tempfile::tempdir().unwrap();
    let raw = disk(d.path());
    // No endpoint that answers, no credentials needed.
    let out = upload(&test_support::http::closed_port_url(), &raw, &["--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 512 KiB blocks: data in the first and the last of four.
    let (aggregate, n) = python_aggregate(&raw, 512 << 10);
    assert_eq!(n, 2);
    assert!(
        stdout.contains("in 4 blocks of 512 KiB: would send 2 blocks (1 MiB, 50.0 % of the image), skip 2 zero blocks")
            && stdout.contains(&aggregate),
        "{stdout}"
    );
}
