//! The test container images (qemu-tests/images): runs their test suite,
//! `qemu-tests/images/test_images.py` (Python standard library), which builds every image
//! twice (identical digests and bytes), checks the OCI layouts with skopeo, runs each
//! image under a private Debian containerd, pushes them to a local registry and, when
//! the nodeimage binary is built, resolves them with `nodeimage lock --registry-mirror`.
//!
//! Needs root, containerd, runc, skopeo, gcc, mmdebstrap, docker-registry, shellcheck.
//! Under CI=true anything missing fails the test (never a silent skip). Images whose
//! upstream binaries are missing (coredns, weave-*) fail under CI too unless
//! NODEIMAGE_TEST_IMAGES leaves them out, e.g. `NODEIMAGE_TEST_IMAGES=pause,workload`;
//! NODEIMAGE_TEST_BINS names the directory with those binaries.

use std::process::Command;

use qemu_tests::{workspace_bin, workspace_root};

#[test]
fn test_images_suite() {
    let root = workspace_root();
    let mut cmd = Command::new("python3");
    cmd.arg(root.join("qemu-tests/images/test_images.py"))
        .arg("-v")
        .current_dir(&root);
    if std::env::var_os("NODEIMAGE_BIN").is_none() {
        if let Ok(bin) = workspace_bin("nodeimage") {
            cmd.env("NODEIMAGE_BIN", bin);
        }
    }
    let status = cmd
        .status()
        .expect("running python3 qemu-tests/images/test_images.py");
    assert!(
        status.success(),
        "qemu-tests/images/test_images.py failed ({status}); its output is above"
    );
}
