//! The Debian base: the packages every image needs, the mirror, the spec that names the
//! cached tarball, and mmdebstrap (with binfmt for foreign architectures).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::profile::{Arch, LoadedProfile};
use crate::tools;

/// Packages every node image needs, whatever the profile says: the kernel, systemd as
/// init, the initramfs (which sets up the state partition and the /etc overlay), the
/// bootloader files, and what firstboot calls.
pub fn required_packages(arch: Arch) -> Vec<String> {
    let mut p: Vec<String> = [
        "systemd",
        "systemd-sysv",
        // DNS resolvers from DHCP or the platform (networkd hands them over); the
        // image's /etc/resolv.conf is its stub resolver, never the build machine's.
        "systemd-resolved",
        "udev",
        "dbus",
        "systemd-boot-efi",
        "initramfs-tools",
        "e2fsprogs",
        "kmod",
        "netbase",
        "iproute2",
        "nftables",
        "ca-certificates",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    p.push(format!("linux-image-{}", arch.debian()));
    p
}

/// dpkg path excludes: documentation and translations are dead weight on a node.
const DPKG_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
];

/// The Debian archives a base is built from: the main archive and the security
/// archive, as the profile names them or as the build machine's apt sources do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrors {
    pub debian: String,
    pub security: String,
}

/// The mirrors: the profile's, else the first `URIs:`/`deb` entries of the build
/// machine's apt sources that serve Debian's main archive and its security archive
/// (else the main one with `-security` appended, as deb.debian.org lays them out).
pub fn resolve_mirror(
    profile_mirror: Option<&str>,
    profile_security: Option<&str>,
) -> Result<Mirrors> {
    let mut main = Vec::new();
    let mut security = Vec::new();
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "sources"))
        {
            let text = fs::read_to_string(&f).unwrap_or_default();
            for stanza in text.split("\n\n") {
                let field = |k: &str| {
                    stanza
                        .lines()
                        .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                };
                if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) {
                    let uris = uris.split_whitespace().map(str::to_string);
                    if suites.split_whitespace().any(|s| s.ends_with("-security")) {
                        security.extend(uris);
                    } else {
                        main.extend(uris);
                    }
                }
            }
        }
    }
    for line in fs::read_to_string("/etc/apt/sources.list")
        .unwrap_or_default()
        .lines()
    {
        let mut w = line.split_whitespace().filter(|w| !w.starts_with('['));
        if w.next() == Some("deb") {
            if let (Some(uri), Some(suite)) = (w.next(), w.next()) {
                if suite.ends_with("-security") {
                    security.push(uri.to_string());
                } else {
                    main.push(uri.to_string());
                }
            }
        }
    }
    let trim = |u: &str| u.trim_end_matches('/').to_string();
    let debian = match profile_mirror {
        Some(m) => trim(m),
        None => main
            .into_iter()
            .map(|u| trim(&u))
            .find(|u| u.ends_with("/debian"))
            .context("the profile names no debian.mirror and the build machine's apt sources list no Debian archive; set debian.mirror in the profile")?,
    };
    let security = match profile_security {
        Some(m) => trim(m),
        None => security
            .into_iter()
            .map(|u| trim(&u))
            .find(|u| u.ends_with("/debian-security"))
            .unwrap_or_else(|| format!("{debian}-security")),
    };
    Ok(Mirrors { debian, security })
}

/// The apt sources a base is built from, one-line style (what mmdebstrap takes as its
/// MIRROR arguments): the suite, `<suite>-updates` and `<suite>-security`, from the
/// mirrors or, when the profile pins a snapshot, from the Debian archive snapshot of that
/// moment (`<snapshot_url>/debian/<ts>/`, `<snapshot_url>/debian-security/<ts>/`; a
/// snapshot's Release files have expired, hence `check-valid-until=no`).
pub fn render_sources(
    suite: &str,
    components: &[String],
    mirrors: &Mirrors,
    snapshot: Option<(&str, &str)>,
) -> Vec<String> {
    let comps = components.join(" ");
    let (opts, debian, security) = match snapshot {
        Some((url, ts)) => {
            let url = url.trim_end_matches('/');
            (
                "[check-valid-until=no] ",
                format!("{url}/debian/{ts}/"),
                format!("{url}/debian-security/{ts}/"),
            )
        }
        None => ("", mirrors.debian.clone(), mirrors.security.clone()),
    };
    let mut v = vec![format!("deb {opts}{debian} {suite} {comps}")];
    // The development suites have no updates or security suites.
    if !matches!(suite, "sid" | "unstable" | "experimental") {
        v.push(format!("deb {opts}{debian} {suite}-updates {comps}"));
        v.push(format!("deb {opts}{security} {suite}-security {comps}"));
    }
    v
}

/// mmdebstrap hooks every base is built with (part of the base's key). The SSH host
/// keys openssh-server's postinst generates are removed before the tarball is written:
/// keys are per node (`nodeimage-ssh-host-keys.service` makes them on first boot), and
/// a cached base must not hold a set that every image built from it would share.
pub const BASE_HOOKS: &[&str] = &["rm -f \"$1\"/etc/ssh/ssh_host_*"];

/// Everything that determines the Debian base; its hash names the cached tarball.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BaseSpec {
    pub suite: String,
    /// The main archive (for the manifest; [`BaseSpec::sources`] is what is used).
    pub mirror: String,
    /// The apt sources, one-line style ([`render_sources`]).
    pub sources: Vec<String>,
    /// The Debian archive snapshot the sources point to (`20261201T000000Z`), if pinned.
    pub snapshot: Option<String>,
    pub arch: String,
    pub variant: String,
    pub components: Vec<String>,
    pub packages: Vec<String>,
    pub source_date_epoch: i64,
}

impl BaseSpec {
    pub fn new(p: &LoadedProfile, mirrors: &Mirrors, epoch: i64) -> Self {
        let d = &p.profile.debian;
        let mut packages: Vec<String> = required_packages(p.profile.arch);
        packages.extend(d.packages.iter().cloned());
        packages.sort();
        packages.dedup();
        let snapshot = d
            .snapshot
            .as_deref()
            .map(|ts| (d.snapshot_url.as_str(), ts));
        BaseSpec {
            suite: d.suite.clone(),
            mirror: match snapshot {
                Some((url, ts)) => format!("{}/debian/{ts}/", url.trim_end_matches('/')),
                None => mirrors.debian.clone(),
            },
            sources: render_sources(&d.suite, &d.components, mirrors, snapshot),
            snapshot: d.snapshot.clone(),
            arch: p.profile.arch.debian().to_string(),
            variant: d.variant.clone(),
            components: d.components.clone(),
            packages,
            source_date_epoch: epoch,
        }
    }

    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"nodeimage-base-v2\0");
        h.update(serde_json::to_vec(self).expect("serialisable"));
        h.update(DPKG_EXCLUDES.join("\n"));
        h.update(BASE_HOOKS.join("\n"));
        hex::encode(h.finalize())
    }
}

/// What the base was built from, beside the tarball (`<tar>.json`): when, and the `Date:`
/// of each Release file apt used, i.e. the state of the archive the packages come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BaseRecord {
    /// Unix time the base was built.
    pub built_at: i64,
    /// Release file (apt's list name, e.g. `deb.debian.org_debian_dists_bookworm_InRelease`)
    /// → its `Date:` field.
    pub releases: std::collections::BTreeMap<String, String>,
}

impl BaseRecord {
    /// The archive's state the base reflects: the newest Release date (unix time), else
    /// the time the base was built.
    pub fn archive_time(&self) -> i64 {
        self.releases
            .values()
            .filter_map(|d| parse_release_date(d))
            .max()
            .unwrap_or(self.built_at)
    }
}

/// A Release file's `Date:` (RFC 2822 in UTC, `Sat, 11 Jul 2026 10:16:37 UTC`) as unix time.
pub fn parse_release_date(s: &str) -> Option<i64> {
    let mut w = s.split_whitespace();
    let mut first = w.next()?;
    if first.ends_with(',') {
        first = w.next()?;
    }
    let day: i64 = first.parse().ok()?;
    let month_name = w.next()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == month_name)? as i64
        + 1;
    let year: i64 = w.next()?.parse().ok()?;
    let hms: Vec<i64> = w
        .next()?
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || !matches!(w.next(), Some("UTC" | "GMT" | "+0000") | None) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// A snapshot timestamp (`20261201T000000Z`) as unix time.
pub fn parse_snapshot(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (
        n(0..4)?,
        n(4..6)?,
        n(6..8)?,
        n(9..11)?,
        n(11..13)?,
        n(13..15)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s)
}

/// How old a base is for the age check: since its snapshot when it has one, else since
/// the newest Release file it was built from.
pub fn base_age_days(spec: &BaseSpec, record: &BaseRecord, now: i64) -> i64 {
    let at = spec
        .snapshot
        .as_deref()
        .and_then(parse_snapshot)
        .unwrap_or_else(|| record.archive_time());
    (now - at).div_euclid(86400)
}

/// The Debian base tarball, the sha256 of its bytes (what later stages are keyed by: a
/// base rebuilt from the same spec on another day holds other package versions) and
/// what it was built from.
#[derive(Debug, Clone)]
pub struct BaseTar {
    pub path: PathBuf,
    pub sha256: String,
    pub record: BaseRecord,
}

fn sidecar(path: &Path, ext: &str) -> PathBuf {
    let mut side = path.as_os_str().to_owned();
    side.push(ext);
    PathBuf::from(side)
}

impl BaseTar {
    /// `path` with its digest, from the `<path>.sha256` sidecar written when the base was
    /// built (computed and written now when it is missing), and its `<path>.json` record
    /// (for a base cached before records were kept: built at the tarball's mtime).
    fn open(path: PathBuf) -> Result<BaseTar> {
        let record = fs::read(sidecar(&path, ".json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| BaseRecord {
                built_at: fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
                releases: Default::default(),
            });
        let side = sidecar(&path, ".sha256");
        if let Ok(s) = fs::read_to_string(&side) {
            let s = s.trim();
            if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(BaseTar {
                    path,
                    sha256: s.to_string(),
                    record,
                });
            }
        }
        let mut f = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
        let sha256 = hex::encode(h.finalize());
        nodeimage_core::files::atomic_write(&side, format!("{sha256}\n").as_bytes(), 0o644)
            .with_context(|| format!("writing {}", side.display()))?;
        Ok(BaseTar {
            path,
            sha256,
            record,
        })
    }
}

/// The `Date:` of each Release file, from the `grep -H` lines the base's hook wrote.
fn parse_release_lines(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (file, date) = l.split_once(":Date:")?;
            let name = Path::new(file).file_name()?.to_string_lossy().into_owned();
            Some((name, date.trim().to_string()))
        })
        .collect()
}

/// Build (or take from the cache) the Debian base as a tarball. `refresh` builds it
/// afresh even when the cache has one for this spec (a newer package set).
pub fn debian_base(spec: &BaseSpec, cache_dir: &Path, refresh: bool) -> Result<BaseTar> {
    let dir = cache_dir.join("rootfs");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join(format!("{}-{}.tar", spec.arch, &spec.key()[..32]));
    if out.exists() && !refresh {
        tracing::info!(path = %out.display(), "debian base from cache");
        return BaseTar::open(out);
    }
    tools::require(&[tools::MMDEBSTRAP])?;
    if spec.arch != host_debian_arch() {
        ensure_binfmt(spec)?;
    }
    let tmp = out.with_extension("tar.tmp");
    if tmp.is_dir() {
        fs::remove_dir_all(&tmp)?;
    } else {
        let _ = fs::remove_file(&tmp);
    }
    let releases_file = out.with_extension("releases.tmp");
    let _ = fs::remove_file(&releases_file);
    let mode = if unsafe { libc::geteuid() } == 0 {
        "root"
    } else {
        "unshare"
    };
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg(format!("--mode={mode}"))
        .arg(format!("--variant={}", spec.variant))
        .arg(format!("--architectures={}", spec.arch))
        .arg(format!("--components={}", spec.components.join(",")))
        .arg("--format=tar")
        .arg(format!("--include={}", spec.packages.join(",")))
        .args(DPKG_EXCLUDES.iter().map(|e| format!("--dpkgopt={e}")))
        .args(BASE_HOOKS.iter().map(|h| format!("--customize-hook={h}")))
        // The Date: of every Release file apt used: what the manifest records and the
        // age check reads. Quoted for the hook's sh; the path has no quote in it.
        .arg(format!(
            "--customize-hook=grep -H -m1 '^Date:' \"$1\"/var/lib/apt/lists/*Release > '{}'",
            releases_file.display()
        ))
        .arg("--quiet");
    if spec.snapshot.is_some() {
        cmd.arg("--aptopt=Acquire::Check-Valid-Until \"false\"");
    }
    cmd.arg(&spec.suite)
        .arg(&tmp)
        .args(&spec.sources)
        .env("SOURCE_DATE_EPOCH", spec.source_date_epoch.to_string());
    let started = std::time::Instant::now();
    tracing::info!(suite = %spec.suite, arch = %spec.arch, sources = ?spec.sources, packages = spec.packages.len(), mode, "building debian base with mmdebstrap");
    tools::run(&mut cmd).context("mmdebstrap could not build the Debian base")?;
    let releases = parse_release_lines(&fs::read_to_string(&releases_file).unwrap_or_default());
    let _ = fs::remove_file(&releases_file);
    if releases.is_empty() {
        bail!("mmdebstrap built the base but apt's Release files could not be read (from {}); the base's archive date is unknown", releases_file.display());
    }
    let record = BaseRecord {
        built_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        releases,
    };
    // Durable before it gets the name later builds trust: the file, then the rename.
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    let _ = fs::remove_file(sidecar(&out, ".sha256"));
    nodeimage_core::files::atomic_write(
        &sidecar(&out, ".json"),
        &serde_json::to_vec_pretty(&record)?,
        0o644,
    )?;
    fs::rename(&tmp, &out)?;
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    tracing::info!(seconds = started.elapsed().as_secs(), path = %out.display(), releases = ?record.releases, "debian base built");
    BaseTar::open(out)
}

fn host_debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

/// Foreign-arch bases run maintainer scripts through qemu-user; make sure binfmt_misc is
/// mounted and the interpreter registered (PID 1 may not be systemd on build machines).
fn ensure_binfmt(spec: &BaseSpec) -> Result<()> {
    let entry = match spec.arch.as_str() {
        "arm64" => "qemu-aarch64",
        other => bail!("building {other} images on this machine is not supported"),
    };
    let status = Path::new("/proc/sys/fs/binfmt_misc/status");
    if !status.exists() {
        let _ = tools::run(Command::new("mount").args([
            "-t",
            "binfmt_misc",
            "binfmt_misc",
            "/proc/sys/fs/binfmt_misc",
        ]));
    }
    if !Path::new("/proc/sys/fs/binfmt_misc").join(entry).exists() {
        tools::require(&[tools::QEMU_USER_AARCH64])?;
        let _ = tools::run(Command::new("update-binfmts").args(["--enable", entry]));
    }
    if !Path::new("/proc/sys/fs/binfmt_misc").join(entry).exists() {
        bail!("binfmt_misc has no {entry} entry: install qemu-user-static and binfmt-support, then run `update-binfmts --enable {entry}`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pk: &[&str], snapshot: Option<&str>) -> BaseSpec {
        let mirrors = Mirrors {
            debian: "http://m/debian".into(),
            security: "http://m/debian-security".into(),
        };
        let comps = vec!["main".into()];
        BaseSpec {
            suite: "bookworm".into(),
            mirror: "http://m/debian".into(),
            sources: render_sources(
                "bookworm",
                &comps,
                &mirrors,
                snapshot.map(|ts| ("http://snapshot.debian.org/archive", ts)),
            ),
            snapshot: snapshot.map(str::to_string),
            arch: "amd64".into(),
            variant: "minbase".into(),
            components: comps,
            packages: pk.iter().map(|s| s.to_string()).collect(),
            source_date_epoch: 1,
        }
    }

    #[test]
    fn base_key_changes_with_packages_sources_and_snapshot() {
        assert_eq!(spec(&["a"], None).key(), spec(&["a"], None).key());
        assert_ne!(spec(&["a"], None).key(), spec(&["a", "b"], None).key());
        let s1 = spec(&["a"], Some("20261201T000000Z"));
        assert_ne!(
            spec(&["a"], None).key(),
            s1.key(),
            "a snapshot is another base"
        );
        assert_eq!(s1.key(), spec(&["a"], Some("20261201T000000Z")).key());
        assert_ne!(s1.key(), spec(&["a"], Some("20261202T000000Z")).key());
    }

    #[test]
    fn sources_include_updates_and_security() {
        let m = Mirrors {
            debian: "http://deb.debian.org/debian".into(),
            security: "http://deb.debian.org/debian-security".into(),
        };
        let comps = vec!["main".to_string(), "contrib".to_string()];
        assert_eq!(
            render_sources("bookworm", &comps, &m, None),
            [
                "deb http://deb.debian.org/debian bookworm main contrib",
                "deb http://deb.debian.org/debian bookworm-updates main contrib",
                "deb http://deb.debian.org/debian-security bookworm-security main contrib",
            ]
        );
        assert_eq!(
            render_sources(
                "trixie",
                &comps[..1],
                &m,
                Some(("http://snapshot.debian.org/archive/", "20261201T000000Z"))
            ),
            [
                "deb [check-valid-until=no] http://snapshot.debian.org/archive/debian/20261201T000000Z/ trixie main",
                "deb [check-valid-until=no] http://snapshot.debian.org/archive/debian/20261201T000000Z/ trixie-updates main",
                "deb [check-valid-until=no] http://snapshot.debian.org/archive/debian-security/20261201T000000Z/ trixie-security main",
            ]
        );
        assert_eq!(render_sources("sid", &comps[..1], &m, None).len(), 1);
    }

    #[test]
    fn dates_and_age() {
        assert_eq!(
            parse_release_date("Sat, 11 Jul 2026 10:16:37 UTC"),
            parse_snapshot("20260711T101637Z")
        );
        assert_eq!(parse_snapshot("19700101T000000Z"), Some(0));
        assert_eq!(parse_snapshot("20000301T000000Z"), Some(951_868_800));
        assert_eq!(
            parse_release_date("Wed, 01 Mar 2000 00:00:01 UTC"),
            Some(951_868_801)
        );
        assert_eq!(parse_snapshot("2026-12-01"), None);
        assert_eq!(parse_snapshot("20261301T000000Z"), None);
        assert_eq!(parse_release_date("yesterday"), None);
        let lines = "/tmp/x/var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease:Date: Sat, 11 Jul 2026 10:16:37 UTC\n\
                     /tmp/x/var/lib/apt/lists/deb.debian.org_debian-security_dists_bookworm-security_InRelease:Date: Mon, 30 Nov 2026 00:22:33 UTC\n";
        let record = BaseRecord {
            built_at: 5,
            releases: parse_release_lines(lines),
        };
        assert_eq!(record.releases.len(), 2);
        assert_eq!(
            record.archive_time(),
            parse_snapshot("20261130T002233Z").unwrap(),
            "the newest Release date"
        );
        let now = parse_snapshot("20261201T120000Z").unwrap();
        assert_eq!(base_age_days(&spec(&[], None), &record, now), 1);
        // With a snapshot, the snapshot's time counts, whatever the Release files say.
        assert_eq!(
            base_age_days(&spec(&[], Some("20261101T000000Z")), &record, now),
            30
        );
        // No Release dates (a base cached before they were recorded): its build time.
        let old = BaseRecord {
            built_at: now - 10 * 86400,
            releases: Default::default(),
        };
        assert_eq!(base_age_days(&spec(&[], None), &old, now), 10);
    }
}
