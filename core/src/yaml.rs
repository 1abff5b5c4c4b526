//! YAML that Kubernetes' readers read back as written.
//!
//! Manifests, KubeletConfiguration, KubeProxyConfiguration and kubeconfigs are typed
//! values serialized with yaml_serde. yaml_serde quotes every string that YAML 1.2 would
//! read as something else (`'true'`, `'123456'`, `'12e34'`), but kubectl, the kubelet,
//! kube-proxy and client-go read YAML through `sigs.k8s.io/yaml`, which resolves
//! scalars by YAML 1.1 rules: there `on`, `off`, `yes`, `no`, `y`, `n` are booleans and
//! `1_000`, `0B11`, `.5` are numbers, all of which yaml_serde leaves plain. A ConfigMap
//! value `on` (ingress-nginx's `proxy-buffering: "on"`) or a node named `no` would reach
//! the API as a boolean and be refused.
//!
//! So every string of a document is checked ([`misread_by_yaml11`]); a document holding
//! one that yaml_serde would leave plain is written as JSON instead, which every YAML
//! reader reads with every string quoted. Nothing else changes: the same value, the same
//! key order.

use serde::Serialize;
use yaml_serde::Value;

/// One document (no `---` line), as YAML, or as JSON when YAML would be misread.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> String {
    let v = yaml_serde::to_value(value).expect("a Kubernetes document serialises");
    render(&v)
}

/// A stream of documents, each introduced by `---` (what `kubectl apply -f` takes).
pub fn documents(docs: &[Value]) -> String {
    docs.iter().map(|d| format!("---\n{}", render(d))).collect()
}

/// A typed value as a document for [`documents`]; key order is kept.
pub fn value<T: Serialize + ?Sized>(v: &T) -> Value {
    yaml_serde::to_value(v).expect("a Kubernetes document serialises")
}

fn render(v: &Value) -> String {
    if has_misread_string(v) {
        let mut s = serde_json::to_string_pretty(v).expect("a YAML value serialises as JSON");
        s.push('\n');
        s
    } else {
        yaml_serde::to_string(v).expect("a Kubernetes document serialises")
    }
}

/// Whether any string of `v` (map keys included) would be written plain by yaml_serde
/// and read as a non-string by a YAML 1.1 reader.
fn has_misread_string(v: &Value) -> bool {
    match v {
        Value::String(s) => misread_by_yaml11(s) && written_plain(s),
        Value::Sequence(items) => items.iter().any(has_misread_string),
        Value::Mapping(m) => m
            .iter()
            .any(|(k, v)| has_misread_string(k) || has_misread_string(v)),
        Value::Tagged(t) => has_misread_string(&t.value),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Whether yaml_serde writes `s` as a plain (unquoted) scalar.
fn written_plain(s: &str) -> bool {
    let y = yaml_serde::to_string(s).unwrap_or_default();
    !y.starts_with(['\'', '"', '|', '>'])
}

/// Whether a YAML 1.1 reader, as Kubernetes' (`sigs.k8s.io/yaml`, go-yaml v2 rules),
/// reads the plain scalar `s` as something other than the string `s`: a boolean, null,
/// an integer (underscores allowed; `0b`, `0o`, `0x` and leading-`0` octal), a float, or
/// the infinities and NaN. Timestamps and sexagesimal numbers stay strings there.
pub fn misread_by_yaml11(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "", "~", "null", "Null", "NULL",
        ".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf",
        "-.Inf", "-.INF",
    ];
    if WORDS.contains(&s) {
        return true;
    }
    match s.as_bytes().first() {
        Some(b'.') => float_syntax(s),
        Some(b'+' | b'-' | b'0'..=b'9') => {
            let plain: String = s.chars().filter(|&c| c != '_').collect();
            go_int_syntax(&plain) || float_syntax(&plain)
        }
        _ => false,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)` / `ParseUint` syntax (range aside: a decimal too
/// large for 64 bits is still a float to the reader).
fn go_int_syntax(s: &str) -> bool {
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (digits, radix) = match unsigned.get(..2) {
        Some("0b" | "0B") => (&unsigned[2..], 2),
        Some("0o" | "0O") => (&unsigned[2..], 8),
        Some("0x" | "0X") => (&unsigned[2..], 16),
        _ if unsigned.len() > 1 && unsigned.starts_with('0') => (&unsigned[1..], 8),
        _ => (unsigned, 10),
    };
    !digits.is_empty() && digits.chars().all(|c| c.is_digit(radix))
}

/// go-yaml's float pattern `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, for a
/// value Go parses to a finite number (an overflow stays a string).
fn float_syntax(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => digits(frac),
        Some((int, frac)) => digits(int) && (frac.is_empty() || digits(frac)),
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    mantissa_ok && exponent_ok && s.parse::<f64>().is_ok_and(f64::is_finite)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `kubectl label --local -f - -o json` (kubectl 1.32) made of each value as a
    /// plain ConfigMap value: misread (true) or kept as the string (false).
    #[test]
    fn yaml11_resolution_as_kubectl_does_it() {
        let misread = [
            "on",
            "On",
            "OFF",
            "y",
            "N",
            "yes",
            "No",
            "true",
            "False",
            "1_000",
            "1_0.5",
            "+1_0",
            "-0b11",
            "0B11",
            "0O17",
            "0X1F",
            "0x_1F",
            ".5",
            "1__0",
            "1_",
            "0_1",
            ".inf",
            "-.inf",
            ".NaN",
            "~",
            "Null",
            "08",
            "09.5",
            "1e3",
            "1E3",
            "1.2e+3",
            "+.5",
            "-.5",
            "1.",
            "+0",
            "-0",
            "1_000_000",
            "0b1_0",
            "0x1_f",
            "1_e3",
            "9223372036854775808",
            "99999999999999999999",
            "1e-400",
            "+1",
            "-1",
            "0",
            "00",
            "0.1_2",
            "123456",
            "12e34",
        ];
        let kept = [
            "1:20",
            "190:20:30",
            "2001-12-14",
            "2001-12-14t21:59:43.10-05:00",
            "2001-1-2",
            "._5",
            "_1",
            "<<",
            "=",
            "12e345",
            "0b",
            "0x",
            "0o",
            "1e",
            "1e+",
            "0.0.0",
            "1.2.3",
            "10.96.0.10",
            "1e400",
            "-1e400",
            "Infinity",
            "inf",
            "nan",
            "abcdef",
            "ssd",
            "least_conn",
            "10.32.0.0/12",
            "system:nodes",
            "-conf",
            "0123456789abcdef",
        ];
        for s in misread {
            assert!(misread_by_yaml11(s), "{s:?} is misread by YAML 1.1");
        }
        for s in kept {
            assert!(!misread_by_yaml11(s), "{s:?} stays a string in YAML 1.1");
        }
    }

    #[test]
    fn a_document_with_a_misread_string_is_json() {
        let mut data = std::collections::BTreeMap::new();
        data.insert("proxy-buffering", "on");
        data.insert("workers", "4");
        let doc = to_string(&serde_json::json!({"apiVersion": "v1", "data": data}));
        assert!(doc.starts_with('{'), "{doc}");
        let back: serde_json::Value = yaml_serde::from_str(&doc).unwrap();
        assert_eq!(back["data"]["proxy-buffering"], "on");
        assert_eq!(back["data"]["workers"], "4");
        // A misread key is caught as well.
        assert!(to_string(&serde_json::json!({"no": "x"})).starts_with('{'));
        // Strings yaml_serde quotes itself stay YAML.
        let doc = to_string(&serde_json::json!({"a": "true", "b": "123456", "c": "x"}));
        assert_eq!(doc, "a: 'true'\nb: '123456'\nc: x\n");
    }

    #[test]
    fn documents_are_separated() {
        let s = documents(&[value(&serde_json::json!({"a": 1})), value("x")]);
        assert_eq!(s, "---\na: 1\n---\nx\n");
    }
}
