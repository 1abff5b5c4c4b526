//! `nodeimage upload aws`: a built image → an EBS snapshot through the EBS direct APIs →
//! an AMI, without S3, the import service or the AWS SDK.
//!
//! 1. StartSnapshot with the disk's size in whole GiB; the block size it returns is used
//!    (512 KiB on AWS).
//! 2. N workers read blocks, skip all-zero ones (a new snapshot reads zeros where no
//!    block was written), and PutSnapshotBlock each with its base64 sha256; a block is
//!    tried up to [`BLOCK_ATTEMPTS`] times on throttling, 5xx or transport errors.
//! 3. CompleteSnapshot with the count of written blocks and the LINEAR aggregate
//!    checksum (sha256 over the blocks' raw digests in block order), then
//!    DescribeSnapshots until `completed`.
//! 4. RegisterImage: UEFI boot, ENA, hvm, the image's architecture, `/dev/xvda`, gp3,
//!    the tags, and the manifest's hashes in the description.
//!
//! On any failure after StartSnapshot the snapshot is deleted. The AMI id goes to
//! stdout; progress (bytes and blocks) to stderr.

pub mod client;
pub mod credentials;
pub mod sigv4;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use sha2::Digest as _;

use crate::manifest::Manifest;
use client::{Aws, CallError};

/// Tries per block before the upload fails.
pub const BLOCK_ATTEMPTS: u32 = 5;
/// The block size AWS's StartSnapshot returns (the upload itself uses whatever it returns).
pub const AWS_BLOCK_SIZE: u64 = 512 << 10;

#[derive(clap::Subcommand, Debug)]
pub enum UploadCommand {
    /// Upload to AWS as an EBS snapshot (EBS direct APIs) and register it as an AMI (UEFI, ENA).
    Aws(AwsArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct AwsArgs {
    /// The build's output directory (with manifest.json and the raw image) or a raw image file.
    pub image: PathBuf,
    /// AWS region [default: AWS_REGION, AWS_DEFAULT_REGION, else the profile's region].
    #[arg(long)]
    pub region: Option<String>,
    /// The AMI name [default: <profile name>-<first 12 hex of the build's inputs hash>].
    #[arg(long)]
    pub name: Option<String>,
    /// A tag for the snapshot and the AMI, KEY=VALUE; repeatable.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Parallel block uploads.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: u32,
    /// The AWS credentials profile (shared config and credentials files).
    #[arg(long)]
    pub profile: Option<String>,
    /// One endpoint for both EBS and EC2 (a VPC endpoint or a test server) [env: AWS_ENDPOINT_URL].
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// The architecture when IMAGE is a raw file without a manifest.json beside it (x86_64, aarch64).
    #[arg(long)]
    pub arch: Option<String>,
    /// How long to wait for the snapshot to complete, in seconds.
    #[arg(long, default_value_t = 1800)]
    pub wait_seconds: u64,
    /// Read the image as the upload would, in AWS's 512 KiB blocks, and say what it would
    /// send (blocks, bytes, the aggregate checksum); no credentials, no AWS call.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(cmd: &UploadCommand) -> Result<()> {
    match cmd {
        UploadCommand::Aws(a) if a.dry_run => {
            let src = source(a)?;
            let started = Instant::now();
            let send = |_, _, _: &str, _| Ok(());
            let st = put_blocks(&send, &src.raw, src.size, AWS_BLOCK_SIZE, a.workers)?;
            let total = src.size.div_ceil(AWS_BLOCK_SIZE);
            println!(
                "{}: {} bytes ({} MiB) in {total} blocks of {} KiB: would send {} blocks ({} MiB, {:.1} % of the image), skip {} zero blocks; LINEAR checksum {}; read in {:.1} s",
                src.raw.display(),
                src.size,
                src.size >> 20,
                AWS_BLOCK_SIZE >> 10,
                st.sent,
                st.bytes >> 20,
                100.0 * st.bytes as f64 / src.size as f64,
                st.zero,
                st.aggregate,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        UploadCommand::Aws(a) => {
            let r = upload_aws(a)?;
            println!("{}", r.image_id);
            Ok(())
        }
    }
}

/// What an upload did.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub image_id: String,
    pub snapshot_id: String,
    pub image_bytes: u64,
    pub block_size: u64,
    pub blocks_sent: u64,
    pub blocks_zero: u64,
    pub bytes_sent: u64,
    pub upload_seconds: f64,
}

/// The image to upload and what is known of it.
struct Source {
    raw: PathBuf,
    size: u64,
    arch: String,
    profile: String,
    inputs: Option<String>,
    raw_sha256: Option<String>,
}

fn source(args: &AwsArgs) -> Result<Source> {
    let (dir, raw) = if args.image.is_dir() {
        (args.image.clone(), None)
    } else {
        let parent = args.image.parent().unwrap_or(Path::new(".")).to_path_buf();
        (parent, Some(args.image.clone()))
    };
    let manifest_path = dir.join("manifest.json");
    let manifest: Option<Manifest> = match std::fs::read(&manifest_path) {
        Ok(b) => {
            Some(serde_json::from_slice(&b).with_context(|| {
                format!("{}: not a nodeimage manifest", manifest_path.display())
            })?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", manifest_path.display())),
    };
    let raw_record = manifest
        .as_ref()
        .and_then(|m| m.outputs.iter().find(|o| o.format == "raw").cloned());
    let raw = match (raw, &raw_record) {
        (Some(r), _) => r,
        (None, Some(rec)) => dir.join(&rec.file),
        (None, None) if manifest.is_some() => bail!(
            "{}: the build has no raw output; add \"raw\" to the profile's [outputs] formats (the upload reads the raw disk)",
            manifest_path.display()
        ),
        (None, None) => bail!("{}: no manifest.json in this directory", args.image.display()),
    };
    let size = std::fs::metadata(&raw)
        .with_context(|| format!("reading {}", raw.display()))?
        .len();
    if size == 0 || size % 512 != 0 {
        bail!(
            "{}: a disk image is a non-zero multiple of 512 bytes, this is {size} bytes",
            raw.display()
        );
    }
    let arch = match (&args.arch, &manifest) {
        (Some(a), _) => a.clone(),
        (None, Some(m)) => m.profile.arch.clone(),
        (None, None) => bail!(
            "{}: no manifest.json beside it; give --arch (x86_64 or aarch64)",
            raw.display()
        ),
    };
    let matches_raw = raw_record
        .as_ref()
        .is_some_and(|r| dir.join(&r.file) == raw);
    Ok(Source {
        size,
        arch,
        profile: manifest
            .as_ref()
            .map(|m| m.profile.name.clone())
            .unwrap_or_else(|| raw.file_stem().unwrap_or_default().to_string_lossy().into()),
        inputs: manifest.as_ref().map(|m| m.inputs_sha256.clone()),
        raw_sha256: raw_record.filter(|_| matches_raw).map(|r| r.sha256),
        raw,
    })
}

/// EC2's architecture name.
fn ec2_arch(arch: &str) -> Result<&'static str> {
    match arch {
        "x86_64" | "amd64" => Ok("x86_64"),
        "aarch64" | "arm64" => Ok("arm64"),
        other => bail!("architecture `{other}`: expected x86_64 or aarch64"),
    }
}

fn parse_tags(tags: &[String]) -> Result<Vec<(String, String)>> {
    tags.iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) if !k.is_empty() && k.len() <= 128 && v.len() <= 256 => {
                Ok((k.to_string(), v.to_string()))
            }
            _ => bail!("--tag `{t}`: expected KEY=VALUE (key 1–128 characters, value up to 256)"),
        })
        .collect()
}

pub fn upload_aws(args: &AwsArgs) -> Result<Uploaded> {
    let src = source(args)?;
    let arch = ec2_arch(&src.arch)?;
    let mut tags = parse_tags(&args.tags)?;
    if let Some(i) = &src.inputs {
        tags.push(("nodeimage:inputs-sha256".into(), i.clone()));
    }
    tags.push(("nodeimage:profile".into(), src.profile.clone()));
    let name = args.name.clone().unwrap_or_else(|| match &src.inputs {
        Some(i) => format!("{}-{}", src.profile, &i[..12.min(i.len())]),
        None => src.profile.clone(),
    });
    if !(3..=128).contains(&name.len())
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c))
    {
        bail!("AMI name `{name}`: expected 3–128 of A-Z a-z 0-9 ( ) [ ] space . / - ' @ _");
    }
    // The manifest's hash of the raw disk must still hold: the description says so.
    if let Some(want) = &src.raw_sha256 {
        let (got, _) = crate::build::sha256_file(&src.raw)?;
        if &got != want {
            bail!(
                "{}: sha256 {got}, but manifest.json records {want}; the image changed after the build",
                src.raw.display()
            );
        }
    }
    let mut description = format!("nodeimage {}", src.profile);
    if let Some(i) = &src.inputs {
        description.push_str(&format!(" inputs sha256:{i}"));
    }
    if let Some(r) = &src.raw_sha256 {
        description.push_str(&format!(" raw sha256:{r}"));
    }
    description.truncate(255);

    let lookup = credentials::Lookup::from_process(args.profile.clone());
    let region = args
        .region
        .clone()
        .or_else(|| lookup.region())
        .ok_or_else(|| anyhow!("no region: give --region (or set AWS_REGION)"))?;
    let creds = lookup.credentials()?;
    tracing::info!(source = %creds.source, region = %region, "AWS credentials");
    let aws = Aws::new(creds, &region, args.endpoint_url.as_deref())?;

    let volume_gib = src.size.div_ceil(1 << 30).max(1);
    let token = uuid::Uuid::new_v4().to_string();
    let (snapshot, block_size) = aws.start_snapshot(volume_gib, &description, &tags, &token)?;
    client::check_id(&snapshot, "snap-")?;
    tracing::info!(%snapshot, block_size, volume_gib, "snapshot started");
    let result = (|| {
        let started = Instant::now();
        let send = |index, data, checksum: &str, progress| {
            aws.put_block(&snapshot, index, data, checksum, progress)
        };
        let stats = put_blocks(&send, &src.raw, src.size, block_size, args.workers)?;
        let status = aws.complete_snapshot(&snapshot, stats.sent, &stats.aggregate)?;
        tracing::info!(%snapshot, %status, "snapshot completed");
        wait_completed(&aws, &snapshot, Duration::from_secs(args.wait_seconds))?;
        let upload_seconds = started.elapsed().as_secs_f64();
        let image_id = aws.register_image(&register_params(
            &name,
            &description,
            arch,
            &snapshot,
            volume_gib,
            &tags,
        ))?;
        Ok(Uploaded {
            image_id,
            snapshot_id: snapshot.clone(),
            image_bytes: src.size,
            block_size,
            blocks_sent: stats.sent,
            blocks_zero: stats.zero,
            bytes_sent: stats.bytes,
            upload_seconds,
        })
    })();
    match result {
        Ok(u) => {
            tracing::info!(
                image = %u.image_id,
                snapshot = %u.snapshot_id,
                sent_mib = u.bytes_sent >> 20,
                image_mib = u.image_bytes >> 20,
                blocks = u.blocks_sent,
                zero_blocks = u.blocks_zero,
                seconds = format!("{:.1}", u.upload_seconds),
                "AMI registered"
            );
            Ok(u)
        }
        Err(e) => {
            match aws.delete_snapshot(&snapshot) {
                Ok(()) => tracing::warn!(%snapshot, "the upload failed; snapshot deleted"),
                Err(d) => {
                    tracing::error!(%snapshot, error = %d, "the upload failed and the snapshot could not be deleted; delete it by hand")
                }
            }
            Err(e)
        }
    }
}

/// The RegisterImage parameters of a snapshot-backed UEFI AMI.
pub fn register_params(
    name: &str,
    description: &str,
    arch: &str,
    snapshot: &str,
    volume_gib: u64,
    tags: &[(String, String)],
) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = [
        ("Name", name),
        ("Description", description),
        ("Architecture", arch),
        ("RootDeviceName", "/dev/xvda"),
        ("VirtualizationType", "hvm"),
        ("BootMode", "uefi"),
        ("EnaSupport", "true"),
        ("SriovNetSupport", "simple"),
        ("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.Ebs.SnapshotId", snapshot),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    p.push((
        "BlockDeviceMapping.1.Ebs.VolumeSize".into(),
        volume_gib.to_string(),
    ));
    if !tags.is_empty() {
        p.push(("TagSpecification.1.ResourceType".into(), "image".into()));
        for (i, (k, v)) in tags.iter().enumerate() {
            p.push((format!("TagSpecification.1.Tag.{}.Key", i + 1), k.clone()));
            p.push((format!("TagSpecification.1.Tag.{}.Value", i + 1), v.clone()));
        }
    }
    p
}

struct BlockStats {
    sent: u64,
    zero: u64,
    bytes: u64,
    aggregate: String,
}

/// Write every non-zero block of `raw` with `workers` threads.
/// Where a block goes: (index, data, base64 sha256, progress percent).
type Send<'a> = dyn Fn(u64, Vec<u8>, &str, u8) -> Result<(), CallError> + Sync + 'a;

fn put_blocks(
    send: &Send,
    raw: &Path,
    size: u64,
    block_size: u64,
    workers: u32,
) -> Result<BlockStats> {
    let file = std::fs::File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let blocks = size.div_ceil(block_size);
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let zero = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let digests: Mutex<std::collections::BTreeMap<u64, [u8; 32]>> = Mutex::default();
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::default();
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(size),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "upload [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta} {msg}",
        )
        .expect("valid template"),
    );
    std::thread::scope(|s| {
        for _ in 0..workers.min(blocks.max(1) as u32) {
            s.spawn(|| {
                let mut buf = vec![0u8; block_size as usize];
                while !stop.load(Ordering::Relaxed) {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= blocks {
                        break;
                    }
                    let r = one_block(send, &file, size, block_size, index, blocks, &mut buf);
                    match r {
                        Ok(None) => {
                            zero.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Some(d)) => {
                            sent.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(block_size, Ordering::Relaxed);
                            digests.lock().unwrap().insert(index, d);
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            first_error.lock().unwrap().get_or_insert(e);
                        }
                    }
                    bar.inc(block_size.min(size - index * block_size));
                    bar.set_message(format!(
                        "{} blocks sent, {} zero skipped",
                        sent.load(Ordering::Relaxed),
                        zero.load(Ordering::Relaxed)
                    ));
                }
            });
        }
    });
    bar.finish_and_clear();
    if let Some(e) = first_error.into_inner().unwrap() {
        return Err(e);
    }
    let digests = digests.into_inner().unwrap();
    Ok(BlockStats {
        sent: sent.into_inner(),
        zero: zero.into_inner(),
        bytes: bytes.into_inner(),
        aggregate: client::linear_checksum(digests.values()),
    })
}

/// Read block `index` (zero-padded at the end of the disk); `None` if all zero, else
/// send it (with retries) and return its digest.
fn one_block(
    send: &Send,
    file: &std::fs::File,
    size: u64,
    block_size: u64,
    index: u64,
    blocks: u64,
    buf: &mut [u8],
) -> Result<Option<[u8; 32]>> {
    let offset = index * block_size;
    let len = block_size.min(size - offset) as usize;
    buf.fill(0);
    file.read_exact_at(&mut buf[..len], offset)
        .with_context(|| format!("reading block {index} at byte {offset}"))?;
    if buf.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let digest: [u8; 32] = sha2::Sha256::digest(&*buf).into();
    let checksum = base64::engine::general_purpose::STANDARD.encode(digest);
    let progress = ((index + 1) * 100 / blocks) as u8;
    let backoff =
        nodeimage_core::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut attempt = 0;
    loop {
        attempt += 1;
        match send(index, buf.to_vec(), &checksum, progress) {
            Ok(()) => return Ok(Some(digest)),
            Err(CallError {
                retryable: true, ..
            }) if attempt < BLOCK_ATTEMPTS => {
                tracing::debug!(index, attempt, "block upload failed; retrying");
                std::thread::sleep(backoff.delay_after(attempt));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("block {index} failed after {attempt} attempt(s)")))
            }
        }
    }
}

/// Poll DescribeSnapshots until the snapshot is `completed` (an `error` state fails).
fn wait_completed(aws: &Aws, snapshot: &str, limit: Duration) -> Result<()> {
    use nodeimage_core::retry::{wait_until, Backoff, Deadline, Poll};
    let deadline = Deadline::after(limit);
    let mut backoff = Backoff::constant(Duration::from_secs(2));
    wait_until(&deadline, &mut backoff, |_| {
        match aws.snapshot_state(snapshot) {
            Ok((s, _)) if s == "completed" => Poll::Ready(Ok(())),
            Ok((s, _)) if s == "error" => {
                Poll::Ready(Err(anyhow!("snapshot {snapshot} is in state error")))
            }
            Ok((s, p)) => Poll::Pending(format!("state {s}, progress {p}")),
            Err(e) if e.retryable => Poll::Pending(e.to_string()),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    })
    .map_err(|t| {
        anyhow!(
            "snapshot {snapshot} not completed after {:?}: {}",
            t.waited,
            t.last
        )
    })?
}
