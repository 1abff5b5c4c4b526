//! Fetcher with local sources (paths, file://, mirror directories), offline mode,
//! the cache location, and archive member extraction. No network.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::*;
use nodeimage::fetch::{extract_member, Cache, FetchError, FetchOptions, Mirror, CACHE_ENV};
use test_support::files::*;
use test_support::http::UNREACHABLE;

const PATH: &str = "/release/v1.35.1/bin/linux/amd64/kubelet";

/// A directory holding `name` with `content(len, seed)`: the directory, the file, its bytes.
fn local_file(
    name: &str,
    len: usize,
    seed: u8,
) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let src = tempfile::tempdir().unwrap();
    let body = content(len, seed);
    let file = src.path().join(name);
    fs::write(&file, &body).unwrap();
    (src, file, body)
}

#[test]
fn file_url_and_plain_path_sources() {
    let (src, file, body) = local_file("kubelet", 100_000, 20);
    let digest = sha256(&body);

    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(dir.path(), test_options());
    let by_path = f.fetch(file.to_str().unwrap(), &digest).unwrap();
    assert_eq!(fs::read(&by_path).unwrap(), body);

    let dir2 = tempfile::tempdir().unwrap();
    let url = url::Url::from_file_path(&file).unwrap().to_string();
    let by_url = fetcher(dir2.path(), test_options())
        .fetch(&url, &digest)
        .unwrap();
    assert_eq!(fs::read(&by_url).unwrap(), body);

    // Wrong hash from a local file: named, nothing left behind.
    let dir3 = tempfile::tempdir().unwrap();
    let wrong = sha256(b"nope");
    let msg = fetcher(dir3.path(), test_options())
        .fetch(file.to_str().unwrap(), &wrong)
        .unwrap_err()
        .to_string();
    test_support::assert_contains(&msg, &[file.to_str().unwrap(), &wrong.to_string()]);
    assert!(msg.contains(&digest.to_string()), "{msg}");
    assert!(files_below(&dir3.path().join("blobs")).is_empty());
    assert!(list(&dir3.path().join("partial")).is_empty());

    // Missing file.
    let missing = src.path().join("absent");
    let msg = f
        .fetch(missing.to_str().unwrap(), &wrong)
        .unwrap_err()
        .to_string();
    test_support::assert_contains(&msg, &[missing.to_str().unwrap(), "No such file"]);
}

#[test]
fn mirror_directory_with_host_path_layout() {
    let mirror = tempfile::tempdir().unwrap();
    let body = content(64_000, 21);
    let file = mirror.path().join("127.0.0.1").join(&PATH[1..]);
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, &body).unwrap();
    let upstream = format!("{UNREACHABLE}{PATH}");

    for (mirror_only, offline) in [(false, false), (true, false), (false, true)] {
        let dir = tempfile::tempdir().unwrap();
        let opts = FetchOptions {
            mirrors: vec![Mirror::parse(mirror.path().to_str().unwrap()).unwrap()],
            mirror_only,
            offline,
            ..test_options()
        };
        let path = fetcher(dir.path(), opts)
            .fetch(&upstream, &sha256(&body))
            .unwrap();
        assert_eq!(fs::read(path).unwrap(), body);
    }
}

#[test]
fn offline_serves_cached_blob_without_any_server() {
    let (_src, file, body) = local_file("blob", 10_000, 22);
    let digest = sha512(&body);
    let dir = tempfile::tempdir().unwrap();
    // Pre-fill the cache from a local file.
    fetcher(dir.path(), test_options())
        .fetch(file.to_str().unwrap(), &digest)
        .unwrap();

    let opts = FetchOptions {
        offline: true,
        verify_cached: true,
        ..test_options()
    };
    let path = fetcher(dir.path(), opts)
        .fetch(&format!("{UNREACHABLE}{PATH}"), &digest)
        .unwrap();
    assert_eq!(fs::read(path).unwrap(), body);
}

#[test]
fn verify_removes_a_corrupt_blob() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());
    let digest = sha256(b"right");
    let p = cache.path_for(&digest);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, b"wrong").unwrap();
    assert_eq!(cache.get(&digest), Some(p.clone()));
    assert_eq!(cache.verify(&digest).unwrap(), None);
    assert!(!p.exists());
    // Empty files are not blobs (unless the digest is that of empty content).
    fs::write(&p, b"").unwrap();
    assert_eq!(cache.get(&digest), None);
}

#[test]
fn cache_root_from_option_env_xdg_home() {
    // The only test in this binary that touches the environment.
    let saved: Vec<_> = [CACHE_ENV, "XDG_CACHE_HOME", "HOME"]
        .iter()
        .map(|k| (*k, std::env::var_os(k)))
        .collect();
    std::env::set_var("HOME", "/home/u");
    std::env::remove_var(CACHE_ENV);
    std::env::remove_var("XDG_CACHE_HOME");
    assert_eq!(
        Cache::default_root().unwrap(),
        Path::new("/home/u/.cache/nodeimage")
    );
    std::env::set_var("XDG_CACHE_HOME", "relative/ignored");
    assert_eq!(
        Cache::default_root().unwrap(),
        Path::new("/home/u/.cache/nodeimage")
    );
    std::env::set_var("XDG_CACHE_HOME", "/xdg");
    assert_eq!(Cache::default_root().unwrap(), Path::new("/xdg/nodeimage"));
    std::env::set_var(CACHE_ENV, "/env/cache");
    assert_eq!(Cache::default_root().unwrap(), Path::new("/env/cache"));
    assert_eq!(
        Cache::open(Some(Path::new("/opt/c"))).unwrap().root(),
        Path::new("/opt/c")
    );
    assert_eq!(Cache::open(None).unwrap().root(), Path::new("/env/cache"));
    for (k, v) in saved {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
}

fn tar_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "kubernetes/server/bin/link", "kube-apiserver")
        .unwrap();
    b.into_inner().unwrap()
}

#[test]
fn extracts_members_from_tar_gz_tar_and_zstd() {
    let apiserver = content(150_000, 30);
    let tar = tar_bytes(&[
        ("./kubernetes/server/bin/kube-apiserver", &apiserver),
        ("kubernetes/server/bin/kube-scheduler", b"scheduler"),
        ("kubernetes/LICENSES", b"licenses"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let archives = [
        ("a.tar.gz", gz.finish().unwrap()),
        ("a.tar", tar.clone()),
        ("a.tar.zst", zstd::encode_all(&tar[..], 1).unwrap()),
    ];
    for (name, bytes) in archives {
        let archive = dir.path().join(name);
        fs::write(&archive, bytes).unwrap();
        let dest = dir.path().join("out").join(name).join("kube-apiserver");
        extract_member(
            &archive,
            "kubernetes/server/bin/kube-apiserver",
            &dest,
            0o755,
        )
        .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), apiserver, "{name}");
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o755
        );
        // Replacing an existing file works and leaves no temp files behind.
        extract_member(&archive, "/kubernetes/LICENSES", &dest, 0o644).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"licenses");
        assert_eq!(
            list(dest.parent().unwrap()),
            vec!["kube-apiserver".to_string()]
        );
    }
}

#[test]
fn missing_member_lists_near_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_bytes(&[
        ("kubernetes/server/bin/kube-apiserver", b"a"),
        ("kubernetes/server/bin/kube-scheduler", b"s"),
        ("kubernetes/LICENSES", b"l"),
    ]))
    .unwrap();
    let archive = dir.path().join("k.tar.gz");
    fs::write(&archive, gz.finish().unwrap()).unwrap();
    let dest = dir.path().join("x");

    let err =
        extract_member(&archive, "kubernetes/node/bin/kube-apiserver", &dest, 0o755).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::MemberNotFound { .. }));
    assert!(
        msg.contains("no member `kubernetes/node/bin/kube-apiserver`"),
        "{msg}"
    );
    assert!(
        msg.contains("similar members: `kubernetes/server/bin/kube-apiserver`"),
        "{msg}"
    );
    assert!(!msg.contains("LICENSES"), "{msg}");

    let msg = extract_member(&archive, "etcd", &dest, 0o755)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no similar name among its 3 files"), "{msg}");

    let msg = extract_member(&archive, "kubernetes/server/bin/link", &dest, 0o755)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("a symlink to `kube-apiserver`"), "{msg}");
    assert!(!dest.exists());
}
