//! Members of tar archives (`kubernetes-server-linux-amd64.tar.gz` holds
//! `kubernetes/server/bin/kube-apiserver`), streamed out without unpacking the rest.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::error::FetchError;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Extracts the regular file `member` of the tar archive `archive` (plain, gzip or
/// zstd, detected by magic) to `dest` with permission bits `mode`. The member is
/// written to a temporary file beside `dest` and renamed into place, so `dest` is
/// either absent, the old file, or the complete new one. Leading `./` and `/` are
/// ignored when comparing names. A missing member's error lists similar names.
pub fn extract_member(
    archive: &Path,
    member: &str,
    dest: &Path,
    mode: u32,
) -> Result<(), FetchError> {
    let want = normalize(member);
    let ctx = |what: &str| {
        let what = what.to_string();
        move |e| FetchError::io(format!("{what} {}", archive.display()), e)
    };
    let reader = open_decompressed(archive).map_err(ctx("opening"))?;
    let mut tar = tar::Archive::new(reader);
    let mut names = Vec::new();
    for entry in tar.entries().map_err(ctx("reading"))? {
        let mut entry = entry.map_err(ctx("reading"))?;
        let name = normalize(&entry.path().map_err(ctx("reading"))?.to_string_lossy());
        let kind = entry.header().entry_type();
        if name != want {
            if kind.is_file() {
                names.push(name);
            }
            continue;
        }
        if !kind.is_file() {
            let kind = match entry.link_name().ok().flatten() {
                Some(target) if kind.is_symlink() => format!("a symlink to `{}`", target.display()),
                Some(target) if kind.is_hard_link() => {
                    format!("a hard link to `{}`", target.display())
                }
                _ if kind.is_dir() => "a directory".to_string(),
                _ => format!("of type {kind:?}"),
            };
            return Err(FetchError::MemberNotFile {
                archive: archive.to_path_buf(),
                member: member.to_string(),
                kind,
            });
        }
        return write_atomically(&mut entry, dest, mode);
    }
    let similar = similar_names(&want, &names);
    let mut sample: Vec<String> = names.iter().take(5).cloned().collect();
    if !similar.is_empty() {
        sample.clear();
    }
    Err(FetchError::MemberNotFound {
        archive: archive.to_path_buf(),
        member: member.to_string(),
        similar,
        sample,
        total: names.len(),
    })
}

fn open_decompressed(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut f = File::open(path)?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut f, &mut magic)?;
    f.seek(SeekFrom::Start(0))?;
    let f = BufReader::with_capacity(256 * 1024, f);
    Ok(if n >= 2 && magic[..2] == GZIP_MAGIC {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else if n >= 4 && magic == ZSTD_MAGIC {
        Box::new(zstd::stream::read::Decoder::with_buffer(f)?)
    } else {
        Box::new(f)
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn write_atomically(src: &mut impl Read, dest: &Path, mode: u32) -> Result<(), FetchError> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let ctx = |e| FetchError::io(format!("writing {}", dest.display()), e);
    fs::create_dir_all(dir).map_err(ctx)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".nodeimage-extract-")
        .tempfile_in(dir)
        .map_err(ctx)?;
    io::copy(src, tmp.as_file_mut()).map_err(ctx)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(ctx)?;
    tmp.as_file().sync_all().map_err(ctx)?;
    tmp.persist(dest).map_err(|e| ctx(e.error))?;
    Ok(())
}

fn normalize(name: &str) -> String {
    let mut s = name;
    loop {
        if let Some(rest) = s.strip_prefix("./") {
            s = rest;
        } else if let Some(rest) = s.strip_prefix('/') {
            s = rest;
        } else {
            break;
        }
    }
    s.trim_end_matches('/').to_string()
}

/// Up to 5 names, best first: same file name (a wrong directory), then file names
/// containing the wanted one or contained in it, then file names a few edits away.
fn similar_names(want: &str, names: &[String]) -> Vec<String> {
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    let want_base = base(want);
    let max_dist = (want_base.chars().count() / 4).max(2);
    let mut scored: Vec<(usize, &String)> = names
        .iter()
        .filter_map(|n| {
            let b = base(n);
            let d = levenshtein(&b, &want_base);
            let score = if b == want_base {
                0
            } else if !want_base.is_empty()
                && !b.is_empty()
                && (b.contains(&want_base) || want_base.contains(&b))
            {
                10 + d
            } else if d <= max_dist {
                100 + d
            } else {
                return None;
            };
            Some((score, n))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(5).map(|(_, n)| n.clone()).collect()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(normalize("./kubernetes/server/"), "kubernetes/server");
        assert_eq!(normalize("/a/b"), "a/b");
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        let names = vec![
            "kubernetes/server/bin/kube-apiserver".to_string(),
            "kubernetes/server/bin/kube-scheduler".to_string(),
            "kubernetes/LICENSES".to_string(),
        ];
        assert_eq!(
            similar_names("kubernetes/server/bin/kube-apiservr", &names),
            vec!["kubernetes/server/bin/kube-apiserver".to_string()]
        );
        assert_eq!(
            similar_names("server/bin/kube-apiserver", &names)[0],
            "kubernetes/server/bin/kube-apiserver"
        );
        assert!(similar_names("etcd", &names).is_empty());
    }
}
