//! An Ignition config as user data: decompressed and detected the way
//! `firstboot::source::userdata::classify` does it, staged with
//! `firstboot::ignition::stage` (parse, merge/replace references, fetch contents from
//! data: URLs, validate), then planned with `StagedIgnition::plan` against an empty
//! directory as the root.
//!
//! No network: inputs whose `source`s (at any depth, also in configs carried in data:
//! URLs) include an http(s) URL are skipped, as staging them would fetch. Behind that,
//! the process moves into a network namespace of its own when it can (root), and
//! staging gets timeouts of a fraction of a second, so a missed remote source fails
//! fast and goes nowhere.
//!
//! Property: `plan` writes nothing (the root stays empty).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use firstboot::ignition::stage;
use firstboot::source::userdata::{decompress, detect, UserDataKind};
use firstboot::source::Timeouts;
use libfuzzer_sys::fuzz_target;
use nodeimage_fuzz::ignition_is_offline;

static ROOT: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();

fn root() -> &'static std::path::Path {
    &ROOT
        .get_or_init(|| {
            let d = tempfile::Builder::new()
                .prefix("fuzz-ignition-root")
                .tempdir_in(nodeimage_fuzz::scratch_dir())
                .expect("a root directory");
            let p = d.path().to_path_buf();
            (d, p)
        })
        .1
}

fn timeouts() -> Timeouts {
    Timeouts {
        request: Duration::from_millis(100),
        deadline: Duration::from_millis(200),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
    }
}

fuzz_target!(
    init: {
        // Defence in depth (see above); fails harmlessly when not root.
        // SAFETY: called once before any thread of ours exists.
        unsafe {
            libc::unshare(libc::CLONE_NEWNET);
        }
        let _ = root();
    },
    |data: &[u8]| {
        let Ok(raw) = decompress("fuzz", data) else {
            return;
        };
        if detect(&raw) != UserDataKind::Ignition || !ignition_is_offline(&raw) {
            return;
        }
        let staged = match stage("fuzz", &raw, timeouts()) {
            Ok(s) => s,
            Err(e) => {
                let _ = nodeimage_core::errors::chain(&e);
                return;
            }
        };
        let _ = (staged.summary(), staged.file_paths(), staged.node_config_yaml());
        let _ = format!("{staged:?}");
        let root = root();
        if let Ok(plan) = staged.plan(root) {
            let _ = plan.ops().len();
        }
        let left: Vec<_> = std::fs::read_dir(root)
            .expect("the root directory")
            .map(|e| e.map(|e| e.file_name()))
            .collect();
        assert!(left.is_empty(), "plan wrote into the root: {left:?}");
    }
);
