//! What the fuzz targets share: a scratch file per process, the secret values of a
//! document, and the check that an Ignition config can be staged without the network.

use std::cell::RefCell;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use serde_json::Value;

/// /dev/shm when there is one (no disk writes per input), else the temp directory.
pub fn scratch_dir() -> PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

thread_local! {
    static SCRATCH: RefCell<Option<tempfile::NamedTempFile>> = const { RefCell::new(None) };
}

/// Put `data` into this process's scratch file (created once, truncated and rewritten
/// each time) and call `f` with the file's path and a fresh handle on it.
pub fn with_scratch_file<T>(data: &[u8], f: impl FnOnce(&std::path::Path, File) -> T) -> T {
    with_scratch_file_len(data, 0, f)
}

/// [`with_scratch_file`], the file then extended with zeros (sparse) to at least
/// `min_len` bytes.
pub fn with_scratch_file_len<T>(
    data: &[u8],
    min_len: u64,
    f: impl FnOnce(&std::path::Path, File) -> T,
) -> T {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let tmp = s.get_or_insert_with(|| {
            tempfile::NamedTempFile::new_in(scratch_dir()).expect("a scratch file")
        });
        let file = tmp.as_file_mut();
        file.set_len(0).expect("truncate the scratch file");
        file.seek(SeekFrom::Start(0))
            .expect("seek the scratch file");
        file.write_all(data).expect("write the scratch file");
        if (data.len() as u64) < min_len {
            file.set_len(min_len).expect("extend the scratch file");
        }
        let handle = file
            .try_clone()
            .expect("a second handle on the scratch file");
        f(tmp.path(), handle)
    })
}

/// The string values under a `secrets` key (at any depth) of `text` read as YAML, at
/// least 8 characters long: those of every document, of every entry of a mapping with
/// duplicate keys (YAML into `serde_json::Value` keeps only the last), and those found
/// before an error.
pub fn secrets_in(text: &str) -> Vec<String> {
    // The event walk of the product's own secret finder, keyed on `secrets` only.
    let mut out = nodeimage_core::config::strings_below_keys(text, &|k| k == "secrets");
    // The brief's oracle, for what the walk above might miss.
    if let Ok(v) = yaml_serde::from_str::<Value>(text) {
        json_secrets(&v, false, &mut out);
    }
    out.retain(|s| s.chars().count() >= 8);
    out.sort();
    out.dedup();
    out
}

fn json_secrets(v: &Value, under: bool, out: &mut Vec<String>) {
    match v {
        Value::String(s) if under => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| json_secrets(v, under, out)),
        Value::Object(o) => o
            .iter()
            .for_each(|(k, v)| json_secrets(v, under || k == "secrets", out)),
        _ => {}
    }
}

/// Panic (a crash for the fuzzer) when `message` holds one of `secrets`.
pub fn assert_no_secret(what: &str, message: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !message.contains(s.as_str()),
            "{what}: the error shows the secret value {s:?}: {message}"
        );
    }
}

/// How deep data: URLs inside data: URLs are followed before giving up (firstboot
/// follows merge/replace 10 levels deep).
const MAX_NESTING: usize = 12;
/// The most a gzip data: URL is decompressed to for the check.
const MAX_INFLATED: u64 = 64 << 20;

/// Whether staging the Ignition config `data` would fetch nothing over the network:
/// no `source` anywhere (also inside configs and contents carried in data: URLs, gzip
/// or not) is an http(s) URL. Conservative: `false` when unsure.
pub fn ignition_is_offline(data: &[u8]) -> bool {
    fn bytes_offline(data: &[u8], depth: usize) -> bool {
        if depth > MAX_NESTING {
            return false;
        }
        let inflated;
        let data = if data.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            let r = flate2::read::MultiGzDecoder::new(data)
                .take(MAX_INFLATED + 1)
                .read_to_end(&mut out);
            if r.is_err() {
                // firstboot refuses it too, before fetching anything from it.
                return true;
            }
            if out.len() as u64 > MAX_INFLATED {
                return false;
            }
            inflated = out;
            &inflated[..]
        } else {
            data
        };
        match serde_json::from_slice::<Value>(data) {
            Ok(v) => value_offline(&v, depth),
            // Not JSON: not a config, so nothing in it is fetched.
            Err(_) => true,
        }
    }
    fn value_offline(v: &Value, depth: usize) -> bool {
        match v {
            Value::Array(a) => a.iter().all(|v| value_offline(v, depth)),
            Value::Object(o) => o.iter().all(|(k, v)| match v {
                Value::String(s) if k == "source" => source_offline(s, depth),
                v => value_offline(v, depth),
            }),
            _ => true,
        }
    }
    fn source_offline(s: &str, depth: usize) -> bool {
        let t = s.trim_start().to_ascii_lowercase();
        if t.starts_with("http") {
            return false;
        }
        match s.strip_prefix("data:") {
            Some(rest) => match firstboot::ignition::decode_data_url(rest) {
                Ok(decoded) => bytes_offline(&decoded, depth + 1),
                Err(_) => true,
            },
            None => true,
        }
    }
    bytes_offline(data, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_sources_are_found() {
        assert!(ignition_is_offline(
            br#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/a","contents":{"source":"data:,hi"}}]}}"#
        ));
        assert!(!ignition_is_offline(
            br#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/a","contents":{"source":"https://x/y"}}]}}"#
        ));
        // A referenced config in a data: URL that itself names an http source.
        let inner = r#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/a","contents":{"source":"http://x/"}}]}}"#;
        let outer = format!(
            r#"{{"ignition":{{"version":"3.4.0","config":{{"merge":[{{"source":"data:,{}"}}]}}}}}}"#,
            inner.replace('"', "%22")
        );
        assert!(!ignition_is_offline(outer.as_bytes()));
    }

    #[test]
    fn secrets_are_collected() {
        let s =
            secrets_in("version: 1\nsecrets:\n  ca_key: abcdefgh1\n  x: [short, longer-value]\n");
        assert_eq!(s, vec!["abcdefgh1".to_string(), "longer-value".to_string()]);
        // Duplicate keys: serde_json::Value would keep only the last `secrets`.
        let s = secrets_in("secrets: first-secret\nsecrets: 1\n");
        assert_eq!(s, vec!["first-secret".to_string()]);
    }
}
