//! `firstboot update BUNDLE`: write a signed update bundle (`nodeimage build
//! --sign-key`, [`nodeimage_core::bundle`]) into the slot the node is not running from.
//!
//! The order is what makes it safe:
//!
//! 1. the bundle's header is read and its signature checked against the image's own
//!    key ([`layout::UPDATE_KEY`]); its architecture must be this node's, its members
//!    must fit the other slot's partitions: any failure here, and nothing is written;
//! 2. every member is streamed into a staging directory on the state partition
//!    ([`STAGING`]) while its SHA-256 is checked against the signed manifest: a bundle
//!    with a wrong byte is refused before a byte reaches a slot;
//! 3. the other slot is written from the staged files: first its verity superblock is
//!    zeroed (a slot cut off half-way has no tree and can never be opened), then the
//!    root, then the tree, each synced, the tree's superblock last;
//!    (Before any of it, the ESP's entries for that slot are removed: nothing boots a
//!    half-written slot.)
//! 4. the bundle's kernel and initrd go onto the ESP with an entry of the next
//!    generation and a boot counter ([`crate::boot_entries`]): systemd-boot boots the
//!    new slot next, counts each try down, and boots the previous image again once the
//!    tries are used up without a healthy boot (`firstboot bless-boot` removes the
//!    counter after one);
//! 5. `slot-<x>.json` under [`STATE_DIR`] records the slot's version and root hash.
//!
//! The node is not rebooted here: the new image runs from the next boot, whoever reboots.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nodeimage_core::bundle::{self, BundleManifest, PublicKey};
use nodeimage_core::layout;
use serde::{Deserialize, Serialize};

/// Where bundles are staged while their members are checked.
pub const STAGING: &str = "/var/lib/nodeimage/update/staging";
/// Where the slots' records live.
pub const STATE_DIR: &str = "/var/lib/nodeimage/update";

/// The partitions of the slot an update writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTargets {
    /// `a` or `b`.
    pub slot: String,
    pub root: PathBuf,
    pub verity: PathBuf,
    /// Their GUIDs (the new entry's command line names them).
    pub root_partuuid: uuid::Uuid,
    pub verity_partuuid: uuid::Uuid,
}

/// What a slot holds (`slot-<x>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub slot: String,
    pub name: String,
    pub version: String,
    pub root_hash: String,
    pub data_blocks: u64,
    pub kernel_version: String,
    pub member_sha256: Vec<(String, String)>,
    /// The boot entry written for it.
    pub entry: String,
}

/// Size of a block device or file.
fn size_of(path: &Path) -> Result<u64> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(crate::state::gpt::size(&mut f)?)
}

/// The update's checks before anything is written: architecture and sizes.
pub fn check_fits(m: &BundleManifest, arch: &str, t: &SlotTargets) -> Result<()> {
    if m.arch != arch {
        bail!(
            "the bundle is for {} ({} {}), this node is {arch}: refusing it",
            m.arch,
            m.name,
            m.version
        );
    }
    for (member, part) in [("root.erofs", &t.root), ("root.verity", &t.verity)] {
        let Some(mem) = m.member(member) else {
            bail!("the bundle has no {member}");
        };
        let room = size_of(part)?;
        if mem.size > room {
            bail!(
                "the bundle's {member} is {} MiB, slot {}'s partition {} holds {} MiB: \
                 the image outgrew its slots (disk.root_slot_mib); re-image the node with larger slots",
                mem.size.div_ceil(1 << 20),
                t.slot,
                part.display(),
                room >> 20
            );
        }
    }
    for need in ["vmlinuz", "initrd.img"] {
        if m.member(need).is_none() {
            bail!("the bundle has no {need}");
        }
    }
    Ok(())
}

/// Write `staged` (already checked) over the start of `part`, re-checking its hash as
/// it goes, and sync.
fn write_part(staged: &Path, member: &bundle::Member, part: &Path) -> Result<()> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(staged)?);
    let mut w = OpenOptions::new()
        .write(true)
        .open(part)
        .with_context(|| format!("opening {} for writing", part.display()))?;
    bundle::copy_member(&mut r, member, &mut w)
        .with_context(|| format!("writing {} to {}", member.name, part.display()))?;
    w.sync_all()
        .with_context(|| format!("syncing {}", part.display()))?;
    Ok(())
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The other slot now holds the bundle's image and boots next.
    Installed(SlotRecord),
    /// The bundle's image is the one running or the one already waiting in the other
    /// slot (its root hash is in `current`): nothing written.
    Current { version: String, root_hash: String },
}

/// Install the bundle `source` yields into `t`, staging under `staging`, its boot entry
/// onto the ESP at `esp_dir`; `key` is the key the node trusts. A bundle whose root
/// hash is in `current` (the running image's, a pending update's) is not installed
/// again: only its header is read.
pub fn install(
    source: &mut dyn Read,
    key: &PublicKey,
    arch: &str,
    t: &SlotTargets,
    staging: &Path,
    esp_dir: &Path,
    current: &[String],
) -> Result<Outcome> {
    let m = bundle::read_header(source, key)?;
    if current.contains(&m.verity.root_hash) {
        return Ok(Outcome::Current {
            version: m.version,
            root_hash: m.verity.root_hash,
        });
    }
    check_fits(&m, arch, t)?;
    // Stage and check every member: nothing of a bad bundle reaches the slot.
    let _ = fs::remove_dir_all(staging);
    fs::create_dir_all(staging).with_context(|| format!("creating {}", staging.display()))?;
    let staged = (|| -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for mem in &m.members {
            if let Ok(free) = crate::preflight::free_bytes(staging) {
                if mem.size > free {
                    bail!(
                        "staging {} needs {} MiB, {} has {} MiB free",
                        mem.name,
                        mem.size.div_ceil(1 << 20),
                        staging.display(),
                        free >> 20
                    );
                }
            }
            let path = staging.join(&mem.name);
            let mut f = File::create(&path)?;
            bundle::copy_member(source, mem, &mut f)?;
            f.flush()?;
            files.push(path);
        }
        Ok(files)
    })();
    let staged = match staged {
        Ok(s) => s,
        Err(e) => {
            let _ = fs::remove_dir_all(staging);
            return Err(e);
        }
    };
    let staged_of = |name: &str| staged.iter().find(|p| p.ends_with(name)).unwrap().clone();
    crate::boot_entries::remove_slot(esp_dir, &t.slot)?;
    // The slot: no tree first (never openable half-written), root, then the tree.
    {
        let mut v = OpenOptions::new()
            .write(true)
            .open(&t.verity)
            .with_context(|| format!("opening {} for writing", t.verity.display()))?;
        v.write_all(&[0u8; 4096])?;
        v.sync_all()?;
    }
    write_part(
        &staged_of("root.erofs"),
        m.member("root.erofs").unwrap(),
        &t.root,
    )?;
    write_part(
        &staged_of("root.verity"),
        m.member("root.verity").unwrap(),
        &t.verity,
    )?;
    let cmdline = format!(
        "{} {}",
        layout::verity::kernel_args(
            &t.root_partuuid.to_string(),
            &t.verity_partuuid.to_string(),
            &m.verity.root_hash,
            m.verity.data_blocks,
            &m.version
        ),
        m.cmdline
    );
    let generation = crate::boot_entries::next_generation(esp_dir)?;
    let entry = crate::boot_entries::install(
        esp_dir,
        generation,
        &t.slot,
        &staged_of("vmlinuz"),
        &staged_of("initrd.img"),
        &format!("{} {}", m.name, m.version),
        cmdline.trim(),
    )?;
    let _ = fs::remove_dir_all(staging);
    Ok(Outcome::Installed(SlotRecord {
        entry: entry
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        slot: t.slot.clone(),
        name: m.name.clone(),
        version: m.version.clone(),
        root_hash: m.verity.root_hash.clone(),
        data_blocks: m.verity.data_blocks,
        kernel_version: m.kernel_version.clone(),
        member_sha256: m
            .members
            .iter()
            .map(|x| (x.name.clone(), x.sha256.clone()))
            .collect(),
    }))
}

/// The slot the running root is in and the other one's partitions, from the kernel
/// command line's `root=PARTUUID=` and the boot disk's partition table.
pub fn other_slot(cmdline: &str) -> Result<Running> {
    let root = crate::source::cmdline_param(cmdline, "root")
        .and_then(|r| r.strip_prefix("PARTUUID=").map(str::to_string))
        .context("the kernel command line has no root=PARTUUID=: not a slotted image")?;
    let root = uuid::Uuid::parse_str(&root).context("root=PARTUUID=")?;
    let (disk, disk_name) = crate::state::disk_of_mount(Path::new("/"))?;
    let table = crate::state::gpt::read(&disk)?;
    let entries = table.entries();
    let running = entries
        .iter()
        .find(|e| e.part_guid == root)
        .with_context(|| format!("no partition {root} on {}", disk.display()))?;
    let (this, _, _) = layout::SLOTS
        .iter()
        .find(|(_, r, _)| *r == running.name)
        .with_context(|| {
            format!(
                "the root partition is named {:?}, not a slot's (root-a, root-b)",
                running.name
            )
        })?;
    let (other, root_name, verity_name) = layout::SLOTS.iter().find(|(s, _, _)| s != this).unwrap();
    let node = |name: &str| -> Result<(PathBuf, uuid::Uuid)> {
        let e = entries
            .iter()
            .find(|e| e.name == name)
            .with_context(|| format!("{} has no partition {name}", disk.display()))?;
        let n = crate::state::partition_node(&disk_name, e.number)
            .with_context(|| format!("{name} (partition {}) has no device node", e.number))?;
        Ok((n, e.part_guid))
    };
    let (root, root_partuuid) = node(root_name)?;
    let (verity, verity_partuuid) = node(verity_name)?;
    Ok(Running {
        slot: this.to_string(),
        disk,
        disk_name,
        other: SlotTargets {
            slot: other.to_string(),
            root,
            verity,
            root_partuuid,
            verity_partuuid,
        },
    })
}

/// The slot the node runs from, its disk, and the other slot.
#[derive(Debug, Clone)]
pub struct Running {
    pub slot: String,
    pub disk: PathBuf,
    pub disk_name: String,
    pub other: SlotTargets,
}

/// Open `source`: a file, or an http(s) URL streamed as it arrives.
pub fn open_source(source: &str) -> Result<Box<dyn Read>> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(30))
            .timeout(None)
            .build()?;
        let resp = client
            .get(source)
            .send()
            .map_err(|e| anyhow::anyhow!("{source}: {}", nodeimage_core::errors::chain(&e)))?;
        if !resp.status().is_success() {
            bail!("{source}: HTTP {}", resp.status().as_u16());
        }
        return Ok(Box::new(BufReader::with_capacity(1 << 20, resp)));
    }
    let f = File::open(source).with_context(|| format!("opening {source}"))?;
    Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
}

/// `firstboot update SOURCE`: the whole update on this node (`root` prefixes the node's
/// paths, for tests). `{arch}` in a URL becomes this node's architecture. After an
/// install the reboot sentinel ([`layout::REBOOT_SENTINEL`]) is written: kured, when
/// the cluster runs it, reboots the node within its lock; the node never reboots itself.
pub fn run(source: &str, root: &Path) -> Result<Outcome> {
    let key_path = nodeimage_core::files::rooted(root, layout::UPDATE_KEY);
    let key_text = fs::read_to_string(&key_path).with_context(|| {
        format!(
            "{}: this image trusts no update key (its profile has no [update] public_key)",
            key_path.display()
        )
    })?;
    let key = PublicKey::from_pem(&key_text, &key_path.display().to_string())?;
    let started = std::time::Instant::now();
    let cmdline = fs::read_to_string("/proc/cmdline")?;
    let r = other_slot(&cmdline)?;
    let source = source.replace("{arch}", std::env::consts::ARCH);
    let mut src = open_source(&source)?;
    let staging = nodeimage_core::files::rooted(root, STAGING);
    let dir = nodeimage_core::files::rooted(root, STATE_DIR);
    let esp = crate::boot_entries::EspMount::mount(&r.disk, &r.disk_name)?;
    // What runs, and what already waits in the other slot (its record and its entry).
    let mut current: Vec<String> =
        crate::source::cmdline_param(&cmdline, layout::verity::ROOT_HASH_PARAM)
            .into_iter()
            .collect();
    let pending = fs::read(dir.join(format!("slot-{}.json", r.other.slot)))
        .ok()
        .and_then(|b| serde_json::from_slice::<SlotRecord>(&b).ok())
        .filter(|rec| esp.dir.join("loader/entries").join(&rec.entry).exists());
    current.extend(pending.map(|p| p.root_hash));
    let outcome = install(
        &mut src,
        &key,
        std::env::consts::ARCH,
        &r.other,
        &staging,
        &esp.dir,
        &current,
    )?;
    drop(esp);
    let running = r.slot;
    match &outcome {
        Outcome::Installed(rec) => {
            fs::create_dir_all(&dir)?;
            nodeimage_core::files::atomic_write(
                &dir.join(format!("slot-{}.json", rec.slot)),
                &serde_json::to_vec_pretty(rec)?,
                0o644,
            )?;
            let sentinel = nodeimage_core::files::rooted(root, layout::REBOOT_SENTINEL);
            if let Some(d) = sentinel.parent() {
                fs::create_dir_all(d)?;
            }
            fs::write(&sentinel, format!("{} {}\n", rec.name, rec.version))?;
            eprintln!(
                "firstboot: update: slot {} now holds {} {} (root hash {}), booted next through {}; \
                 running from slot {running}; {:.1} s",
                rec.slot,
                rec.name,
                rec.version,
                rec.root_hash,
                rec.entry,
                started.elapsed().as_secs_f64()
            );
        }
        Outcome::Current { version, .. } => {
            eprintln!("firstboot: update: {source} is {version}, already installed: nothing to do");
        }
    }
    Ok(outcome)
}

/// `firstboot bless-boot`: this boot is healthy (firstboot has succeeded on this node):
/// keep the running slot's entry for good. Returns the entry blessed, if it had a counter.
pub fn bless_boot(root: &Path) -> Result<Option<String>> {
    let done = nodeimage_core::files::rooted(root, &format!("{}/done", crate::run::STATE_DIR));
    if !done.exists() {
        anyhow::bail!(
            "firstboot has not succeeded on this node ({} missing): not a healthy boot",
            done.display()
        );
    }
    let cmdline = fs::read_to_string("/proc/cmdline")?;
    if crate::source::cmdline_param(&cmdline, layout::verity::ROOT_HASH_PARAM).is_none() {
        // Not booted from a slot (a network boot): no entry to keep.
        return Ok(None);
    }
    let r = other_slot(&cmdline)?;
    let esp = crate::boot_entries::EspMount::mount(&r.disk, &r.disk_name)?;
    crate::boot_entries::bless(&esp.dir, &r.slot)
}

/// What `firstboot status` says of the slots: the running one and each one's record.
pub fn slots_status(root: &Path, cmdline: &str) -> serde_json::Value {
    let running = other_slot(cmdline).map(|r| r.slot).ok();
    let mut slots = serde_json::Map::new();
    for (s, _, _) in layout::SLOTS {
        let p = nodeimage_core::files::rooted(root, &format!("{STATE_DIR}/slot-{s}.json"));
        if let Ok(text) = fs::read_to_string(p) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                slots.insert(s.to_string(), v);
            }
        }
    }
    serde_json::json!({
        "running": running,
        "version": crate::source::cmdline_param(cmdline, layout::verity::VERSION_PARAM),
        "installed": slots,
    })
}
