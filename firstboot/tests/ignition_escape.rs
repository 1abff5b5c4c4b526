//! An Ignition config applied under `--root DIR` never writes outside DIR, and the
//! account files it changes never gain lines it did not ask for (issue 11, M2 and M3).
//!
//! Each test lays out `<tmp>/root` (the tree) beside `<tmp>/outside`, which nothing may
//! create or touch.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use firstboot::ignition::{stage, IgnitionError, StagedIgnition};
use firstboot::source::Timeouts;
use serde_json::{json, Value};

fn timeouts() -> Timeouts {
    Timeouts {
        request: Duration::from_millis(200),
        deadline: Duration::from_secs(1),
        ..Default::default()
    }
}

fn stage_json(cfg: Value) -> Result<StagedIgnition, IgnitionError> {
    let mut cfg = cfg;
    cfg["ignition"] = json!({"version": "3.4.0"});
    stage("test", cfg.to_string().as_bytes(), timeouts())
}

struct Lab {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\nsvc:x:1000:1000::/home/svc:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nsvc:x:1000:\n").unwrap();
    fs::write(
        root.join("etc/shadow"),
        "root:*:19000:0:99999:7:::\nsvc:!:19000:0:99999:7:::\n",
    )
    .unwrap();
    fs::write(root.join("etc/gshadow"), "root:*::\nsvc:!::\n").unwrap();
    Lab {
        _dir: dir,
        root,
        outside,
    }
}

/// Everything under `dir` (relative paths), empty when it does not exist.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e.unwrap();
            out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn assert_outside_untouched(l: &Lab) {
    assert!(
        !l.outside.exists(),
        "written outside the root: {:?}",
        tree(&l.outside)
    );
}

/// The confirmed escape: `WantedBy=../../../../outside/pwned.target` in a unit's
/// `[Install]` section made `pwned.target.wants/` outside the root. Every `[Install]`
/// value must be a plain unit name; the error names the unit and the value.
#[test]
fn install_section_names_cannot_leave_the_unit_directory() {
    for (key, value) in [
        ("WantedBy", "../../../../outside/pwned.target"),
        ("RequiredBy", "../../../../outside/pwned.target"),
        ("Alias", "../../../../outside/pwned.service"),
        ("WantedBy", "/outside/pwned.target"),
        ("Alias", "sub/dir.service"),
    ] {
        let l = lab();
        let unit = format!("[Service]\nExecStart=/bin/true\n[Install]\n{key}={value}\n");
        let s = stage_json(json!({"systemd": {"units": [
            {"name": "pwn.service", "enabled": true, "contents": unit}
        ]}}))
        .unwrap();
        let before = tree(&l.root);
        let e = s.apply(&l.root).unwrap_err().to_string();
        assert!(
            e.contains("pwn.service") && e.contains(key) && e.contains(value),
            "{key}={value}: {e}"
        );
        assert_outside_untouched(&l);
        assert_eq!(tree(&l.root), before, "{key}={value}: nothing written");
    }
    // DefaultInstance= is pasted into the link name.
    let l = lab();
    let s = stage_json(json!({"systemd": {"units": [
        {"name": "pwn@.service", "enabled": true,
         "contents": "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\nDefaultInstance=../../../../../outside/x\n"}
    ]}}))
    .unwrap();
    let e = s.apply(&l.root).unwrap_err().to_string();
    assert!(e.contains("DefaultInstance"), "{e}");
    assert_outside_untouched(&l);
    // A unit already in the tree is read the same way.
    let l = lab();
    fs::create_dir_all(l.root.join("usr/lib/systemd/system")).unwrap();
    fs::write(
        l.root.join("usr/lib/systemd/system/tree.service"),
        "[Install]\nWantedBy=../../../../outside/pwned.target\n",
    )
    .unwrap();
    let s = stage_json(json!({"systemd": {"units": [{"name": "tree.service", "enabled": true}]}}))
        .unwrap();
    assert!(s.apply(&l.root).is_err());
    assert_outside_untouched(&l);
}

/// Absolute symlinks in the tree (Debian ships `var/run -> /run`) resolve inside the
/// root, as they will on the node; relative ones cannot climb above it.
#[test]
fn symlinks_in_the_tree_resolve_inside_the_root() {
    let l = lab();
    fs::create_dir_all(l.root.join("var")).unwrap();
    fs::create_dir_all(l.root.join("run")).unwrap();
    symlink("/run", l.root.join("var/run")).unwrap();
    // A link to the outside directory by its absolute host path...
    symlink(&l.outside, l.root.join("etc/abs")).unwrap();
    // ... and one climbing out with `..`.
    symlink("../../../../../../../../outside", l.root.join("etc/up")).unwrap();
    let s = stage_json(json!({"storage": {
        "files": [
            {"path": "/var/run/pid", "contents": {"source": "data:,1"}},
            {"path": "/etc/abs/pwned", "contents": {"source": "data:,abs"}},
            {"path": "/etc/up/pwned", "contents": {"source": "data:,up"}}
        ],
        "directories": [{"path": "/etc/abs/dir"}],
        "links": [{"path": "/etc/up/link", "target": "/etc/passwd"}]
    }}))
    .unwrap();
    s.apply(&l.root).unwrap();
    assert_outside_untouched(&l);
    // `/run` inside the root.
    assert_eq!(fs::read_to_string(l.root.join("run/pid")).unwrap(), "1");
    // The absolute link's target, taken inside the root.
    let abs_in_root = l.root.join(l.outside.strip_prefix("/").unwrap());
    assert_eq!(
        fs::read_to_string(abs_in_root.join("pwned")).unwrap(),
        "abs"
    );
    assert!(abs_in_root.join("dir").is_dir());
    // `..` stops at the root: `/outside` of the tree.
    assert_eq!(
        fs::read_to_string(l.root.join("outside/pwned")).unwrap(),
        "up"
    );
    assert!(l.root.join("outside/link").symlink_metadata().is_ok());
    // The links themselves are untouched.
    assert_eq!(
        fs::read_link(l.root.join("var/run")).unwrap(),
        Path::new("/run")
    );
}

/// Reading the tree (an existing file appended to, a unit to enable) follows its links
/// inside the root too: nothing outside is read into the tree.
#[test]
fn reads_follow_links_inside_the_root() {
    let l = lab();
    fs::create_dir_all(&l.outside).unwrap();
    fs::write(l.outside.join("secret"), "host secret\n").unwrap();
    fs::create_dir_all(l.root.join(l.outside.strip_prefix("/").unwrap())).unwrap();
    symlink(&l.outside, l.root.join("etc/abs")).unwrap();
    let s = stage_json(json!({"storage": {"files": [
        {"path": "/etc/abs/secret", "append": [{"source": "data:,more"}]}
    ]}}))
    .unwrap();
    s.apply(&l.root).unwrap();
    assert_eq!(
        fs::read_to_string(l.outside.join("secret")).unwrap(),
        "host secret\n",
        "the host file is not changed"
    );
    let inside = l
        .root
        .join(l.outside.strip_prefix("/").unwrap())
        .join("secret");
    assert_eq!(fs::read_to_string(inside).unwrap(), "more");
}

/// A config cannot write through a link it creates itself.
#[test]
fn writing_through_a_link_of_the_same_config_is_refused() {
    let l = lab();
    let s = stage_json(json!({"storage": {
        "files": [{"path": "/var/x/pwned", "contents": {"source": "data:,1"}}],
        "links": [{"path": "/var/x", "target": "/etc"}]
    }}))
    .unwrap();
    let before = tree(&l.root);
    let e = s.apply(&l.root).unwrap_err().to_string();
    assert!(e.contains("/var/x"), "{e}");
    assert_eq!(tree(&l.root), before);
}

/// `homeDir` and `shell` must be absolute paths without `.` or `..`.
#[test]
fn home_and_shell_must_be_absolute_clean_paths() {
    for (field, user) in [
        (
            "homeDir",
            json!({"name": "core", "homeDir": "../../../../outside/home"}),
        ),
        ("homeDir", json!({"name": "core", "homeDir": "home/core"})),
        (
            "homeDir",
            json!({"name": "core", "homeDir": "/home/../../x"}),
        ),
        ("shell", json!({"name": "core", "shell": "bin/bash"})),
        ("shell", json!({"name": "core", "shell": "/bin/../../sh"})),
    ] {
        let e = stage_json(json!({"passwd": {"users": [user]}}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("passwd.users[core].{field}")),
            "{field}: {e}"
        );
    }
}

/// A new user whose home already exists (`/`, `/etc`, `/var/lib`) gets the line in
/// /etc/passwd, never a chmod or chown of that directory.
#[test]
fn an_existing_home_directory_is_never_chowned_or_chmodded() {
    let l = lab();
    let lib = l.root.join("var/lib");
    fs::create_dir_all(&lib).unwrap();
    fs::set_permissions(&lib, fs::Permissions::from_mode(0o755)).unwrap();
    let before = fs::metadata(&lib).unwrap();
    let s = stage_json(json!({"passwd": {"users": [
        {"name": "core", "homeDir": "/var/lib", "sshAuthorizedKeys": ["ssh-ed25519 AAAAk k"]}
    ]}}))
    .unwrap();
    let r = s.apply(&l.root).unwrap();
    assert_eq!(r.users_created, ["core"]);
    let after = fs::metadata(&lib).unwrap();
    assert_eq!(after.mode() & 0o7777, 0o755, "mode kept");
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    assert!(fs::read_to_string(l.root.join("etc/passwd"))
        .unwrap()
        .contains(":/var/lib:/bin/bash\n"));
    // The keys still go to <home>/.ssh.
    assert!(l.root.join("var/lib/.ssh/authorized_keys").is_file());
}

/// The confirmed injection: a `gecos` with `:` and a newline added a second uid-0 line
/// with an empty password field to /etc/passwd. Every field written to an account file
/// refuses `:`, newlines and NUL; the error names the field, never the value.
#[test]
fn account_fields_cannot_inject_lines() {
    let inject = "x\nroot2::0:0::/root:/bin/bash";
    let cases = [
        ("gecos", json!({"name": "core", "gecos": inject})),
        ("gecos", json!({"name": "core", "gecos": "a:b"})),
        ("gecos", json!({"name": "core", "gecos": "a\rb"})),
        ("gecos", json!({"name": "core", "gecos": "a\u{0}b"})),
        (
            "shell",
            json!({"name": "core", "shell": "/bin/sh\nroot2::0:0::/:/bin/sh"}),
        ),
        (
            "homeDir",
            json!({"name": "core", "homeDir": "/home/core:x"}),
        ),
        (
            "passwordHash",
            json!({"name": "core", "passwordHash": "$6$x\nroot2::0:0:99999:7:::"}),
        ),
        (
            "passwordHash",
            json!({"name": "svc", "passwordHash": "a:b"}),
        ),
        (
            "sshAuthorizedKeys",
            json!({"name": "core", "sshAuthorizedKeys": ["ssh-ed25519 AAAA k\ncommand=\"x\" ssh-rsa B"]}),
        ),
    ];
    for (field, user) in cases {
        let l = lab();
        let before = fs::read_to_string(l.root.join("etc/passwd")).unwrap();
        let r = stage_json(json!({"passwd": {"users": [user]}}))
            .and_then(|s| s.apply(&l.root).map(drop));
        let e = r.unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
        assert!(!e.contains("root2"), "the value is not echoed: {e}");
        assert_eq!(
            fs::read_to_string(l.root.join("etc/passwd")).unwrap(),
            before
        );
        assert!(!fs::read_to_string(l.root.join("etc/shadow"))
            .unwrap()
            .contains("root2"));
    }
    let e = stage_json(
        json!({"passwd": {"groups": [{"name": "ops", "passwordHash": "x\nroot2::0:"}]}}),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("passwd.groups[ops].passwordHash"), "{e}");
}
