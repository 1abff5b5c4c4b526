//! Applying staged Ignition configs to a tree: conflicts fail before anything is written,
//! re-applying changes nothing, accounts, keys, units and links.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use firstboot::ignition::{stage, IgnitionError, StagedIgnition};
use firstboot::source::Timeouts;
use serde_json::{json, Value};

fn st(cfg: Value) -> StagedIgnition {
    let mut cfg = cfg;
    cfg["ignition"] = json!({"version": "3.4.0"});
    let t = Timeouts {
        request: Duration::from_millis(200),
        deadline: Duration::from_secs(1),
        ..Default::default()
    };
    stage("test", cfg.to_string().as_bytes(), t).unwrap()
}

/// Applying `cfg` to `root` fails with an error that contains `want`.
fn apply_refused(cfg: Value, root: &Path, want: &str) {
    let e = st(cfg).apply(root).unwrap_err();
    assert!(e.to_string().contains(want), "{e}");
}

/// Why staging `config` (with default timeouts) fails.
fn stage_err(config: &[u8]) -> IgnitionError {
    stage("t", config, Timeouts::default()).unwrap_err()
}

/// The mode of `p` (type and permission bits).
fn mode(p: impl AsRef<Path>) -> u32 {
    fs::metadata(p).unwrap().mode()
}

fn tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let etc = d.path().join("etc");
    fs::create_dir_all(&etc).unwrap();
    fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/bash\nsvc:x:1000:1000::/home/svc:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        etc.join("group"),
        "root:x:0:\nsudo:x:27:svc\nusers:x:100:\nsvc:x:1000:\n",
    )
    .unwrap();
    fs::write(
        etc.join("shadow"),
        "root:*:19000:0:99999:7:::\nsvc:!:19000:0:99999:7:::\n",
    )
    .unwrap();
    fs::set_permissions(etc.join("shadow"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(
        etc.join("gshadow"),
        "root:*::\nsudo:*::svc\nusers:*::\nsvc:!::\n",
    )
    .unwrap();
    d
}

fn list(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = test_support::files::walk(root)
        .into_iter()
        .map(|(p, m)| format!("{} {:o}", p.strip_prefix(root).unwrap().display(), m.mode()))
        .collect();
    out.sort();
    out
}

#[test]
fn an_existing_file_without_overwrite_is_a_conflict_and_nothing_is_written() {
    let t = tree();
    fs::write(t.path().join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    let before = list(t.path());
    let s = st(json!({"storage": {
        "files": [
            {"path": "/etc/first", "contents": {"source": "data:,1"}},
            {"path": "/etc/hosts", "contents": {"source": "data:,other"}}
        ],
        "directories": [{"path": "/var/lib/new"}]
    }}));
    let e = s.apply(t.path()).unwrap_err();
    assert!(matches!(e, IgnitionError::Conflict { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("/etc/hosts: exists and overwrite is false"),
        "{e}"
    );
    assert_eq!(list(t.path()), before);
}

#[test]
fn appends_defaults_and_reapplying_changes_nothing() {
    let t = tree();
    fs::write(t.path().join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    let s = st(json!({"storage": {
        "files": [
            {"path": "/etc/hosts", "append": [{"source": "data:,10.0.0.1%20master%0A"}]},
            {"path": "/etc/empty"},
            {"path": "/etc/app.conf", "mode": 416, "contents": {"source": "data:,a%3D1%0A"}, "append": [{"source": "data:,b%3D2%0A"}]}
        ],
        "directories": [{"path": "/var/lib/app", "mode": 448}],
        "links": [
            {"path": "/etc/app-link.conf", "target": "app.conf"},
            {"path": "/etc/app-hard.conf", "target": "/etc/app.conf", "hard": true}
        ]
    }}));
    let r = s.apply(t.path()).unwrap();
    let root = t.path();
    assert_eq!(
        fs::read_to_string(root.join("etc/hosts")).unwrap(),
        "127.0.0.1 localhost\n10.0.0.1 master\n"
    );
    assert_eq!(fs::read(root.join("etc/empty")).unwrap(), b"");
    assert_eq!(mode(root.join("etc/empty")) & 0o7777, 0o644);
    assert_eq!(
        fs::read_to_string(root.join("etc/app.conf")).unwrap(),
        "a=1\nb=2\n"
    );
    assert_eq!(mode(root.join("etc/app.conf")) & 0o7777, 0o640);
    assert_eq!(mode(root.join("var/lib/app")) & 0o7777, 0o700);
    assert_eq!(mode(root.join("var/lib")) & 0o7777, 0o755);
    assert_eq!(
        fs::read_link(root.join("etc/app-link.conf")).unwrap(),
        Path::new("app.conf")
    );
    assert_eq!(
        fs::metadata(root.join("etc/app-hard.conf")).unwrap().ino(),
        fs::metadata(root.join("etc/app.conf")).unwrap().ino()
    );
    assert_eq!(r.links.len(), 2);

    // Same config again: files with contents are unchanged; appends append again (as Ignition).
    let s2 = st(json!({"storage": {
        "files": [{"path": "/etc/app.conf", "mode": 416, "contents": {"source": "data:,a%3D1%0A"}, "append": [{"source": "data:,b%3D2%0A"}]}],
        "directories": [{"path": "/var/lib/app", "mode": 448}],
        "links": [{"path": "/etc/app-link.conf", "target": "app.conf"}, {"path": "/etc/app-hard.conf", "target": "/etc/app.conf", "hard": true}]
    }}));
    let r = s2.apply(root).unwrap();
    assert!(
        r.written.is_empty() && r.directories.is_empty() && r.links.is_empty(),
        "{r:?}"
    );
    assert_eq!(r.unchanged.len(), 4, "{r:?}");
}

#[test]
fn type_conflicts_and_bad_links_fail_in_planning() {
    let t = tree();
    fs::write(t.path().join("etc/notadir"), "x").unwrap();
    apply_refused(
        json!({"storage": {"directories": [{"path": "/etc/notadir"}]}}),
        t.path(),
        "is not a directory",
    );
    st(json!({"storage": {"directories": [{"path": "/etc/notadir", "overwrite": true}]}}))
        .apply(t.path())
        .unwrap();
    assert!(t.path().join("etc/notadir").is_dir());
    apply_refused(
        json!({"storage": {"links": [{"path": "/etc/h", "target": "/etc/missing", "hard": true}]}}),
        t.path(),
        "hard link target /etc/missing does not exist",
    );
    let cfg = json!({"ignition": {"version": "3.4.0"}, "storage": {"files": [{"path": "/etc/x"}], "links": [{"path": "/etc/x", "target": "y"}]}});
    let e = stage_err(cfg.to_string().as_bytes());
    assert!(e.to_string().contains("more than once"), "{e}");
    let e = stage_err(br#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/x","overwrite":true}]}}"#);
    assert!(
        e.to_string().contains("overwrite needs contents.source"),
        "{e}"
    );
    let e =
        stage_err(br#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"etc/x"}]}}"#);
    assert!(e.to_string().contains("storage.files[etc/x].path"), "{e}");
}

#[test]
fn users_groups_and_keys_in_a_tree_with_account_files() {
    let t = tree();
    let root = t.path();
    fs::create_dir_all(root.join("root/.ssh")).unwrap();
    fs::write(
        root.join("root/.ssh/authorized_keys"),
        "ssh-ed25519 AAAAold old@host\n",
    )
    .unwrap();
    let s = st(json!({
        "passwd": {
            "groups": [{"name": "docker"}, {"name": "sysgrp", "system": true}],
            "users": [
                {"name": "root", "sshAuthorizedKeys": ["ssh-ed25519 AAAAold old@host", "ssh-ed25519 AAAAnew new@host"]},
                {"name": "core", "groups": ["sudo", "docker"], "passwordHash": "$6$salt$hash", "sshAuthorizedKeys": ["ssh-ed25519 AAAAcore core@host"]},
                {"name": "daemon1", "system": true, "noCreateHome": true, "shell": "/usr/sbin/nologin", "noUserGroup": true},
                {"name": "svc", "groups": ["docker"]}
            ]
        },
        "storage": {"files": [{"path": "/home/core/owned", "user": {"name": "core"}, "group": {"name": "docker"}, "contents": {"source": "data:,x"}}]}
    }));
    let r = s.apply(root).unwrap();
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    let group = fs::read_to_string(root.join("etc/group")).unwrap();
    let shadow = fs::read_to_string(root.join("etc/shadow")).unwrap();
    let gshadow = fs::read_to_string(root.join("etc/gshadow")).unwrap();
    assert!(
        passwd.starts_with("root:x:0:0:root:/root:/bin/bash\nsvc:x:1000:1000::/home/svc:/bin/sh\n"),
        "{passwd}"
    );
    assert!(
        passwd.contains("core:x:1002:1002::/home/core:/bin/bash\n"),
        "{passwd}"
    );
    assert!(
        passwd.contains("daemon1:x:998:100::/home/daemon1:/usr/sbin/nologin\n"),
        "{passwd}"
    );
    test_support::assert_contains(
        &group,
        &["docker:x:1001:core,svc\n", "sudo:x:27:svc,core\n"],
    );
    test_support::assert_contains(&group, &["sysgrp:x:999:\n", "core:x:1002:\n"]);
    assert!(shadow.contains("core:$6$salt$hash:"), "{shadow}");
    assert_eq!(mode(root.join("etc/shadow")) & 0o777, 0o640, "mode kept");
    test_support::assert_contains(&gshadow, &["docker:!::core,svc", "sudo:*::svc,core"]);
    assert_eq!(
        fs::read_to_string(root.join("root/.ssh/authorized_keys")).unwrap(),
        "ssh-ed25519 AAAAold old@host\nssh-ed25519 AAAAnew new@host\n"
    );
    let keys = root.join("home/core/.ssh/authorized_keys");
    assert_eq!(
        fs::read_to_string(&keys).unwrap(),
        "ssh-ed25519 AAAAcore core@host\n"
    );
    assert_eq!(mode(&keys) & 0o777, 0o600);
    assert_eq!(mode(root.join("home/core/.ssh")) & 0o777, 0o700);
    assert_eq!(mode(root.join("home/core")) & 0o777, 0o700);
    assert!(!root.join("home/daemon1").exists());
    assert_eq!(r.users_created, ["core", "daemon1"]);
    assert_eq!(r.users_updated, ["svc"]);
    assert_eq!(r.groups_created, ["docker", "sysgrp"]);
    // Ownership applies when running as root (the node); otherwise it is reported.
    let m = fs::metadata(root.join("home/core/owned")).unwrap();
    let euid = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1);
    if euid == 0 {
        assert_eq!((m.uid(), m.gid()), (1002, 1001));
        assert_eq!(fs::metadata(&keys).unwrap().uid(), 1002);
    } else {
        assert!(
            r.ownership_skipped
                .contains(&"/home/core/owned".to_string()),
            "{r:?}"
        );
    }
    // Again: nothing changes.
    let r = s.apply(root).unwrap();
    assert!(
        r.written.is_empty() && r.users_created.is_empty() && r.users_updated.is_empty(),
        "{r:?}"
    );
}

#[test]
fn changing_an_existing_user_is_refused() {
    let t = tree();
    apply_refused(
        json!({"passwd": {"users": [{"name": "svc", "shell": "/bin/zsh"}]}}),
        t.path(),
        "changing shell of an existing user is not supported",
    );
    apply_refused(
        json!({"passwd": {"users": [{"name": "new", "groups": ["nosuch"]}]}}),
        t.path(),
        "group `nosuch` does not exist",
    );
    apply_refused(
        json!({"storage": {"files": [{"path": "/x", "user": {"name": "ghost"}}]}}),
        t.path(),
        "unknown user `ghost`",
    );
}

#[test]
fn without_account_files_users_are_recorded_and_keys_still_written() {
    let t = tempfile::tempdir().unwrap();
    let r = st(json!({"passwd": {"users": [{"name": "core", "groups": ["wheel"], "sshAuthorizedKeys": ["ssh-ed25519 AAAAk k"]}],
                                 "groups": [{"name": "ops"}]}}))
    .apply(t.path())
    .unwrap();
    assert_eq!(r.users_recorded, ["core"]);
    assert_eq!(r.groups_recorded, ["ops", "core:wheel"]);
    assert!(r.users_created.is_empty());
    assert!(!t.path().join("etc/passwd").exists());
    assert_eq!(
        fs::read_to_string(t.path().join("home/core/.ssh/authorized_keys")).unwrap(),
        "ssh-ed25519 AAAAk k\n"
    );
}

#[test]
fn units_enable_disable_mask_unmask_and_dropins() {
    let t = tree();
    let root = t.path();
    let lib = root.join("usr/lib/systemd/system");
    fs::create_dir_all(&lib).unwrap();
    fs::write(lib.join("chronyd.service"), "[Service]\nExecStart=/usr/sbin/chronyd\n[Install]\nWantedBy=multi-user.target\nAlias=ntp.service\n").unwrap();
    fs::write(
        lib.join("getty@.service"),
        "[Service]\nExecStart=agetty %I\n[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n",
    )
    .unwrap();
    fs::write(
        lib.join("static.service"),
        "[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    let etc = root.join("etc/systemd/system");
    fs::create_dir_all(etc.join("timers.target.wants")).unwrap();
    fs::write(
        lib.join("old.timer"),
        "[Timer]\nOnCalendar=daily\n[Install]\nWantedBy=timers.target\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/old.timer",
        etc.join("timers.target.wants/old.timer"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/dev/null", etc.join("masked.service")).unwrap();

    let r = st(json!({"systemd": {"units": [
        {"name": "chronyd.service", "enabled": true},
        {"name": "getty@.service", "enabled": true},
        {"name": "old.timer", "enabled": false},
        {"name": "masked.service", "mask": false},
        {"name": "kubelet.service", "dropins": [{"name": "10-args.conf", "contents": "[Service]\nEnvironment=A=1\n"}, {"name": "20-empty.conf"}]}
    ]}}))
    .apply(root)
    .unwrap();
    assert_eq!(
        fs::read_link(etc.join("multi-user.target.wants/chronyd.service")).unwrap(),
        Path::new("/usr/lib/systemd/system/chronyd.service")
    );
    assert_eq!(
        fs::read_link(etc.join("ntp.service")).unwrap(),
        Path::new("/usr/lib/systemd/system/chronyd.service")
    );
    assert_eq!(
        fs::read_link(etc.join("getty.target.wants/getty@tty1.service")).unwrap(),
        Path::new("/usr/lib/systemd/system/getty@.service")
    );
    assert!(fs::symlink_metadata(etc.join("timers.target.wants/old.timer")).is_err());
    assert!(fs::symlink_metadata(etc.join("masked.service")).is_err());
    assert_eq!(
        fs::read_to_string(etc.join("kubelet.service.d/10-args.conf")).unwrap(),
        "[Service]\nEnvironment=A=1\n"
    );
    assert!(!etc.join("kubelet.service.d/20-empty.conf").exists());
    assert_eq!(r.units_enabled, ["chronyd.service", "getty@.service"]);
    assert_eq!(r.units_disabled, ["old.timer"]);
    assert_eq!(r.units_unmasked, ["masked.service"]);

    apply_refused(
        json!({"systemd": {"units": [{"name": "static.service", "enabled": true}]}}),
        root,
        "has no WantedBy=, RequiredBy= or Alias=",
    );
    apply_refused(
        json!({"systemd": {"units": [{"name": "ghost.service", "enabled": true}]}}),
        root,
        "cannot enable ghost.service: no unit file",
    );
    let e = stage_err(br#"{"ignition":{"version":"3.4.0"},"systemd":{"units":[{"name":"x.service","mask":true,"contents":"[Unit]"}]}}"#);
    assert!(
        e.to_string()
            .contains("masked unit cannot also have contents"),
        "{e}"
    );
    let e =
        stage_err(br#"{"ignition":{"version":"3.4.0"},"systemd":{"units":[{"name":"nosuffix"}]}}"#);
    assert!(e.to_string().contains("systemd.units[nosuffix]"), "{e}");
}

#[test]
fn a_storage_file_and_a_unit_writing_the_same_path_conflict() {
    let t = tree();
    apply_refused(
        json!({
            "storage": {"files": [{"path": "/etc/systemd/system/a.service", "contents": {"source": "data:,x"}}]},
            "systemd": {"units": [{"name": "a.service", "contents": "[Unit]\n"}]}
        }),
        t.path(),
        "written twice",
    );
}
