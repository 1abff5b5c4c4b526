//! The `pxe` output netbooted under QEMU: no disk at all, SeaBIOS and QEMU's own iPXE ROM
//! (the virtio NIC's default option ROM, ipxe-qemu's efi-virtio.rom), user networking whose DHCP offers `bootfile=` a URL on an HTTP
//! server of this test on 127.0.0.1 (the guest reaches it as 10.0.2.2).
//!
//! The server plays a site's boot server: `/menu.ipxe` is the site's own script (it sets
//! `nodeimage-base` and the node config's digest, then chains the build's
//! `pxe/boot.ipxe`), `/pxe/` is the build's `pxe/` directory as it is, and
//! `/pxe/config/<mac>.yaml` the node's config, which firstboot fetches through
//! `firstboot.config_url=` with `{mac}` filled in.
//!
//! * [`netboot_reaches_firstboot_ok`]: iPXE loads kernel and initrd, the initramfs
//!   fetches root.erofs, verifies it and runs it from RAM; firstboot takes the config from
//!   config_url and reaches `firstboot: ok`.
//! * [`tampered_root_image_stops_the_boot`]: the same with one byte of root.erofs flipped
//!   on the server: the boot stops with the mismatch line before anything mounts it.
//!
//! Needs what x86_64_boot needs plus ipxe-qemu (installed by .ci/install-deps).

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::*;
use qemu_tests::{Vm, VmOptions};
use test_support::http::{Reply, TestServer};

/// QEMU's first NIC's MAC, as firstboot writes it into `{mac}` (percent-encoded).
const MAC_PATH: &str = "52%3A54%3A00%3A12%3A34%3A56";

fn pxe_needs(phase: &str) -> bool {
    needs(phase)
        && test_support::Needs::new(phase)
            .file("/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu")
            .met()
}

/// The site's boot server: the build's `pxe/` directory (with `root.erofs` replaced by
/// `root` when given), the site's menu script and the node config.
fn boot_server(pxe: &std::path::Path, root: Option<Vec<u8>>, node_yaml: &str) -> TestServer {
    let read = |n: &str| Arc::new(std::fs::read(pxe.join(n)).unwrap());
    let files: Vec<(String, Arc<Vec<u8>>)> = vec![
        ("/pxe/boot.ipxe".into(), read("boot.ipxe")),
        ("/pxe/vmlinuz".into(), read("vmlinuz")),
        ("/pxe/initrd.img".into(), read("initrd.img")),
        (
            "/pxe/root.erofs".into(),
            Arc::new(root.unwrap_or_else(|| std::fs::read(pxe.join("root.erofs")).unwrap())),
        ),
        (
            format!("/pxe/config/{MAC_PATH}.yaml"),
            Arc::new(node_yaml.as_bytes().to_vec()),
        ),
    ];
    let sha = sha256_bytes(node_yaml.as_bytes());
    let port = std::sync::OnceLock::<String>::new();
    let port = Arc::new(port);
    let p2 = port.clone();
    let server = TestServer::start(move |req, _| {
        if req.path == "/menu.ipxe" {
            let base = format!("http://10.0.2.2:{}/pxe/", p2.get().unwrap());
            return Reply::ok(
                format!(
                    "#!ipxe\n# the site's own script\nset nodeimage-base {base}\nset nodeimage-config-sha256 {sha}\nchain {base}boot.ipxe\n"
                )
                .as_bytes(),
            );
        }
        match files.iter().find(|(p, _)| *p == req.path) {
            Some((_, body)) => Reply::ok(body),
            None => Reply::status(404),
        }
    });
    port.set(server.base.rsplit(':').next().unwrap().to_string())
        .unwrap();
    server
}

fn sha256_bytes(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

fn netboot(server: &TestServer, name: &str) -> Vm {
    let port = server.base.rsplit(':').next().unwrap();
    Vm::start_x86_64(&VmOptions {
        memory_mib: 3072,
        netboot: Some(format!("http://10.0.2.2:{port}/menu.ipxe")),
        ..VmOptions::new(None, &base(), name)
    })
    .unwrap()
}

fn pxe_dir() -> std::path::PathBuf {
    fixture().raw.parent().unwrap().join("pxe")
}

#[test]
fn netboot_reaches_firstboot_ok() {
    if !pxe_needs("x86_64 network boot") {
        return;
    }
    let pxe = pxe_dir();
    // A diskless node: /var is a tmpfs, so the disk check does not apply.
    let node_yaml = "version: 1\nrole: worker\njoin: false\nhostname: pxe-node-1\ncluster:\n  name: qemu\n  api_endpoint: 10.0.2.15:6443\npreflight:\n  skip: [disk]\n";
    let server = boot_server(&pxe, None, node_yaml);
    let _slot = vm_slot();
    let started = Instant::now();
    let (line, report, vm) = phase("network boot", || {
        let mut vm = netboot(&server, "pxe1");
        let (line, t) = vm
            .wait_for_any(
                &[
                    "firstboot: ok",
                    "firstboot: error",
                    "nodeimage: network boot failed",
                ],
                BOOT_TIMEOUT,
            )
            .unwrap();
        eprintln!("network boot: `{line}` after {:.1} s", t.as_secs_f64());
        vm.wait_exit(BOOT_TIMEOUT).unwrap();
        let report = vm.report().unwrap();
        (line, report, vm)
    });
    eprintln!(
        "network boot to power-off: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        line.starts_with("firstboot: ok role=worker hostname=pxe-node-1 in "),
        "{line}"
    );
    let console = vm.console();
    let verified = console
        .lines()
        .find(|l| l.contains("nodeimage: root image http://10.0.2.2:") && l.contains("verified in"))
        .unwrap_or_else(|| panic!("no verification line on the console:\n{console}"));
    eprintln!("{}", verified.trim());
    assert!(verified.contains(&sha256_bytes(
        &std::fs::read(pxe.join("root.erofs")).unwrap()
    )));
    // What the guest fetched, in order: the site's script, the build's script, kernel,
    // initrd (iPXE), the root image once (the initramfs), the config (firstboot).
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/menu.ipxe",
            "/pxe/boot.ipxe",
            "/pxe/vmlinuz",
            "/pxe/initrd.img",
            "/pxe/root.erofs",
            &format!("/pxe/config/{MAC_PATH}.yaml"),
        ],
        "requests"
    );
    assert_eq!(report.len(), 1, "one report line expected: {report:?}");
    let r = &report[0];
    assert_eq!(r["hostname"], "pxe-node-1");
    assert_eq!(
        r["root_fs"], "erofs",
        "the root image, through a loop device"
    );
    assert_eq!(r["var_fs"], "tmpfs", "state in RAM");
    assert_eq!(r["etc_fs"], "overlay");
    assert_eq!(r["firstboot_result"], "success");
    assert_eq!(r["status"]["source"], "kernel-cmdline-url");
    assert_eq!(r["status"]["state"], "ok");
    let system = b64(r["system-state"].as_str().unwrap());
    assert!(!system.contains("failed "), "failed units: {system}");
}

#[test]
fn tampered_root_image_stops_the_boot() {
    if !pxe_needs("x86_64 network boot with a tampered root image") {
        return;
    }
    let pxe = pxe_dir();
    let mut root = std::fs::read(pxe.join("root.erofs")).unwrap();
    let at = root.len() / 2;
    root[at] ^= 0x01;
    let expected = sha256_bytes(&std::fs::read(pxe.join("root.erofs")).unwrap());
    let server = boot_server(&pxe, Some(root), "version: 1\n");
    let _slot = vm_slot();
    phase("network boot with a tampered root image", || {
        let mut vm = netboot(&server, "pxe2");
        let (line, t) = vm
            .wait_for_any(
                &["nodeimage: network boot failed: ", "firstboot: "],
                BOOT_TIMEOUT,
            )
            .unwrap();
        eprintln!("tampered root: `{line}` after {:.1} s", t.as_secs_f64());
        assert!(
            line.contains("root image http://10.0.2.2:")
                && line.contains(&format!("expected {expected}"))
                && line.contains("refusing to boot it"),
            "{line}"
        );
        vm.wait_for(
            "nodeimage: network boot failed (see the message above)",
            BOOT_TIMEOUT,
        )
        .unwrap();
        assert!(
            !vm.console().contains("firstboot: "),
            "nothing of the tampered root may run"
        );
    });
    // Fetched once: a complete transfer with the wrong hash is not retried.
    let roots = server
        .requests()
        .iter()
        .filter(|r| r.path == "/pxe/root.erofs")
        .count();
    assert_eq!(roots, 1);
}
