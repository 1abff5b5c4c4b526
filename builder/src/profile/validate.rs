//! Profile validation: every rule the TOML schema cannot say (names, hashes, install
//! paths, modes, image references and digests, one sandbox image, sizes), each error
//! pointing at the file, line and column.

use std::collections::BTreeSet;

use toml::Spanned;

use super::{Profile, ProfileError};

/// Parse and validate a profile.
pub fn parse(file: &str, text: &str) -> Result<Profile, ProfileError> {
    let at = |span: Option<std::ops::Range<usize>>, message: String| {
        let (line, column) = span.map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        ProfileError {
            file: file.to_string(),
            line,
            column,
            message,
        }
    };
    let p: Profile = toml::from_str(text).map_err(|e| at(e.span(), e.message().to_string()))?;

    if p.name.is_empty()
        || !p
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(at(
            None,
            format!("name: expected [A-Za-z0-9._-]+, found `{}`", p.name),
        ));
    }
    let formats = &p.outputs.formats;
    if formats.is_empty() || formats.iter().collect::<BTreeSet<_>>().len() != formats.len() {
        return Err(at(
            None,
            format!(
                "outputs.formats: expected one or more of raw, raw-zst, qcow2, vhd, gce, pxe, each once, found {formats:?}"
            ),
        ));
    }
    let mut names = BTreeSet::new();
    let mut installs = BTreeSet::new();
    for a in &p.artifacts {
        let ctx = format!("artifact `{}`", a.name);
        if !names.insert(a.name.clone()) {
            return Err(at(
                Some(a.url.span()),
                format!("{ctx}: the name is used twice"),
            ));
        }
        let url = a.url.get_ref();
        if !(url.starts_with("https://")
            || url.starts_with("http://")
            || url.starts_with("file://")
            || url.starts_with('/'))
        {
            return Err(at(
                Some(a.url.span()),
                format!(
                    "{ctx}: url: expected http(s)://, file:// or an absolute path, found `{url}`"
                ),
            ));
        }
        match (&a.sha256, &a.sha512) {
            (None, None) => {
                return Err(at(
                    Some(a.url.span()),
                    format!(
                        "{ctx}: expected `sha256` or `sha512` (every artifact is pinned by hash)"
                    ),
                ))
            }
            (Some(_), Some(h)) => {
                return Err(at(
                    Some(h.span()),
                    format!("{ctx}: give one of `sha256` or `sha512`, not both"),
                ))
            }
            (Some(h), None) => {
                check_hex(h, 64).map_err(|m| at(Some(h.span()), format!("{ctx}: sha256: {m}")))?
            }
            (None, Some(h)) => {
                check_hex(h, 128).map_err(|m| at(Some(h.span()), format!("{ctx}: sha512: {m}")))?
            }
        }
        let install = a.install.get_ref();
        if !install.starts_with('/')
            || install.ends_with('/')
            || install.split('/').any(|c| c == "..")
        {
            return Err(at(
                Some(a.install.span()),
                format!("{ctx}: install: expected an absolute file path, found `{install}`"),
            ));
        }
        if !installs.insert(install.clone()) {
            return Err(at(
                Some(a.install.span()),
                format!("{ctx}: install: `{install}` is installed by another artifact too"),
            ));
        }
        let mode = a.mode.get_ref();
        if u32::from_str_radix(mode, 8)
            .map(|m| m > 0o7777)
            .unwrap_or(true)
        {
            return Err(at(
                Some(a.mode.span()),
                format!("{ctx}: mode: expected an octal mode like \"0755\", found \"{mode}\""),
            ));
        }
    }
    let mut image_names = BTreeSet::new();
    let mut sandboxes = 0;
    for i in &p.images {
        let ctx = format!("image `{}`", i.name);
        if i.name.is_empty()
            || !i
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
            || i.name.starts_with('.')
        {
            return Err(at(
                Some(i.reference.span()),
                format!("image name: expected [a-z0-9._-]+, found `{}`", i.name),
            ));
        }
        if !image_names.insert(i.name.clone()) {
            return Err(at(
                Some(i.reference.span()),
                format!("{ctx}: the name is used twice"),
            ));
        }
        let r = crate::oci::Reference::parse(i.reference.get_ref())
            .map_err(|m| at(Some(i.reference.span()), format!("{ctx}: reference: {m}")))?;
        if r.digest.is_some() || r.tag.is_none() {
            return Err(at(Some(i.reference.span()), format!("{ctx}: reference: expected `registry/repository:tag` (put a digest in `digest`), found `{}`", i.reference.get_ref())));
        }
        if let Some(d) = &i.digest {
            let ok = d.get_ref().strip_prefix("sha256:").is_some_and(|h| {
                h.len() == 64
                    && h.chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            });
            if !ok {
                return Err(at(Some(d.span()), format!("{ctx}: digest: expected `sha256:<64 lowercase hex characters>`, found `{}`", d.get_ref())));
            }
        }
        if let Some(purpose) = &i.purpose {
            if purpose.is_empty()
                || !purpose
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(at(
                    Some(i.reference.span()),
                    format!("{ctx}: purpose: expected [a-z0-9-]+, found `{purpose}`"),
                ));
            }
            if purpose == "sandbox" {
                sandboxes += 1;
                if i.role != nodeimage_core::images::ImageRole::All {
                    return Err(at(Some(i.reference.span()), format!("{ctx}: the sandbox (pause) image is needed on every node: role must be `all`")));
                }
            }
        }
    }
    if sandboxes > 1 {
        return Err(at(
            None,
            "image: only one image may have purpose = \"sandbox\"".to_string(),
        ));
    }
    for o in &p.overlays {
        if o.is_empty() || o.contains('/') || o.starts_with('.') {
            return Err(at(
                None,
                format!("overlays: expected a directory name under overlays/, found `{o}`"),
            ));
        }
    }
    if let Some(ts) = &p.debian.snapshot {
        if crate::rootfs::parse_snapshot(ts).is_none() {
            return Err(at(
                None,
                format!("debian.snapshot: expected a snapshot.debian.org timestamp like \"20261201T000000Z\", found \"{ts}\""),
            ));
        }
    }
    if !(p.debian.snapshot_url.starts_with("http://")
        || p.debian.snapshot_url.starts_with("https://"))
    {
        return Err(at(
            None,
            format!(
                "debian.snapshot_url: expected an http(s):// URL, found \"{}\"",
                p.debian.snapshot_url
            ),
        ));
    }
    if let Some(m) = shell_argument(&p.kernel.cmdline) {
        return Err(at(None, format!("kernel.cmdline: {m}")));
    }
    for (field, size, min) in [
        ("esp_size_mib", p.disk.esp_size_mib, 64),
        ("config_size_mib", p.disk.config_size_mib, 2),
    ] {
        if size < min {
            return Err(at(
                None,
                format!("disk.{field}: expected at least {min}, found {size}"),
            ));
        }
    }
    Ok(p)
}

/// Why a kernel argument of the profile would open a console shell without a password
/// (or cut the power on every boot), if one does. The image's initramfs makes every
/// failure reboot (`panic=30`); these would undo that.
fn shell_argument(cmdline: &str) -> Option<String> {
    for w in cmdline.split_whitespace() {
        let (k, v) = w.split_once('=').unwrap_or((w, ""));
        let why = match k {
            "break" | "rd.break" => "opens a root shell in the initramfs",
            "init" | "rdinit" => "replaces init, e.g. with a shell",
            "rd.shell" | "systemd.debug_shell" => "starts a root shell without a password",
            "panic" if v.parse::<i64>().is_err() => {
                "must be a number of seconds (the image's initramfs sets panic=30: reboot instead of a shell)"
            }
            "firstboot.fault" => "is the power-cut test's hook: it would cut the power on every boot",
            _ => continue,
        };
        return Some(format!("`{w}` {why}; remove it"));
    }
    None
}

fn check_hex(h: &Spanned<String>, len: usize) -> Result<(), String> {
    let v = h.get_ref();
    if v.len() != len
        || !v
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    {
        return Err(format!(
            "expected {len} lowercase hex characters, found {} characters `{v}`",
            v.len()
        ));
    }
    Ok(())
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{load, Arch, OutputFormat};
    use std::path::Path;

    const GOOD: &str = r#"
name = "t"
arch = "x86_64"
[debian]
suite = "bookworm"
packages = ["containerd"]
[[artifact]]
name = "tool"
url = "https://example.invalid/tool"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
install = "/usr/bin/tool"
"#;

    /// Why `parse` refuses `text` as `p.toml`.
    fn refused(text: &str) -> String {
        parse("p.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn good_profile_parses_with_defaults() {
        let p = parse("p.toml", GOOD).unwrap();
        assert_eq!(p.arch, Arch::X86_64);
        assert_eq!(p.debian.variant, "minbase");
        assert_eq!(p.artifacts[0].mode_bits(), 0o755);
        assert_eq!(
            p.outputs.formats,
            vec![OutputFormat::Raw, OutputFormat::RawZst]
        );
        assert!(p.artifacts[0].digest_string().starts_with("sha256:"));
    }

    #[test]
    fn output_formats_are_known_and_each_given_once() {
        let with = |f: &str| format!("{GOOD}\n[outputs]\nformats = {f}\n");
        let p = parse("p.toml", &with(r#"["qcow2", "vhd", "gce"]"#)).unwrap();
        assert_eq!(
            p.outputs.formats,
            [OutputFormat::Qcow2, OutputFormat::Vhd, OutputFormat::Gce]
        );
        let e = refused(&with(r#"["vmdk"]"#));
        assert!(
            e.starts_with("p.toml:") && e.contains("unknown variant `vmdk`"),
            "{e}"
        );
        assert!(e.contains("`qcow2`") && e.contains("`gce`"), "{e}");
        let e = refused(&with(r#"["raw", "raw"]"#));
        assert!(
            e.contains("outputs.formats") && e.contains("each once"),
            "{e}"
        );
        assert!(refused(&with("[]")).contains("outputs.formats"));
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let e = refused(&GOOD.replace("suite =", "suit ="));
        assert!(e.starts_with("p.toml:5:1:"), "{e}");
        assert!(e.contains("unknown field `suit`"), "{e}");
    }

    #[test]
    fn short_hash_names_line_and_expected_form() {
        let e = refused(&GOOD.replace("\"0000000000", "\"000000000"));
        assert!(e.starts_with("p.toml:10:"), "{e}");
        assert!(e.contains("expected 64 lowercase hex characters"), "{e}");
    }

    #[test]
    fn missing_hash_and_bad_arch_are_refused() {
        let e = refused(&GOOD.replace("sha256 = ", "# "));
        assert!(e.contains("expected `sha256` or `sha512`"), "{e}");
        let e = refused(&GOOD.replace("x86_64", "riscv64"));
        assert!(e.starts_with("p.toml:3:"), "{e}");
        assert!(e.contains("x86_64") && e.contains("aarch64"), "{e}");
    }

    const IMAGE: &str = "[[image]]\nname = \"pause\"\nreference = \"registry.k8s.io/pause:3.10.1\"\ndigest = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\npurpose = \"sandbox\"\n";

    #[test]
    fn images_parse_with_defaults() {
        let p = parse("p.toml", &format!("{GOOD}{IMAGE}[[image]]\nname = \"dns\"\nreference = \"coredns/coredns:1\"\nrole = \"master\"\n")).unwrap();
        assert_eq!(p.images.len(), 2);
        assert_eq!(p.images[0].role, nodeimage_core::images::ImageRole::All);
        assert_eq!(p.images[1].role, nodeimage_core::images::ImageRole::Master);
        assert!(p.images[1].digest.is_none());
    }

    #[test]
    fn bad_images_are_refused_with_their_line() {
        let e = refused(&format!("{GOOD}{}", IMAGE.replace(":3.10.1", "")));
        assert!(
            e.starts_with("p.toml:14:") && e.contains("expected `registry/repository:tag`"),
            "{e}"
        );
        let e = refused(&format!("{GOOD}{}", IMAGE.replace("sha256:0", "sha256:")));
        assert!(
            e.starts_with("p.toml:15:") && e.contains("digest: expected `sha256:<64"),
            "{e}"
        );
        let e = refused(&format!("{GOOD}{IMAGE}{IMAGE}"));
        assert!(e.contains("image `pause`: the name is used twice"), "{e}");
        let e = refused(&format!("{GOOD}{IMAGE}role = \"worker\"\n"));
        assert!(e.contains("role must be `all`"), "{e}");
        let e = refused(&format!("{GOOD}{IMAGE}tag = \"x\"\n"));
        assert!(e.contains("unknown field `tag`"), "{e}");
    }

    #[test]
    fn relative_install_and_bad_mode_are_refused() {
        let e = refused(&GOOD.replace("\"/usr/bin/tool\"", "\"usr/bin/tool\""));
        assert!(e.contains("install: expected an absolute file path"), "{e}");
        let e = refused(&format!("{GOOD}mode = \"0999\"\n"));
        assert!(e.contains("mode: expected an octal mode"), "{e}");
    }

    /// Every profile the repository ships parses and validates.
    #[test]
    fn debian_snapshot_and_age_parse_and_bad_timestamps_are_refused() {
        let base = "name = \"t\"\narch = \"x86_64\"\n[debian]\nsuite = \"bookworm\"\n";
        let p = parse(
            "p.toml",
            &format!("{base}snapshot = \"20261201T000000Z\"\nmax_base_age_days = 30\n"),
        )
        .unwrap();
        assert_eq!(p.debian.snapshot.as_deref(), Some("20261201T000000Z"));
        assert_eq!(p.debian.snapshot_url, "http://snapshot.debian.org/archive");
        assert_eq!(p.debian.max_base_age_days, Some(30));
        let e = parse("p.toml", &format!("{base}snapshot = \"2026-12-01\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("debian.snapshot")
                && e.contains("20261201T000000Z")
                && e.contains("2026-12-01"),
            "{e}"
        );
    }

    #[test]
    fn kernel_arguments_that_open_a_shell_are_refused() {
        let base = "name = \"t\"\narch = \"x86_64\"\n[debian]\nsuite = \"bookworm\"\n[kernel]\n";
        for (arg, why) in [
            ("break", "root shell in the initramfs"),
            ("break=premount", "root shell in the initramfs"),
            ("init=/bin/sh", "replaces init"),
            ("systemd.debug_shell", "without a password"),
            ("panic=", "number of seconds"),
            ("firstboot.fault=mkfs", "power-cut test"),
        ] {
            let e = parse("p.toml", &format!("{base}cmdline = \"quiet {arg}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("kernel.cmdline") && e.contains(arg) && e.contains(why),
                "{e}"
            );
        }
        for ok in ["quiet console=ttyS0", "panic=10", "panic=-1"] {
            parse("p.toml", &format!("{base}cmdline = \"{ok}\"\n")).unwrap();
        }
    }

    #[test]
    fn shipped_profiles_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "toml") {
                let lp = load(&path).unwrap_or_else(|e| panic!("{e:#}"));
                assert!(lp.overlays_dir().is_dir(), "{}", path.display());
                n += 1;
            }
        }
        assert!(
            n >= 3,
            "expected the default and test profiles in {}",
            dir.display()
        );
    }
}
