//! A minimal read-only ISO9660 reader for config drives (`config-2`), NoCloud seeds
//! (`cidata`) and the Azure provisioning ISO.
//!
//! Names are taken from the Joliet tree when the image has one (UCS-2, long names, what
//! `genisoimage -J` writes), otherwise from Rock Ridge `NM` entries of the primary tree
//! (`-r`), otherwise from the primary tree's 8.3 names with the `;1` version stripped.
//! Lookups are ASCII case-insensitive. Multi-extent files and SUSP continuation areas are
//! not supported (configuration files are small and names short).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::fs::FilesystemReader;

const SECTOR: u64 = 2048;
const MAX_FILE_SIZE: u64 = 64 << 20;
const MAX_DIR_SIZE: u64 = 4 << 20;

/// Which name space the reader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSpace {
    Joliet,
    RockRidge,
    Plain,
}

pub struct IsoFs {
    file: File,
    block_size: u64,
    label: Option<String>,
    root: Record,
    names: NameSpace,
}

#[derive(Debug, Clone)]
struct Record {
    extent: u64,
    size: u64,
    is_dir: bool,
    multi_extent: bool,
    name: String,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// Whether the file carries an ISO9660 volume descriptor at sector 16.
pub fn has_iso_signature(file: &File) -> io::Result<bool> {
    let mut vd = [0u8; 7];
    match file.read_exact_at(&mut vd, 16 * SECTOR) {
        Ok(()) => Ok(&vd[1..6] == b"CD001"),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn u32_le(b: &[u8], o: usize) -> u64 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as u64
}

impl IsoFs {
    pub fn open(file: File) -> io::Result<Self> {
        let mut pvd: Option<Vec<u8>> = None;
        let mut joliet: Option<Vec<u8>> = None;
        for i in 16..64u64 {
            let vd = read_at(&file, i * SECTOR, SECTOR as usize)?;
            if &vd[1..6] != b"CD001" {
                return Err(invalid("bad ISO9660 volume descriptor"));
            }
            match vd[0] {
                1 if pvd.is_none() => pvd = Some(vd),
                2 if joliet.is_none() && matches!(&vd[88..91], b"%/@" | b"%/C" | b"%/E") => {
                    joliet = Some(vd)
                }
                255 => break,
                _ => {}
            }
        }
        let pvd = pvd.ok_or_else(|| invalid("no ISO9660 primary volume descriptor"))?;
        let block_size = u16::from_le_bytes([pvd[128], pvd[129]]) as u64;
        if !matches!(block_size, 512 | 1024 | 2048) {
            return Err(invalid(format!("ISO9660 logical block size {block_size}")));
        }
        let label = {
            let s = String::from_utf8_lossy(&pvd[40..72])
                .trim_end_matches([' ', '\0'])
                .to_string();
            (!s.is_empty()).then_some(s)
        };
        let (root_raw, names) = match &joliet {
            Some(j) => (j[156..190].to_vec(), NameSpace::Joliet),
            None => (pvd[156..190].to_vec(), NameSpace::Plain),
        };
        let root = parse_record(&root_raw, NameSpace::Plain)
            .ok_or_else(|| invalid("bad ISO9660 root record"))?;
        let mut fs = IsoFs {
            file,
            block_size,
            label,
            root,
            names,
        };
        if names == NameSpace::Plain && fs.root_has_rock_ridge()? {
            fs.names = NameSpace::RockRidge;
        }
        Ok(fs)
    }

    fn root_has_rock_ridge(&self) -> io::Result<bool> {
        // The root's "." record carries SUSP "SP" and, with Rock Ridge, "RR"/"PX" entries;
        // a cheap and sufficient test is any NM entry on a child record.
        let raw = self.read_dir_raw(&self.root)?;
        let mut found = false;
        walk_records(&raw, self.block_size, |rec| {
            if system_use(rec).is_some_and(|su| rr_name(su).is_some()) {
                found = true;
            }
        });
        Ok(found)
    }

    fn read_dir_raw(&self, dir: &Record) -> io::Result<Vec<u8>> {
        if dir.size > MAX_DIR_SIZE {
            return Err(invalid("ISO9660 directory too large"));
        }
        read_at(&self.file, dir.extent * self.block_size, dir.size as usize)
    }

    fn list(&self, dir: &Record) -> io::Result<Vec<Record>> {
        let raw = self.read_dir_raw(dir)?;
        let mut out = Vec::new();
        walk_records(&raw, self.block_size, |rec| {
            if let Some(r) = parse_record(rec, self.names) {
                if r.name != "." && r.name != ".." {
                    out.push(r);
                }
            }
        });
        Ok(out)
    }

    fn lookup(&self, path: &str) -> io::Result<Option<Record>> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut cur = self.root.clone();
        for (i, part) in parts.iter().enumerate() {
            let Some(next) = self
                .list(&cur)?
                .into_iter()
                .find(|r| r.name.eq_ignore_ascii_case(part))
            else {
                return Ok(None);
            };
            if i + 1 == parts.len() {
                return Ok(Some(next));
            }
            if !next.is_dir {
                return Ok(None);
            }
            cur = next;
        }
        Ok(None)
    }
}

impl FilesystemReader for IsoFs {
    fn label(&self) -> Option<String> {
        self.label.clone()
    }

    fn read_file(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        let Some(r) = self.lookup(path)? else {
            return Ok(None);
        };
        if r.is_dir {
            return Err(invalid(format!("{path} is a directory")));
        }
        if r.multi_extent {
            return Err(invalid(format!(
                "{path}: multi-extent files are not supported"
            )));
        }
        if r.size > MAX_FILE_SIZE {
            return Err(invalid(format!("{path} is too large")));
        }
        read_at(&self.file, r.extent * self.block_size, r.size as usize).map(Some)
    }

    fn kind(&self) -> &'static str {
        "iso9660"
    }
}

/// Call `f` with each directory record; records never cross a logical sector.
fn walk_records(raw: &[u8], block_size: u64, mut f: impl FnMut(&[u8])) {
    let bs = block_size.max(SECTOR) as usize;
    let mut pos = 0usize;
    while pos < raw.len() {
        let len = raw[pos] as usize;
        if len == 0 {
            // Padding up to the next sector.
            pos = (pos / bs + 1) * bs;
            continue;
        }
        if len < 34 || pos + len > raw.len() {
            break;
        }
        f(&raw[pos..pos + len]);
        pos += len;
    }
}

fn system_use(rec: &[u8]) -> Option<&[u8]> {
    let id_len = rec[32] as usize;
    let start = 33 + id_len + usize::from(id_len.is_multiple_of(2));
    (start < rec.len()).then(|| &rec[start..])
}

/// The Rock Ridge alternate name (NM entries) in a system use area.
fn rr_name(mut su: &[u8]) -> Option<String> {
    let mut name = Vec::new();
    let mut found = false;
    while su.len() >= 4 {
        let len = su[2] as usize;
        if len < 4 || len > su.len() {
            break;
        }
        if &su[..2] == b"NM" && len >= 5 {
            let flags = su[4];
            // Flags 0x02/0x04 mean "." / ".."; they carry no name.
            if flags & 0x06 == 0 {
                name.extend_from_slice(&su[5..len]);
                found = true;
            }
        }
        if &su[..2] == b"ST" {
            break;
        }
        su = &su[len..];
    }
    found.then(|| String::from_utf8_lossy(&name).into_owned())
}

fn parse_record(rec: &[u8], names: NameSpace) -> Option<Record> {
    if rec.len() < 34 {
        return None;
    }
    let id_len = rec[32] as usize;
    if 33 + id_len > rec.len() {
        return None;
    }
    let id = &rec[33..33 + id_len];
    let flags = rec[25];
    let name = if id == [0] {
        ".".to_string()
    } else if id == [1] {
        "..".to_string()
    } else {
        let raw = match names {
            NameSpace::Joliet => {
                let units: Vec<u16> = id
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                String::from_utf16_lossy(&units)
            }
            NameSpace::RockRidge => match system_use(rec).and_then(rr_name) {
                Some(n) => return Some(record(rec, flags, n)),
                None => String::from_utf8_lossy(id).into_owned(),
            },
            NameSpace::Plain => String::from_utf8_lossy(id).into_owned(),
        };
        let base = raw.split(';').next().unwrap_or("").to_string();
        if flags & 0x02 == 0 {
            base.strip_suffix('.').map(str::to_string).unwrap_or(base)
        } else {
            base
        }
    };
    Some(record(rec, flags, name))
}

fn record(rec: &[u8], flags: u8, name: String) -> Record {
    Record {
        extent: u32_le(rec, 2),
        size: u32_le(rec, 10),
        is_dir: flags & 0x02 != 0,
        multi_extent: flags & 0x80 != 0,
        name,
    }
}
