//! What goes into the root filesystem besides Debian: the profile's pinned files, its
//! container images and the firstboot binary.

use std::fs;

use anyhow::{Context, Result};

use super::{sha256_file, Build};
use crate::fetch::{self, Digest};
use crate::manifest::{ArtifactRecord, FileRecord, ImageRecord};
use crate::rootfs::Install;

/// Version of the `member` stage (a file taken out of a downloaded archive).
const MEMBER_STAGE_VERSION: u32 = 1;

/// The profile's pinned files, downloaded (or from the download cache) and taken out of
/// their archives.
#[derive(Debug, Clone, Default)]
pub struct Artifacts {
    pub installs: Vec<Install>,
    pub records: Vec<ArtifactRecord>,
}

/// The profile's container images as OCI archives plus `images.json`.
#[derive(Debug, Clone, Default)]
pub struct Images {
    pub installs: Vec<Install>,
    pub records: Vec<ImageRecord>,
}

/// The firstboot binary the image runs.
#[derive(Debug, Clone)]
pub struct Firstboot {
    pub install: Install,
    pub record: FileRecord,
}

/// Where firstboot goes in the image.
pub const FIRSTBOOT_PATH: &str = "/usr/bin/firstboot";

/// Stage 1: every pinned artifact, verified by its digest. Several artifacts may be
/// members of one archive: each (url, digest) is fetched once, all in parallel, so a
/// missing download fails the build before anything slow. A member taken out of an
/// archive is kept in the stage cache under (archive digest, member, mode).
pub fn fetch_artifacts(b: &Build) -> Result<Artifacts> {
    let p = &b.lp.profile;
    let digest_of = |a: &crate::profile::Artifact| -> Result<Digest> {
        a.digest_string()
            .parse()
            .map_err(|e| anyhow::anyhow!("artifact `{}`: {e}", a.name))
    };
    let mut requests: Vec<fetch::FetchRequest> = Vec::new();
    for a in &p.artifacts {
        let digest = digest_of(a)?;
        if !requests
            .iter()
            .any(|r| r.url == *a.url.get_ref() && r.digest == digest)
        {
            requests.push(
                fetch::FetchRequest::new(a.url.get_ref().clone(), digest)
                    .with_label(a.name.clone()),
            );
        }
    }
    let blobs = b.fetcher.fetch_all(&requests)?;
    let mut out = Artifacts::default();
    for a in &p.artifacts {
        let digest = digest_of(a)?;
        let i = requests
            .iter()
            .position(|r| r.url == *a.url.get_ref() && r.digest == digest)
            .expect("requested above");
        let blob = blobs[i].clone();
        let file = match &a.member {
            Some(member) => {
                let key = super::cache::stage_key(
                    "member",
                    MEMBER_STAGE_VERSION,
                    &(digest.to_string(), member, a.mode_bits()),
                )?;
                let entry = b.stages.get_or_make("member", &key, |dir| {
                    fetch::extract_member(&blob, member, &dir.join("file"), a.mode_bits())
                        .with_context(|| format!("artifact `{}`", a.name))?;
                    Ok(())
                })?;
                entry.dir.join("file")
            }
            None => blob,
        };
        let (sha, size) = sha256_file(&file)?;
        out.records.push(ArtifactRecord {
            name: a.name.clone(),
            version: a.version.clone(),
            url: a.url.get_ref().clone(),
            digest: digest.to_string(),
            member: a.member.clone(),
            install: a.install.get_ref().clone(),
            mode: a.mode.get_ref().clone(),
            installed_sha256: sha,
            size,
        });
        out.installs.push(Install {
            source: file,
            dest: a.install.get_ref().clone(),
            mode: a.mode_bits(),
        });
    }
    Ok(out)
}

/// Stage 1b: container images by digest, as OCI archives under
/// /usr/share/nodeimage/images (blobs come from the download cache).
pub fn pull_images(b: &Build) -> Result<Images> {
    let Some(lock) = &b.lock else {
        return Ok(Images::default());
    };
    let opts = crate::oci::PullOptions {
        fetch: b.fetcher.options().clone(),
        registry: b.registry.clone(),
        epoch: b.epoch,
    };
    let dir = b.work.join("images");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let pulled = crate::oci::pull_images(&b.lp, lock, b.fetcher.cache(), &opts, &dir)?;
    Ok(Images {
        installs: pulled.installs(),
        records: pulled.records(),
    })
}

/// Stage 1c: the firstboot binary for the profile's architecture.
pub fn firstboot(b: &Build) -> Result<Firstboot> {
    // Installed without its debug information (`strip --strip-debug`: the symbols stay,
    // so a backtrace still names functions): the release binary carries line tables for
    // the tests' backtraces, most of its size, which the root and the initramfs would
    // both carry otherwise. GNU strip gives the same bytes for the same input.
    // (Only an ELF file: the unit tests install a script.)
    std::fs::create_dir_all(&b.work)?;
    let stripped = b.work.join("firstboot");
    let _ = std::fs::remove_file(&stripped);
    let mut magic = [0u8; 4];
    let elf = std::io::Read::read_exact(&mut fs::File::open(&b.firstboot_bin)?, &mut magic).is_ok()
        && magic == *b"\x7fELF";
    if elf {
        crate::tools::run(
            std::process::Command::new(crate::tools::STRIP.program)
                .args(["--strip-debug", "-o"])
                .arg(&stripped)
                .arg(&b.firstboot_bin),
        )
        .with_context(|| format!("stripping {}", b.firstboot_bin.display()))?;
    } else {
        fs::copy(&b.firstboot_bin, &stripped)?;
    }
    let (sha256, size) = sha256_file(&stripped)?;
    Ok(Firstboot {
        install: Install {
            source: stripped,
            dest: FIRSTBOOT_PATH.into(),
            mode: 0o755,
        },
        record: FileRecord {
            path: FIRSTBOOT_PATH.into(),
            sha256,
            size,
        },
    })
}

/// The profile's update key, as the file nodes read it (`layout::UPDATE_KEY`).
pub fn update_key(b: &Build) -> Result<Option<Install>> {
    let Some(k) = &b.update_key else {
        return Ok(None);
    };
    std::fs::create_dir_all(&b.work)?;
    let file = b.work.join("update-key.pub.pem");
    fs::write(&file, k.to_pem()).with_context(|| format!("writing {}", file.display()))?;
    Ok(Some(Install {
        source: file,
        dest: nodeimage_core::layout::UPDATE_KEY.into(),
        mode: 0o644,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::test_build;

    fn tar_gz(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        {
            let mut t = tar::Builder::new(&mut gz);
            for (name, data) in members {
                let mut h = tar::Header::new_ustar();
                h.set_path(name).unwrap();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                t.append(&h, *data).unwrap();
            }
            t.finish().unwrap();
        }
        gz.finish().unwrap()
    }

    #[test]
    fn artifacts_are_fetched_once_per_archive_and_members_are_cached() {
        use sha2::Digest as _;
        let d = tempfile::tempdir().unwrap();
        let archive = d.path().join("bundle.tar.gz");
        fs::write(
            &archive,
            tar_gz(&[("bin/a", b"tool a"), ("bin/b", b"tool b")]),
        )
        .unwrap();
        let plain = d.path().join("plain");
        fs::write(&plain, b"plain file").unwrap();
        let sha = |p: &std::path::Path| hex::encode(sha2::Sha256::digest(fs::read(p).unwrap()));
        let profile = format!(
            "name = \"t\"\narch = \"x86_64\"\n[debian]\nsuite = \"bookworm\"\n\
             [[artifact]]\nname = \"a\"\nurl = \"{a}\"\nsha256 = \"{sa}\"\nmember = \"bin/a\"\ninstall = \"/usr/bin/a\"\n\
             [[artifact]]\nname = \"b\"\nurl = \"{a}\"\nsha256 = \"{sa}\"\nmember = \"bin/b\"\ninstall = \"/usr/bin/b\"\nmode = \"0700\"\n\
             [[artifact]]\nname = \"p\"\nurl = \"{p}\"\nsha256 = \"{sp}\"\ninstall = \"/etc/p\"\nmode = \"0644\"\n",
            a = archive.display(),
            sa = sha(&archive),
            p = plain.display(),
            sp = sha(&plain),
        );
        let b = test_build(d.path(), &profile, true);
        let arts = fetch_artifacts(&b).unwrap();
        let got: Vec<_> = arts
            .installs
            .iter()
            .map(|i| (i.dest.as_str(), i.mode, fs::read(&i.source).unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("/usr/bin/a", 0o755, b"tool a".to_vec()),
                ("/usr/bin/b", 0o700, b"tool b".to_vec()),
                ("/etc/p", 0o644, b"plain file".to_vec()),
            ]
        );
        assert_eq!(arts.records[1].member.as_deref(), Some("bin/b"));
        assert_eq!(arts.records[2].size, 10);
        // A second run takes the members from the stage cache: same files, same records.
        let again = fetch_artifacts(&b).unwrap();
        assert_eq!(again.records, arts.records);
        assert_eq!(again.installs[0].source, arts.installs[0].source);
        assert!(arts.installs[0]
            .source
            .starts_with(d.path().join("cache/stages/member")));
    }
}
