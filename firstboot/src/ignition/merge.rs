//! `ignition.config.merge` / `replace`: following a config's references (fetched with
//! the staging run's [`Fetcher`]) and merging the configs Ignition's way.

use std::time::Duration;

use ignition_config::v3_6;
use serde_json::Value;

use super::fetch::Fetcher;
use super::{invalid, parse_version, IgnitionError};

const MAX_CONFIG_DEPTH: usize = 10;

/// Parse a config and resolve its `replace` / `merge` references recursively into one
/// JSON value (3.6 form) without config references.
pub(super) fn resolve(
    source_name: &str,
    data: &[u8],
    fetcher: &mut Fetcher,
    referenced: &mut Vec<String>,
    depth: usize,
) -> Result<Value, IgnitionError> {
    if depth > MAX_CONFIG_DEPTH {
        return Err(invalid(
            source_name,
            "ignition.config",
            format!("more than {MAX_CONFIG_DEPTH} levels of merge/replace"),
        ));
    }
    let (_, mut value) = parse_version(source_name, data)?;
    let refs: v3_6::IgnitionConfig = value
        .pointer("/ignition/config")
        .filter(|v| !v.is_null())
        .map(|v| serde_json::from_value(v.clone()))
        .transpose()
        .map_err(|e| super::parse_error(source_name, data, e.to_string()))?
        .unwrap_or_default();
    if let Some(obj) = value.get_mut("ignition").and_then(Value::as_object_mut) {
        obj.remove("config");
    }
    apply_timeouts(&value, fetcher);
    if let Some(r) = refs.replace.as_ref().filter(|r| r.source.is_some()) {
        let child = fetcher.fetch("ignition.config.replace", r)?;
        referenced.push(fetcher.describe(r));
        return resolve(source_name, &child, fetcher, referenced, depth + 1);
    }
    for (i, r) in refs.merge.unwrap_or_default().iter().enumerate() {
        let what = format!("ignition.config.merge[{i}]");
        if r.source.is_none() {
            return Err(invalid(source_name, what, "expected a source"));
        }
        let child_data = fetcher.fetch(&what, r)?;
        referenced.push(fetcher.describe(r));
        let child = resolve(source_name, &child_data, fetcher, referenced, depth + 1)?;
        value = merge_configs(value, child);
    }
    Ok(value)
}

fn apply_timeouts(value: &Value, fetcher: &mut Fetcher) {
    if let Some(total) = value
        .pointer("/ignition/timeouts/httpTotal")
        .and_then(Value::as_i64)
        .filter(|t| *t > 0)
    {
        fetcher
            .http
            .set_request_timeout(Duration::from_secs(total as u64));
    }
}

/// Merge a child config onto its parent (child wins), Ignition style.
pub fn merge_configs(parent: Value, child: Value) -> Value {
    let mut parent = parent;
    let mut child = child;
    // The child's `ignition` section carries only its own version/timeouts: keep the parent's.
    if let Some(o) = child.as_object_mut() {
        o.remove("ignition");
    }
    // A path defined by the child in one of files/directories/links leaves the others.
    let kinds = ["files", "directories", "links"];
    for kind in kinds {
        let paths: Vec<String> = child
            .pointer(&format!("/storage/{kind}"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.get("path").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for other in kinds.iter().filter(|k| **k != kind) {
            if let Some(list) = parent
                .pointer_mut(&format!("/storage/{other}"))
                .and_then(Value::as_array_mut)
            {
                list.retain(|e| {
                    !e.get("path")
                        .and_then(Value::as_str)
                        .is_some_and(|p| paths.iter().any(|c| c == p))
                });
            }
        }
    }
    merge_value(&mut parent, child);
    parent
}

fn entry_key(v: &Value) -> Option<(&'static str, String)> {
    let o = v.as_object()?;
    for k in ["path", "name", "device"] {
        if let Some(s) = o.get(k).and_then(Value::as_str) {
            return Some((k, s.to_string()));
        }
    }
    None
}

fn merge_value(parent: &mut Value, child: Value) {
    match (parent, child) {
        (_, Value::Null) => {}
        (Value::Object(p), Value::Object(c)) => {
            for (k, v) in c {
                match p.get_mut(&k) {
                    Some(pv) if !pv.is_null() => merge_value(pv, v),
                    _ => {
                        p.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(p), Value::Array(c)) => {
            for item in c {
                let key = entry_key(&item);
                match key {
                    Some(key) => match p.iter_mut().find(|e| entry_key(e).as_ref() == Some(&key)) {
                        Some(existing) => merge_value(existing, item),
                        None => p.push(item),
                    },
                    None if item.is_string() || item.is_number() || item.is_boolean() => {
                        if !p.contains(&item) {
                            p.push(item);
                        }
                    }
                    None => p.push(item),
                }
            }
        }
        (p, c) => *p = c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_is_keyed_and_child_wins() {
        let parent = json!({"ignition": {"version": "3.6.0"}, "storage": {"files": [
            {"path": "/a", "mode": 420, "contents": {"source": "data:,p"}},
            {"path": "/b", "mode": 420}
        ]}, "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": ["k1"]}]}});
        let child = json!({"ignition": {"version": "3.6.0"}, "storage": {
            "files": [{"path": "/a", "mode": null, "contents": {"source": "data:,c"}}],
            "directories": [{"path": "/b"}]
        }, "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": ["k1", "k2"]}]}});
        let m = merge_configs(parent, child);
        assert_eq!(m["storage"]["files"].as_array().unwrap().len(), 1);
        assert_eq!(m["storage"]["files"][0]["contents"]["source"], "data:,c");
        assert_eq!(m["storage"]["files"][0]["mode"], 420);
        assert_eq!(m["storage"]["directories"][0]["path"], "/b");
        assert_eq!(
            m["passwd"]["users"][0]["sshAuthorizedKeys"],
            json!(["k1", "k2"])
        );
    }
}
