//! The text form of `nodeimage inspect`.

use super::inspect::ImageReport;
use super::volumes::ESP_MANIFEST_PATH;

fn human_size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Debian packages shown by name in the components list: what a node runs.
const KEY_PACKAGES: &[&str] = &[
    "containerd",
    "runc",
    "etcd-server",
    "systemd",
    "nftables",
    "iptables",
];

/// `items` joined by `, `, or `none`.
fn joined_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// A nodeimage manifest as a components list: every pinned file and image with its
/// version and hash, the kernel, firstboot and the key Debian packages. `None` when the
/// manifest is not one of ours (then the JSON is shown as it is).
fn components_text(m: &serde_json::Value) -> Option<String> {
    use std::fmt::Write as _;
    let profile = m.get("profile")?;
    let mut s = String::new();
    let str_of = |v: &serde_json::Value, k: &str| {
        v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string()
    };
    let _ = writeln!(
        s,
        "  profile {} ({}), inputs sha256:{}, SOURCE_DATE_EPOCH {}",
        str_of(profile, "name"),
        str_of(profile, "arch"),
        str_of(m, "inputs_sha256"),
        m.get("source_date_epoch")
            .and_then(|v| v.as_i64())
            .unwrap_or(0)
    );
    if let Some(k) = m.get("kernel") {
        let _ = writeln!(
            s,
            "  kernel {} cmdline `{}`",
            str_of(k, "version"),
            str_of(k, "cmdline")
        );
    }
    if let Some(v) = m.get("root").and_then(|r| r.get("verity")) {
        let _ = writeln!(
            s,
            "  root erofs {} dm-verity root hash {} ({} data blocks, hash tree {})",
            human_size(
                m["root"]
                    .get("erofs_size")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0)
            ),
            str_of(v, "root_hash"),
            v.get("data_blocks").and_then(|v| v.as_u64()).unwrap_or(0),
            human_size(v.get("hash_size").and_then(|v| v.as_u64()).unwrap_or(0)),
        );
    }
    if let Some(f) = m.get("firstboot") {
        let _ = writeln!(
            s,
            "  firstboot {} sha256:{}",
            str_of(f, "path"),
            str_of(f, "sha256")
        );
    }
    let list = |s: &mut String, title: &str, key: &str| {
        let _ = writeln!(s, "\n{title}:");
        let items = m
            .get(key)
            .and_then(|a| a.as_array())
            .cloned()
            .unwrap_or_default();
        if items.is_empty() {
            let _ = writeln!(s, "  none");
        }
        items
    };
    for a in &list(&mut s, "Components (pinned files)", "artifacts") {
        let _ = writeln!(
            s,
            "  {:<26} {:<10} {:<28} {:>10}  {}",
            str_of(a, "name"),
            str_of(a, "version"),
            str_of(a, "install"),
            human_size(a.get("size").and_then(|v| v.as_u64()).unwrap_or(0)),
            str_of(a, "digest")
        );
    }
    for i in &list(&mut s, "Images", "images") {
        let _ = writeln!(
            s,
            "  {:<26} {:<7} {:>10}  {}@{}",
            str_of(i, "name"),
            str_of(i, "role"),
            human_size(i.get("size").and_then(|v| v.as_u64()).unwrap_or(0)),
            str_of(i, "reference"),
            str_of(i, "digest")
        );
    }
    if let Some(pkgs) = m
        .get("debian")
        .and_then(|d| d.get("packages"))
        .and_then(|p| p.as_object())
    {
        let _ = writeln!(
            s,
            "\nFrom Debian ({} packages; `inspect --json` lists them all):",
            pkgs.len()
        );
        for name in KEY_PACKAGES {
            if let Some(v) = pkgs.get(*name).and_then(|v| v.as_str()) {
                let _ = writeln!(s, "  {name:<26} {v}");
            }
        }
        for (name, v) in pkgs.iter().filter(|(n, _)| n.starts_with("linux-image-")) {
            let _ = writeln!(s, "  {name:<26} {}", v.as_str().unwrap_or("-"));
        }
    }
    Some(s)
}

/// The text form of `inspect`.
pub fn render_text(r: &ImageReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let l = &r.layout;
    let _ = writeln!(s, "Image:     {}", r.image.display());
    let _ = writeln!(
        s,
        "Size:      {} ({} bytes)",
        human_size(l.size_bytes),
        l.size_bytes
    );
    let _ = writeln!(s, "Disk GUID: {}", l.disk_guid);
    let _ = writeln!(s, "\nPartitions:");
    let _ = writeln!(
        s,
        "  {:>2}  {:<12} {:<22} {:>10} {:>10} {:>10}  GUID",
        "#", "Name", "Type", "Start LBA", "End LBA", "Size"
    );
    for p in &l.partitions {
        let ty = if p.type_name == "unknown" {
            p.type_guid.to_string()
        } else {
            p.type_name.clone()
        };
        let _ = writeln!(
            s,
            "  {:>2}  {:<12} {:<22} {:>10} {:>10} {:>10}  {}",
            p.number,
            p.name,
            ty,
            p.first_lba,
            p.last_lba,
            human_size(p.size_bytes),
            p.part_guid
        );
    }
    let _ = writeln!(s, "\nManifest:");
    match (&r.manifest, &r.manifest_error) {
        (Some(m), _) => match components_text(m) {
            Some(t) => s.push_str(&t),
            None => {
                let pretty = serde_json::to_string_pretty(m).unwrap_or_default();
                for line in pretty.lines() {
                    let _ = writeln!(s, "  {line}");
                }
            }
        },
        (None, Some(e)) => {
            let _ = writeln!(s, "  error: {e}");
        }
        (None, None) => {
            let _ = writeln!(s, "  none (no ESP:/{ESP_MANIFEST_PATH})");
        }
    }
    let _ = writeln!(s, "\nNode config:");
    match (&r.config, &r.config_error) {
        (Some(c), _) => {
            let _ = writeln!(s, "  partition: {}", c.partition);
            let _ = writeln!(s, "  files:     {}", joined_or_none(&c.files));
            match (&c.file, &c.kind) {
                (Some(f), Some(k)) => {
                    let _ = writeln!(s, "  config:    {f} ({k})");
                }
                _ => {
                    let _ = writeln!(s, "  config:    none (run `nodeimage write-config`)");
                }
            }
            if let Some(summary) = &c.summary {
                let y = yaml_serde::to_string(summary).unwrap_or_default();
                for line in y.lines() {
                    let _ = writeln!(s, "    {line}");
                }
            }
            let _ = writeln!(
                s,
                "  secrets present (values not shown): {}",
                joined_or_none(&c.secrets_present)
            );
            if let Some(e) = &c.error {
                let _ = writeln!(s, "  error: {e}");
            }
        }
        (None, Some(e)) => {
            let _ = writeln!(s, "  error: {e}");
        }
        (None, None) => {
            let _ = writeln!(s, "  none");
        }
    }
    s
}
