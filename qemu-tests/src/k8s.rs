//! What the multi-node Kubernetes tests share: the upstream components built from their
//! Go modules (`qemu-tests/upstream/build`), the test container images
//! (`qemu-tests/images/build`), the e2e profile derived from the default one, and a
//! kubectl driven from the test against the cluster's API.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{run, workspace_root};

/// The output of `qemu-tests/upstream/build --out DIR`: `bin/` and the `--mirror` tree.
pub struct Upstream {
    pub dir: PathBuf,
    pub manifest: serde_json::Value,
}

impl Upstream {
    /// Build (or take from the cache) `targets` into `out`. Cached by the Go modules'
    /// hashes: seconds when warm, about half an hour on a clean machine.
    pub fn build(out: &Path, targets: &[&str]) -> Result<Upstream> {
        let t = Instant::now();
        run(
            Command::new(workspace_root().join("qemu-tests/upstream/build"))
                .arg("--out")
                .arg(out)
                .args(targets)
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit()),
        )
        .context("qemu-tests/upstream/build")?;
        eprintln!(
            "e2e: upstream components ready in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join("mirror/manifest.json")).context("mirror/manifest.json")?,
        )?;
        Ok(Upstream {
            dir: out.to_path_buf(),
            manifest,
        })
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    pub fn mirror(&self) -> PathBuf {
        self.dir.join("mirror")
    }
}

/// The e2e profile: `base` (a default profile) with every artifact served by the mirror
/// of locally built binaries (its URL, member and hashes from `manifest`, computed at test
/// time: this profile only), and the images replaced: `drop` removed (images this
/// machine cannot build, or addons the test cluster leaves off), every upstream digest pin
/// removed (the test images have their own digests, which the lock pins), `add` appended.
/// Same overlays, same Debian packages, same kernel command line as `base`.
pub fn e2e_profile(
    base: &str,
    name: &str,
    manifest: &serde_json::Value,
    drop: &[&str],
    add: &str,
) -> Result<String> {
    let mut p: toml::Table = base.parse().context("parsing the base profile")?;
    p.insert("name".into(), name.into());
    p.insert(
        "description".into(),
        format!(
            "e2e test image: {} with the upstream files built here from their Go modules",
            p.get("name").and_then(|v| v.as_str()).unwrap_or("")
        )
        .into(),
    );
    let arts = manifest["artifacts"]
        .as_object()
        .context("manifest.json: no artifacts")?;
    if let Some(toml::Value::Array(list)) = p.get_mut("artifact") {
        for a in list.iter_mut() {
            let t = a.as_table_mut().context("[[artifact]] is a table")?;
            let n = t["name"].as_str().unwrap_or_default().to_string();
            let m = arts
                .get(&n)
                .with_context(|| format!("artifact {n}: not built by qemu-tests/upstream/build"))?;
            t.insert("url".into(), m["url"].as_str().unwrap_or_default().into());
            t.insert(
                "version".into(),
                m["version"].as_str().unwrap_or_default().into(),
            );
            match m["member"].as_str() {
                Some(member) => t.insert("member".into(), member.into()),
                None => t.remove("member"),
            };
            t.remove("sha256");
            t.remove("sha512");
            t.insert(
                "sha512".into(),
                m["sha512"].as_str().unwrap_or_default().into(),
            );
        }
    }
    if let Some(toml::Value::Array(list)) = p.get_mut("image") {
        list.retain(|i| !drop.contains(&i["name"].as_str().unwrap_or_default()));
        for i in list.iter_mut() {
            if let Some(t) = i.as_table_mut() {
                t.remove("digest");
            }
        }
    }
    let mut text = toml::to_string(&p)?;
    text.push('\n');
    text.push_str(add);
    Ok(text)
}

/// kubectl against the cluster, from the test (the host's end of the lab network).
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=60s")
            .args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Result<String> {
        Ok(run(&mut self.cmd(args))?)
    }

    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.run(&a)?)?)
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        use std::io::Write;
        let mut child = self
            .cmd(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().unwrap().write_all(yaml.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl exec POD -n NS -- ARGS` (stdout; an error with stderr when it fails).
    pub fn exec(&self, ns: &str, pod: &str, args: &[&str]) -> Result<String> {
        let mut a = vec!["exec", "-n", ns, pod, "--"];
        a.extend(args);
        self.run(&a)
    }
}

/// Poll `probe` every `every` until it returns `Some`, or fail after `timeout` naming
/// `what` and the last error.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut last = String::from("not yet");
    loop {
        match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() > timeout {
            bail!("{what}: not within {timeout:?} (last: {last})");
        }
        std::thread::sleep(every);
    }
}

/// Whether a TCP connection to `addr` is accepted within `timeout` (a drop times out, a
/// reject is refused: both are `false`).
pub fn tcp_open(addr: std::net::SocketAddr, timeout: Duration) -> bool {
    std::net::TcpStream::connect_timeout(&addr, timeout).is_ok()
}
