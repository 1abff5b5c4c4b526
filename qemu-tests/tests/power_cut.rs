//! Power cuts during a first boot (issue 11), on the x86_64 test image under QEMU:
//!
//! * [`power_cuts_during_first_boot_converge`]: one disk, booted again and again, each
//!   boot cut at the next point: while the GPT is written, during mkfs, during the copy
//!   of `/var`, after the state setup, between every two firstboot steps and between
//!   `status.json` and the `done` marker; then a boot without a cut. The end state must
//!   be that of an uninterrupted run: the partition table the state setup makes on a
//!   fresh copy of the image (computed on the host with the same code, compared with
//!   sfdisk's view of both), a state file system `e2fsck -fn` passes, every entry of the
//!   image's `/var` on it, `done` and a valid `status.json` with every step.
//! * [`state_setup_failure_reboots_without_a_shell`]: a disk with no room for the state
//!   partition: the console names the reason, the initramfs reboots (QEMU exits, as
//!   `-no-reboot` turns a reboot into an exit) and never opens a shell.
//!
//! The cuts are exact: `firstboot.fault=<point>` on the kernel command line (see
//! `firstboot::fault`) makes the guest power itself off at that point with
//! `reboot(RB_POWER_OFF)` and no sync, so everything not yet made durable is lost, as in
//! a power failure. Killing QEMU when a console line appears would land anywhere in the
//! few hundred milliseconds after the line (the guest runs on while the host reacts),
//! and a line is printed only after the work it reports. What neither method simulates
//! is a disk whose own write cache loses writes QEMU had already passed to the host:
//! the host file keeps every write the guest issued before the cut (the GPT's ordering
//! against that is tested on image files in `firstboot::state::gpt`).
//!
//! The fault point goes into the ESP's loader entry with mtools before each boot (the
//! entry's editor is off, so that is the only way to change the command line).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use qemu_tests::run;

/// The cut points, in the order one first boot passes them.
const POINTS: &[&str] = &[
    "gpt-primary-array",
    "gpt-written",
    "mkfs",
    "var-copy",
    "after-step:preflight",
    "after-step:firewall",
    "after-step:hostname",
    "after-step:files",
    "after-step:containerd-config",
    "after-step:images",
    "after-status",
];

const STEPS: [&str; 7] = [
    "acquire",
    "preflight",
    "firewall",
    "hostname",
    "files",
    "containerd-config",
    "images",
];

const DISK_SIZE: u64 = 4 << 30;

fn esp_offset(fx: &Fixture) -> u64 {
    fx.part("ESP").0
}

/// Put `fault` (or nothing) onto the kernel command line of the loader entry.
fn set_fault(disk: &Path, esp: u64, fault: Option<&str>) {
    let img = format!("{}@@{esp}", disk.display());
    let entry = run(Command::new("mtype")
        .args(["-i", &img])
        .arg("::/loader/entries/nodeimage-1-a.conf"))
    .unwrap();
    let text: String = entry
        .lines()
        .map(|l| match l.strip_prefix("options ") {
            Some(opts) => {
                let mut words: Vec<&str> = opts
                    .split_whitespace()
                    .filter(|w| !w.starts_with("firstboot.fault="))
                    .collect();
                let arg = fault.map(|f| format!("firstboot.fault={f}"));
                if let Some(a) = &arg {
                    words.push(a);
                }
                format!("options {}\n", words.join(" "))
            }
            None => format!("{l}\n"),
        })
        .collect();
    let tmp = base().join("power-cut-entry.conf");
    std::fs::write(&tmp, text).unwrap();
    run(Command::new("mcopy")
        .args(["-o", "-i", &img])
        .arg(&tmp)
        .arg("::/loader/entries/nodeimage-1-a.conf"))
    .unwrap();
}

/// A loop device over a byte range of a file, detached when dropped.
struct Loop(String);

impl Loop {
    fn new(file: &Path, offset: u64, size: u64) -> Loop {
        let dev = run(Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg("--offset")
            .arg(offset.to_string())
            .arg("--sizelimit")
            .arg(size.to_string())
            .arg(file))
        .unwrap();
        Loop(dev.trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A read-only mount, unmounted when dropped.
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    fn new(dev: &str, fstype: &str, opts: &str) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("mount")
            .args(["-t", fstype, "-o", opts, dev])
            .arg(dir.path()))
        .unwrap();
        Mount { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Every path under `dir`, relative to it (symlinks not followed).
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// sfdisk's view of a disk's table, without the device's own path.
fn table(disk: &Path) -> serde_json::Value {
    let out = run(Command::new("sfdisk").arg("--json").arg(disk)).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let t = &mut v["partitiontable"];
    t["device"] = serde_json::Value::Null;
    for p in t["partitions"].as_array_mut().unwrap() {
        p["node"] = serde_json::Value::Null;
    }
    v
}

/// The console lines a boot's state setup and firstboot printed about their work.
fn notes(console: &str) -> Vec<String> {
    console
        .lines()
        .filter(|l| {
            (l.contains("nodeimage: ") && !l.contains("Rebooting"))
                || l.contains("firstboot: resuming")
                || l.contains("GPT")
        })
        .map(|l| {
            let l = l.trim_matches(|c: char| c == '\r' || c.is_whitespace());
            // Drop the kernel's timestamp.
            match l.find("] ") {
                Some(i) if l.starts_with('[') => l[i + 2..].to_string(),
                _ => l.to_string(),
            }
        })
        .collect()
}

#[test]
fn power_cuts_during_first_boot_converge() {
    if !needs("power cuts during the first boot")
        || !test_support::Needs::new("power cuts during the first boot")
            .tool("losetup", "util-linux")
            .tool("e2fsck", "e2fsprogs")
            .tool("sfdisk", "fdisk")
            .met()
    {
        return;
    }
    let started = Instant::now();
    let fx = fixture();
    let base = base();
    let esp = esp_offset(fx);
    let nodeimage = qemu_tests::workspace_bin("nodeimage").unwrap();
    let node_yaml = base.join("power-cut-node.yaml");
    std::fs::write(
        &node_yaml,
        format!("{TEST_NODE}hostname: cut-node\nfiles:\n  - path: /etc/nodeimage-test/hello\n    mode: \"0640\"\n    contents: hello\n"),
    )
    .unwrap();
    let disk = base.join("power-cut.raw");
    boot_copy(&fx.raw, &disk, DISK_SIZE);
    run(Command::new(&nodeimage)
        .arg("write-config")
        .arg(&disk)
        .arg(&node_yaml))
    .unwrap();
    // The reference: what the state setup makes of the same disk without a cut.
    let reference = base.join("power-cut-reference.raw");
    boot_copy(&disk, &reference, DISK_SIZE);
    firstboot::state::apply_gpt(&reference).unwrap();

    let _slot = vm_slot();
    let mut rows = Vec::new();
    let mut previous = "(fresh disk)".to_string();
    for (i, point) in POINTS.iter().enumerate() {
        set_fault(&disk, esp, Some(point));
        let mut vm = start(&disk, &format!("cut{i:02}"), vec![]);
        let needle = format!("firstboot: fault point {point}: cutting the power");
        let (_, at) = vm
            .wait_for(&needle, BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("boot {i} (cut at {point}, after {previous}): {e:#}"));
        vm.wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("boot {i}: the cut at {point} did not power off: {e:#}"));
        let console = vm.console();
        assert!(
            !console.contains("(initramfs)"),
            "boot {i} opened an initramfs shell:\n{console}"
        );
        let seen = notes(&console);
        eprintln!(
            "cut {i:>2} at {point:<30} {:>5.1} s; this boot: {}",
            at.as_secs_f64(),
            seen.join(" | ")
        );
        rows.push((point.to_string(), at, seen));
        previous = format!("the cut at {point}");
    }
    // The boot without a cut.
    set_fault(&disk, esp, None);
    let mut vm = start(&disk, "cut-final", vec![]);
    let (line, at) = vm
        .wait_for_any(&["firstboot: ok", "firstboot: error"], BOOT_TIMEOUT)
        .unwrap();
    vm.wait_exit(Duration::from_secs(180)).unwrap();
    eprintln!(
        "final boot: {} | `{line}` {:.1} s after QEMU start",
        notes(&vm.console()).join(" | "),
        at.as_secs_f64()
    );
    let report = vm.report().unwrap();
    drop(vm);
    assert!(
        line.starts_with("firstboot: ok role=worker hostname=cut-node in "),
        "{line}"
    );
    let r = &report[0];
    assert_eq!(r["done"], true, "{r}");
    assert_eq!(r["var_fs"], "ext4");
    assert_eq!(r["etc_fs"], "overlay");
    assert_eq!(r["status"]["state"], "ok");

    // The partition table: as the state setup makes it without a cut.
    let got = table(&disk);
    assert_eq!(
        got,
        table(&reference),
        "the partition table differs from an uninterrupted state setup's"
    );
    let verify = Command::new("sfdisk")
        .arg("--verify")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "sfdisk --verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let parts = got["partitiontable"]["partitions"].as_array().unwrap();
    let state = parts
        .iter()
        .find(|p| p["name"] == "nodeimage-state")
        .expect("the state partition");
    let (start, size) = (
        state["start"].as_u64().unwrap() * 512,
        state["size"].as_u64().unwrap() * 512,
    );

    // The state file system: fsck-clean, the image's /var in it, done and status.json.
    let state_dev = Loop::new(&disk, start, size);
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&state_dev.0)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn on the state partition: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let (root_off, root_size) = fx.part("root-");
    let root_dev = Loop::new(&fx.raw, root_off, root_size);
    let image_root = Mount::new(&root_dev.0, "erofs", "ro");
    let state_fs = Mount::new(&state_dev.0, "ext4", "ro,noload");
    let image_var = tree(&image_root.path().join("var"));
    let missing: Vec<_> = image_var
        .iter()
        .filter(|p| std::fs::symlink_metadata(state_fs.path().join(p)).is_err())
        .collect();
    eprintln!(
        "/var: {} of the image's {} entries on the state partition",
        image_var.len() - missing.len(),
        image_var.len()
    );
    assert!(missing.is_empty(), "missing from /var: {missing:?}");
    assert!(state_fs.path().join("lib/firstboot/done").exists());
    let status: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state_fs.path().join("lib/firstboot/status.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(status["state"], "ok");
    assert_eq!(status["hostname"], "cut-node");
    let steps: Vec<&str> = status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, STEPS, "{status}");
    assert_eq!(
        std::fs::read_to_string(
            state_fs
                .path()
                .join("lib/nodeimage/etc/upper/nodeimage-test/hello")
        )
        .unwrap(),
        "hello"
    );
    let leftovers: Vec<_> = tree(&state_fs.path().join("lib/firstboot"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    drop((state_fs, image_root, state_dev, root_dev));

    eprintln!("\n| cut point | cut at | what the next boot did |\n|---|---|---|");
    for (i, (point, at, _)) in rows.iter().enumerate() {
        let next = rows
            .get(i + 1)
            .map(|r| r.2.join("; "))
            .unwrap_or_else(|| format!("final boot: `{line}`"));
        eprintln!("| {point} | {:.1} s | {next} |", at.as_secs_f64());
    }
    eprintln!(
        "power cuts: {} cuts and a final boot in {:.0} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_file(&disk);
    let _ = std::fs::remove_file(&reference);
}

#[test]
fn state_setup_failure_reboots_without_a_shell() {
    if !needs("state setup failure: reboot, no shell") {
        return;
    }
    let fx = fixture();
    // The image as built, not grown: no room for the state partition.
    let disk = base().join("no-room.raw");
    let size = std::fs::metadata(&fx.raw).unwrap().len();
    boot_copy(&fx.raw, &disk, size);
    let _slot = vm_slot();
    let mut vm = start(&disk, "no-room", vec![]);
    let (line, at) = vm
        .wait_for("nodeimage: state setup failed: ", BOOT_TIMEOUT)
        .unwrap();
    assert!(line.contains("no room for the state partition"), "{line}");
    vm.wait_for(
        "Rebooting automatically due to panic= boot argument",
        Duration::from_secs(30),
    )
    .unwrap();
    // -no-reboot: the reboot ends QEMU, 30 s later (panic=30).
    vm.wait_exit(Duration::from_secs(90)).unwrap();
    let console = vm.console();
    assert!(
        !console.contains("(initramfs)") && !console.contains("BusyBox"),
        "a shell was offered on the console:\n{console}"
    );
    eprintln!(
        "no room: `{line}` {:.1} s after QEMU start; rebooted after {:.1} s",
        at.as_secs_f64(),
        vm.started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_file(&disk);
}
