//! OCI image-layout archives (`oci-layout`, `index.json`, `blobs/sha256/<hex>` in a
//! tar), written deterministically: sorted entries, every timestamp the build epoch,
//! owner 0:0, fixed modes, so the same image gives the same bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::media::{Descriptor, OCI_INDEX, OCI_LAYOUT_VERSION};
use crate::fetch::Digest;

#[derive(Serialize)]
struct IndexJson<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: Vec<&'a Descriptor>,
}

/// The `index.json` of an archive holding one image whose target is `top`.
pub fn index_json(top: &Descriptor) -> Vec<u8> {
    serde_json::to_vec(&IndexJson {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests: vec![top],
    })
    .expect("serialisable")
}

fn header(path: &str, size: u64, mode: u32, dir: bool, epoch: i64) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)
        .with_context(|| format!("tar path {path}"))?;
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(epoch.max(0) as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_username("root")?;
    h.set_groupname("root")?;
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    h.set_cksum();
    Ok(h)
}

/// Writes the archive `out` (via a temporary file and a rename): `blobs` are the
/// verified files of the image (digest, path; a digest given twice is written once);
/// `top` the descriptor index.json points to.
pub fn write_archive(
    out: &Path,
    blobs: &[(Digest, PathBuf)],
    top: &Descriptor,
    epoch: i64,
) -> Result<()> {
    let tmp = out.with_extension("tar.tmp");
    let result = (|| -> Result<()> {
        let f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, f));
        b.mode(tar::HeaderMode::Deterministic);
        let mut entries: BTreeMap<String, Option<&PathBuf>> = BTreeMap::new();
        entries.insert("blobs/".into(), None);
        for (d, p) in blobs {
            entries.insert(format!("blobs/{}/", d.algorithm().name()), None);
            entries.insert(
                format!("blobs/{}/{}", d.algorithm().name(), d.hex()),
                Some(p),
            );
        }
        for (name, src) in &entries {
            match src {
                None => b.append(&header(name, 0, 0o755, true, epoch)?, std::io::empty())?,
                Some(p) => {
                    let file = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                    let size = file.metadata()?.len();
                    b.append(&header(name, size, 0o644, false, epoch)?, file)
                        .with_context(|| format!("adding {name}"))?;
                }
            }
        }
        let index = index_json(top);
        b.append(
            &header("index.json", index.len() as u64, 0o644, false, epoch)?,
            index.as_slice(),
        )?;
        let layout = format!("{{\"imageLayoutVersion\":\"{OCI_LAYOUT_VERSION}\"}}");
        b.append(
            &header("oci-layout", layout.len() as u64, 0o644, false, epoch)?,
            layout.as_bytes(),
        )?;
        let w = b.into_inner()?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e.context(format!("writing {}", out.display())))
        }
    }
}
