//! `firstboot erase-secrets`: once the first boot has succeeded, the join secrets leave
//! the places they were handed in through. Run by `nodeimage-erase-secrets.service` after
//! `firstboot.service` on every boot until it has finished once.
//!
//! * The boot disk's NODECONFIG partition (a plain FAT anyone with the disk can read: a
//!   worker's bootstrap token, a master's CA keys) is rebuilt over its whole length as a
//!   volume holding only [`ERASED_NOTE`], with the same label, serial and FAT type, and
//!   synced: the sectors that held the config are overwritten, not just unlinked.
//! * `/etc/kubernetes/bootstrap-kubelet.conf` (the bootstrap token again) is removed
//!   once the kubelet holds its own client certificate, as `kubeadm join` does (waiting
//!   up to [`KUBELET_CERT_WAIT`] for it); failing that it stays and the next boot tries
//!   again.
//!
//! Then [`ERASED_MARKER`]. A power cut at any point leaves either the old volume or the
//! new one (the volume is one write of its bytes, then a sync) and no marker, so the
//! next boot repeats the work. The node keeps what it needs under `/etc` and `/var`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use nodeimage_core::fat::{self, BootSector, FatOptions};
use nodeimage_core::files::{atomic_write, rooted};
use nodeimage_core::layout::paths;
use nodeimage_core::retry::{wait_until, Backoff, Deadline, Poll};

use crate::run::{already_done, STATE_DIR};
use crate::source::{nodeconfig_volumes, DeviceSet, IGNITION_FILE_NAME, NODECONFIG_LABEL};
use nodeimage_core::config::NODE_CONFIG_FILE_NAME;

/// Written once the secrets are gone.
pub const ERASED_MARKER: &str = "/var/lib/firstboot/secrets-erased";
/// The one file of an erased NODECONFIG volume.
pub const ERASED_NOTE: &str = "erased.txt";

/// What an erased NODECONFIG volume says.
pub fn erased_note(at: time::OffsetDateTime) -> String {
    format!(
        "The node config on this partition, with its secrets, was erased by `firstboot \
         erase-secrets` after this node's first boot succeeded ({}).\nThe node keeps what it \
         needs on its state partition. To provision the disk again, write a new config with \
         `nodeimage write-config`.\n",
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    )
}

/// Rebuild the FAT volume on `dev` (a partition or an image file) as one holding only
/// `note`: same size, label, serial number and FAT type; every byte of the volume is
/// rewritten, then synced.
pub fn erase_volume(dev: &Path, note: &str, at: time::OffsetDateTime) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .with_context(|| format!("opening {} for writing", dev.display()))?;
    let mut sector = [0u8; 512];
    f.read_exact(&mut sector)
        .with_context(|| format!("reading the boot sector of {}", dev.display()))?;
    let bs = BootSector::parse(&sector)
        .with_context(|| format!("{}: not a FAT volume", dev.display()))?;
    let device_len = f.seek(SeekFrom::End(0))?;
    let size = bs.volume_bytes();
    if size == 0 || size > device_len {
        bail!(
            "{}: the FAT volume claims {size} bytes on a device of {device_len}",
            dev.display()
        );
    }
    let files = [(ERASED_NOTE.to_string(), note.as_bytes().to_vec())]
        .into_iter()
        .collect();
    let bytes = fat::build(
        &files,
        &FatOptions {
            size_bytes: size,
            label: NODECONFIG_LABEL.into(),
            volume_id: bs.volume_id,
            timestamp: at.unix_timestamp(),
            fat_type: Some(bs.fat_type),
        },
    )
    .with_context(|| format!("building the erased volume for {}", dev.display()))?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&bytes)
        .with_context(|| format!("writing {}", dev.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", dev.display()))?;
    Ok(())
}

/// How long a live node waits for the kubelet's client certificate before it leaves the
/// bootstrap kubeconfig to the next boot (a worker's first boot may finish before the
/// bootstrap master's API answers).
pub const KUBELET_CERT_WAIT: std::time::Duration = std::time::Duration::from_secs(20 * 60);

/// `firstboot erase-secrets` on the node under `root` (`/` on a node: only a live node
/// knows its boot disk; in a `--root` tree `devices` lists the volumes). Waits up to
/// `kubelet_wait` for the kubelet's own certificate before keeping the bootstrap
/// kubeconfig for the next boot.
pub fn erase_secrets(
    root: &Path,
    devices: &DeviceSet,
    kubelet_wait: std::time::Duration,
) -> Result<String> {
    let marker = rooted(root, ERASED_MARKER);
    if marker.exists() {
        return Ok("the secrets were erased on an earlier boot".into());
    }
    if !already_done(root) {
        bail!("firstboot has not completed on this node ({STATE_DIR}/done is missing): nothing is erased before the node has joined");
    }
    let now = time::OffsetDateTime::now_utc();
    let mut report = Vec::new();
    match nodeconfig_volumes(devices) {
        Ok(vols) => {
            for v in vols {
                let holds_config = [NODE_CONFIG_FILE_NAME, IGNITION_FILE_NAME]
                    .iter()
                    .any(|f| matches!(v.fs.read_file(f), Ok(Some(_))));
                if holds_config {
                    erase_volume(&v.path, &erased_note(now), now)?;
                    report.push(format!("{} erased", v.path.display()));
                } else {
                    report.push(format!("{} holds no config", v.path.display()));
                }
            }
        }
        Err(reason) => report.push(format!("no NODECONFIG to erase ({reason})")),
    }
    let bootstrap = rooted(root, paths::BOOTSTRAP_KUBELET_CONF);
    if bootstrap.exists() {
        let cert = rooted(root, paths::KUBELET_CLIENT_CURRENT);
        let deadline = Deadline::after(kubelet_wait);
        let step = std::time::Duration::from_secs(5);
        let _ = wait_until(&deadline, &mut Backoff::new(step, step), |_| {
            if cert.exists() {
                Poll::Ready(())
            } else {
                Poll::Pending(())
            }
        });
        if cert.exists() {
            std::fs::remove_file(&bootstrap)
                .with_context(|| format!("removing {}", bootstrap.display()))?;
            report.push(format!("{} removed", paths::BOOTSTRAP_KUBELET_CONF));
        } else {
            report.push(format!(
                "{} kept: the kubelet has no client certificate yet; the next boot tries again",
                paths::BOOTSTRAP_KUBELET_CONF
            ));
            return Ok(report.join("; "));
        }
    }
    atomic_write(&marker, b"", 0o644).context("writing the erase marker")?;
    Ok(report.join("; "))
}
