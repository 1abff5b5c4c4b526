//! `nodeimage build`: profile → fetch → rootfs → filesystems → GPT disk → outputs.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use crate::disk::{self, type_guid, PartitionContent, PartitionSpec};
use crate::fetch::{self, Digest, Fetcher};
use crate::manifest::*;
use crate::profile::{self, Arch, LoadedProfile, OutputFormat};
use crate::rootfs;
use crate::tools;

/// Kernel arguments every image gets before the profile's own.
fn base_cmdline(root_partuuid: &uuid::Uuid) -> String {
    format!("root=PARTUUID={root_partuuid} ro rootfstype=erofs")
}

#[derive(clap::Args, Debug, Clone)]
pub struct BuildArgs {
    /// The profile to build (e.g. profiles/k8s-1.36-x86_64.toml).
    pub profile: PathBuf,
    /// Directory for the outputs (<out>/<profile name>/).
    #[arg(long, short = 'o', default_value = "out")]
    pub out_dir: PathBuf,
    /// Cache for downloads and Debian bases [default: $XDG_CACHE_HOME/nodeimage].
    #[arg(long, env = "NODEIMAGE_CACHE", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Serve pinned files from a mirror (URL or directory laid out as <mirror>/<host>/<path>); repeatable.
    #[arg(long, value_name = "URL|DIR")]
    pub mirror: Vec<String>,
    /// Never fall back to the upstream URLs (air-gapped sites).
    #[arg(long)]
    pub mirror_only: bool,
    /// Use only the download cache.
    #[arg(long)]
    pub offline: bool,
    /// The firstboot binary for the profile's architecture [default: next to this nodeimage binary].
    #[arg(long, value_name = "FILE")]
    pub firstboot_bin: Option<PathBuf>,
    /// Install missing build tools with apt-get.
    #[arg(long)]
    pub install_deps: bool,
    /// Timestamp for every file, GUID and serial [default: the profile's last git commit time].
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
    pub source_date_epoch: Option<i64>,
    /// Keep the work directory (the unpacked root filesystem) for inspection.
    #[arg(long)]
    pub keep_work: bool,
    /// Container registry options for the profile's images.
    #[command(flatten)]
    pub registry: crate::oci::RegistryOptions,
}

/// What a build produced.
#[derive(Debug)]
pub struct BuildResult {
    pub out_dir: PathBuf,
    pub raw: PathBuf,
    pub manifest: Manifest,
}

pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("nodeimage")
}

fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

fn epoch_for(profile: &Path, explicit: Option<i64>) -> i64 {
    if let Some(e) = explicit {
        return e;
    }
    let dir = profile
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let git = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["log", "-1", "--format=%ct", "--"])
        .arg(profile.file_name().unwrap_or_default())
        .output();
    if let Ok(o) = git {
        if let Ok(v) = String::from_utf8_lossy(&o.stdout).trim().parse() {
            return v;
        }
    }
    fs::metadata(profile)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Locate the firstboot binary for `arch`.
fn find_firstboot(arch: Arch, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--firstboot-bin {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("nodeimage has no directory")?;
    let profile_dir = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("release");
    let candidates = if arch.is_host() {
        vec![dir.join("firstboot")]
    } else {
        let triple = format!("{}-unknown-linux-gnu", arch.as_str());
        let target_dir = dir.parent().unwrap_or(dir);
        vec![target_dir.join(&triple).join(profile_dir).join("firstboot")]
    };
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        let target = if arch.is_host() { String::new() } else { format!(" --target {}-unknown-linux-gnu", arch.as_str()) };
        format!(
            "no firstboot binary for {} at {}; build it with `cargo build --release -p firstboot{target}` or pass --firstboot-bin",
            arch.as_str(),
            candidates[0].display()
        )
    })
}

/// Run a build.
pub fn build(args: &BuildArgs) -> Result<BuildResult> {
    let started = Instant::now();
    let lp = profile::load(&args.profile)?;
    let p = &lp.profile;
    // Like `cargo --locked`: images come only from an up-to-date lock file.
    let lock = crate::oci::check_lock(&lp)?;
    let epoch = epoch_for(&args.profile, args.source_date_epoch);
    if args.install_deps {
        tools::install_missing(tools::BUILD_TOOLS)?;
    }
    tools::require(tools::BUILD_TOOLS)?;
    if unsafe { libc::geteuid() } != 0 {
        bail!("nodeimage build needs root (mmdebstrap root mode, chroot for the initramfs); run it with sudo");
    }
    let firstboot_bin = find_firstboot(p.arch, args.firstboot_bin.as_deref())?;
    let cache_dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let out_dir = args.out_dir.join(&p.name);
    let work = out_dir.join(".work");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    tracing::info!(profile = %p.name, arch = p.arch.as_str(), epoch, out = %out_dir.display(), "build starting");

    // 1. Pinned artifacts first: a missing download fails the build before anything slow.
    let mirrors = args
        .mirror
        .iter()
        .map(|m| fetch::Mirror::parse(m))
        .collect::<Result<Vec<_>, _>>()?;
    let fetcher = Fetcher::new(
        fetch::Cache::new(cache_dir.join("downloads")),
        fetch::FetchOptions {
            mirrors,
            mirror_only: args.mirror_only,
            offline: args.offline,
            ..Default::default()
        },
    )?;
    // Several artifacts may be members of one archive: fetch each (url, digest) once, in parallel.
    let mut requests: Vec<fetch::FetchRequest> = Vec::new();
    for a in &p.artifacts {
        let digest: Digest = a
            .digest_string()
            .parse()
            .map_err(|e| anyhow::anyhow!("artifact `{}`: {e}", a.name))?;
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
    let blobs = fetcher.fetch_all(&requests)?;
    let mut installs = Vec::new();
    let mut artifact_records = Vec::new();
    for a in &p.artifacts {
        let digest: Digest = a
            .digest_string()
            .parse()
            .map_err(|e| anyhow::anyhow!("artifact `{}`: {e}", a.name))?;
        let i = requests
            .iter()
            .position(|r| r.url == *a.url.get_ref() && r.digest == digest)
            .expect("requested above");
        let blob = blobs[i].clone();
        let file = match &a.member {
            Some(member) => {
                let dest = work.join("artifacts").join(&a.name);
                fs::create_dir_all(dest.parent().unwrap())?;
                fetch::extract_member(&blob, member, &dest, a.mode_bits())
                    .with_context(|| format!("artifact `{}`", a.name))?;
                dest
            }
            None => blob,
        };
        let (sha, size) = sha256_file(&file)?;
        artifact_records.push(ArtifactRecord {
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
        installs.push(rootfs::Install {
            source: file,
            dest: a.install.get_ref().clone(),
            mode: a.mode_bits(),
        });
    }
    // Container images by digest, as OCI archives under /usr/share/nodeimage/images.
    let mut image_records = Vec::new();
    if let Some(lock) = &lock {
        let opts = crate::oci::PullOptions {
            fetch: fetcher.options().clone(),
            registry: args.registry.clone(),
            epoch,
        };
        let pulled =
            crate::oci::pull_images(&lp, lock, fetcher.cache(), &opts, &work.join("images"))?;
        installs.extend(pulled.installs());
        image_records = pulled.records();
    }
    let (fb_sha, fb_size) = sha256_file(&firstboot_bin)?;
    installs.push(rootfs::Install {
        source: firstboot_bin.clone(),
        dest: "/usr/bin/firstboot".into(),
        mode: 0o755,
    });

    // 2. Debian base (cached), then our additions.
    let mirror = rootfs::resolve_mirror(p.debian.mirror.as_deref())?;
    let spec = rootfs::BaseSpec::new(&lp, mirror.clone(), epoch);
    let base = rootfs::debian_base(&spec, &cache_dir)?;
    let overlays = overlay_dirs(&lp)?;
    let root = work.join("root");
    let boot = work.join("boot");
    let custom = rootfs::customize(
        &base,
        &root,
        &boot,
        &installs,
        &overlays,
        &[
            "firstboot.service",
            "nodeimage-firewall.service",
            "systemd-networkd.service",
        ],
        epoch,
    )?;

    // 3. Identity of this build: every GUID, serial and timestamp derives from it.
    let inputs = inputs_digest(
        &lp,
        &spec,
        &custom.packages,
        &artifact_records,
        &image_records,
        &fb_sha,
        &overlays,
        epoch,
    )?;
    let guid = |what: &str| disk::derive_guid(what, inputs.as_bytes());
    let root_guid = guid("root-partition");
    let cmdline = format!("{} {}", base_cmdline(&root_guid), p.kernel.cmdline)
        .trim()
        .to_string();

    let (vmlinuz_sha, _) = sha256_file(&custom.kernel)?;
    let (initrd_sha, _) = sha256_file(&custom.initrd)?;
    let mut manifest = Manifest {
        schema: 1,
        profile: ProfileRecord {
            name: p.name.clone(),
            arch: p.arch.as_str().into(),
            path: args.profile.display().to_string(),
            sha256: hex::encode(Sha256::digest(lp.text.as_bytes())),
        },
        source_date_epoch: epoch,
        inputs_sha256: inputs.clone(),
        kernel: KernelRecord {
            version: custom.kernel_version.clone(),
            cmdline: cmdline.clone(),
            vmlinuz_sha256: vmlinuz_sha,
            initrd_sha256: initrd_sha,
        },
        firstboot: FileRecord {
            path: "/usr/bin/firstboot".into(),
            sha256: fb_sha,
            size: fb_size,
        },
        artifacts: artifact_records,
        images: image_records,
        debian: DebianRecord {
            suite: p.debian.suite.clone(),
            mirror,
            variant: p.debian.variant.clone(),
            packages: custom.packages.clone(),
        },
        partitions: Vec::new(),
        disk_guid: None,
        outputs: Vec::new(),
    };

    // 4. Filesystems.
    let erofs = work.join("root.erofs");
    rootfs::make_erofs(&root, &erofs, &guid("root-filesystem"), epoch)?;
    let esp = esp_files(p.arch, &root, &custom, &cmdline, &p.name, &manifest)?;
    let esp_bytes = firstboot::fat::build(
        &esp,
        &firstboot::fat::FatOptions {
            size_bytes: p.disk.esp_size_mib << 20,
            label: "ESP".into(),
            volume_id: volume_id(&guid("esp-filesystem")),
            timestamp: epoch,
            fat_type: Some(firstboot::fat::FatType::Fat32),
        },
    )?;
    let config_bytes = firstboot::fat::build(
        &nodeconfig_files(),
        &firstboot::fat::FatOptions {
            size_bytes: p.disk.config_size_mib << 20,
            label: "NODECONFIG".into(),
            volume_id: volume_id(&guid("nodeconfig-filesystem")),
            timestamp: epoch,
            fat_type: None,
        },
    )?;

    // 5. The disk.
    let root_size = fs::metadata(&erofs)?.len().div_ceil(1 << 20) << 20;
    let parts = vec![
        PartitionSpec::new(
            "ESP",
            type_guid::ESP,
            guid("esp-partition"),
            p.disk.esp_size_mib << 20,
            PartitionContent::Bytes(esp_bytes),
        ),
        PartitionSpec {
            // The root is read-only: say so to anything that auto-discovers partitions.
            attributes: disk::attribute::READ_ONLY,
            ..PartitionSpec::new(
                if p.arch == Arch::X86_64 {
                    "root-x86-64"
                } else {
                    "root-arm64"
                },
                if p.arch == Arch::X86_64 {
                    type_guid::ROOT_X86_64
                } else {
                    type_guid::ROOT_ARM64
                },
                root_guid,
                root_size,
                PartitionContent::File(erofs.clone()),
            )
        },
        PartitionSpec::new(
            "NODECONFIG",
            type_guid::MICROSOFT_BASIC_DATA,
            guid("nodeconfig-partition"),
            p.disk.config_size_mib << 20,
            PartitionContent::Bytes(config_bytes),
        ),
    ];
    fs::create_dir_all(&out_dir)?;
    let raw = out_dir.join(format!("{}.raw", p.name));
    let disk_guid = guid("disk");
    let layout = disk::write_disk(&raw, disk_guid, &parts)?;
    manifest.disk_guid = Some(disk_guid.to_string());
    for part in &layout.partitions {
        manifest.partitions.push(PartitionRecord {
            number: part.number,
            name: part.name.clone(),
            type_guid: part.type_guid.to_string(),
            part_guid: part.part_guid.to_string(),
            first_lba: part.first_lba,
            last_lba: part.last_lba,
            size_bytes: part.size_bytes,
            filesystem: if part.name.starts_with("root-") {
                "erofs"
            } else {
                "vfat"
            }
            .into(),
        });
    }

    // 6. Outputs.
    for f in &p.outputs.formats {
        match f {
            OutputFormat::Raw => {}
            OutputFormat::RawZst => {
                let zst = out_dir.join(format!("{}.raw.zst", p.name));
                compress_zstd(&raw, &zst)?;
            }
        }
    }
    for f in &p.outputs.formats {
        let (file, format) = match f {
            OutputFormat::Raw => (raw.clone(), "raw"),
            OutputFormat::RawZst => (out_dir.join(format!("{}.raw.zst", p.name)), "raw.zst"),
        };
        let (sha256, size) = sha256_file(&file)?;
        manifest.outputs.push(OutputRecord {
            file: file.file_name().unwrap().to_string_lossy().into(),
            format: format.into(),
            size,
            sha256,
        });
    }
    if !p.outputs.formats.contains(&OutputFormat::Raw) {
        fs::remove_file(&raw)?;
    }
    let mpath = out_dir.join("manifest.json");
    firstboot::util::atomic_write(&mpath, &serde_json::to_vec_pretty(&manifest)?, 0o644)?;
    if !args.keep_work {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    tracing::info!(seconds = started.elapsed().as_secs_f64(), out = %out_dir.display(), "build finished");
    Ok(BuildResult {
        out_dir,
        raw,
        manifest,
    })
}

fn overlay_dirs(lp: &LoadedProfile) -> Result<Vec<PathBuf>> {
    let base = lp.overlays_dir();
    lp.profile
        .overlays
        .iter()
        .map(|o| {
            let d = base.join(o);
            if d.is_dir() {
                Ok(d)
            } else {
                bail!(
                    "{}: overlays: `{o}` is not a directory under {}",
                    lp.path.display(),
                    base.display()
                )
            }
        })
        .collect()
}

/// A FAT volume serial from a GUID.
fn volume_id(g: &uuid::Uuid) -> u32 {
    let b = g.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Hash of every input: profile text, Debian base spec and resolved package versions,
/// artifact digests, image digests, firstboot, overlay contents, epoch.
#[allow(clippy::too_many_arguments)]
fn inputs_digest(
    lp: &LoadedProfile,
    spec: &rootfs::BaseSpec,
    packages: &BTreeMap<String, String>,
    artifacts: &[ArtifactRecord],
    images: &[ImageRecord],
    firstboot_sha: &str,
    overlays: &[PathBuf],
    epoch: i64,
) -> Result<String> {
    let mut h = Sha256::new();
    h.update(b"nodeimage-inputs-v1\0");
    h.update(lp.text.as_bytes());
    h.update(serde_json::to_vec(spec)?);
    h.update(serde_json::to_vec(packages)?);
    h.update(serde_json::to_vec(artifacts)?);
    if !images.is_empty() {
        h.update(serde_json::to_vec(images)?);
    }
    h.update(firstboot_sha.as_bytes());
    for o in overlays {
        hash_tree(&mut h, o, o)?;
    }
    h.update(epoch.to_le_bytes());
    Ok(hex::encode(h.finalize()))
}

fn hash_tree(h: &mut Sha256, base: &Path, dir: &Path) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(base).unwrap_or(&p);
        h.update(rel.to_string_lossy().as_bytes());
        let m = fs::symlink_metadata(&p)?;
        use std::os::unix::fs::PermissionsExt;
        h.update(m.permissions().mode().to_le_bytes());
        if m.file_type().is_symlink() {
            h.update(fs::read_link(&p)?.to_string_lossy().as_bytes());
        } else if m.is_dir() {
            hash_tree(h, base, &p)?;
        } else {
            h.update(fs::read(&p)?);
        }
    }
    Ok(())
}

/// The EFI system partition: systemd-boot, one loader entry, kernel, initrd, manifest.
fn esp_files(
    arch: Arch,
    root: &Path,
    custom: &rootfs::Customized,
    cmdline: &str,
    name: &str,
    manifest: &Manifest,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let efi = arch.efi();
    let sdboot = root.join(format!("usr/lib/systemd/boot/efi/systemd-boot{efi}.efi"));
    let sdboot = fs::read(&sdboot)
        .with_context(|| format!("reading {} (package systemd-boot-efi)", sdboot.display()))?;
    let mut m = BTreeMap::new();
    m.insert(
        format!("EFI/BOOT/BOOT{}.EFI", efi.to_uppercase()),
        sdboot.clone(),
    );
    m.insert(format!("EFI/systemd/systemd-boot{efi}.efi"), sdboot);
    m.insert(
        "loader/loader.conf".into(),
        b"default nodeimage.conf\ntimeout 0\neditor no\n".to_vec(),
    );
    m.insert(
        "loader/entries/nodeimage.conf".into(),
        format!("title {name}\nlinux /nodeimage/vmlinuz\ninitrd /nodeimage/initrd.img\noptions {cmdline}\n").into_bytes(),
    );
    m.insert("nodeimage/vmlinuz".into(), fs::read(&custom.kernel)?);
    m.insert("nodeimage/initrd.img".into(), fs::read(&custom.initrd)?);
    m.insert(
        "nodeimage/manifest.json".into(),
        serde_json::to_vec_pretty(manifest)?,
    );
    Ok(m)
}

/// The NODECONFIG partition starts with a README for the person editing it on a laptop.
fn nodeconfig_files() -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    m.insert(
        "README.TXT".into(),
        b"Put this node's config here as node.yaml (native) or config.ign (Ignition v3).\r\n\
Create one with: nodeimage node-config -c cluster.yml --role worker -o node.yaml\r\n\
or write it into the image with: nodeimage write-config IMAGE node.yaml\r\n"
            .to_vec(),
    );
    m
}

/// zstd-compress `src` into `dst` (multithreaded; the output does not depend on the thread count).
pub fn compress_zstd(src: &Path, dst: &Path) -> Result<()> {
    let tmp = dst.with_extension("zst.tmp");
    let input = fs::File::open(src)?;
    let out = fs::File::create(&tmp)?;
    let mut enc = zstd::stream::Encoder::new(out, 3)?;
    enc.multithread(
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
    )?;
    enc.include_checksum(true)?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, input);
    std::io::copy(&mut reader, &mut enc)?;
    let f = enc.finish()?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dst)?;
    Ok(())
}
