//! Parse, don't validate: the config's constrained strings as types.
//!
//! Each type checks its value once, when it is made ([`TryFrom<&str>`], [`FromStr`],
//! and in deserialization), so a [`NodeConfig`](super::NodeConfig) that exists holds
//! only acceptable hostnames, tokens, label keys, modes and paths. The model is
//! Bottlerocket's `modeled-types`.
//!
//! Deserialization goes through a visitor rather than `#[serde(try_from = "String")]`:
//! the visitor's error is raised while the YAML scalar is read, so yaml_serde reports it
//! with the field's path and the scalar's line and column (`hostname: expected a DNS
//! name .., found `Node_1` at line 3 column 11`). A `try_from` conversion runs after
//! the scalar is read and loses both.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value of one of these types was not acceptable: what was expected and (except for
/// secrets) what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

impl InvalidValue {
    fn new(msg: impl Into<String>) -> Self {
        InvalidValue(msg.into())
    }
}

/// Deserialize a string scalar through `TryFrom<&str>`, with the error raised inside the
/// visitor (see the module documentation).
fn deserialize_str<'de, D, T>(d: D, expecting: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: for<'a> TryFrom<&'a str, Error = InvalidValue>,
{
    struct V<T>(&'static str, std::marker::PhantomData<T>);
    impl<T> serde::de::Visitor<'_> for V<T>
    where
        T: for<'a> TryFrom<&'a str, Error = InvalidValue>,
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            T::try_from(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V(expecting, std::marker::PhantomData))
}

/// `TryFrom<String>` and `FromStr` for a type whose `TryFrom<&str>` checks the string.
macro_rules! from_checked_str {
    ($name:ident) => {
        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, InvalidValue> {
                Self::try_from(s.as_str())
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                Self::try_from(s)
            }
        }
    };
}

/// A string newtype: construction accepts a string `$s` where `$valid` holds and refuses
/// the others with `$refusal` (a message); reading is `&str` (Deref, AsRef, Borrow,
/// Display), so maps keyed by it are looked up with `&str`.
macro_rules! checked_string {
    ($(#[$meta:meta])* $name:ident, $expecting:literal, |$s:ident| $valid:expr, $refusal:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidValue;
            fn try_from(s: &str) -> Result<Self, InvalidValue> {
                let $s = s;
                if $valid {
                    Ok($name($s.to_string()))
                } else {
                    Err(InvalidValue::new($refusal))
                }
            }
        }

        from_checked_str!($name);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                deserialize_str(d, $expecting)
            }
        }
    };
}

checked_string!(
    /// A node name: an RFC 1123 DNS name in lower case (labels of `[a-z0-9-]`, at most
    /// 63 characters each, not starting or ending with `-`; at most 253 in all).
    Hostname,
    "a DNS name",
    |h| valid_dns_name(h),
    format!(
        "expected a DNS name of labels [a-z0-9-] (at most 63 characters each, 253 in all), found `{h}`"
    )
);

checked_string!(
    /// A Kubernetes label key, `[prefix/]name`: the prefix a DNS subdomain (at most 253),
    /// the name at most 63 of `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`. Taint keys
    /// have the same form.
    LabelKey,
    "a label key",
    |k| valid_label_key(k),
    format!(
        "`{k}` is not a valid label key: expected [prefix/]name, the prefix a DNS name, the name at most 63 of [A-Za-z0-9._-] starting and ending alphanumeric"
    )
);

checked_string!(
    /// An absolute path on the node without `..` components (where firstboot writes a
    /// file the node config carries).
    NodePath,
    "an absolute path",
    |p| p.starts_with('/') && !p.split('/').any(|c| c == ".."),
    format!("expected an absolute path without `..`, found `{p}`")
);

/// RFC 1123 DNS name, lower case.
pub(crate) fn valid_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// Kubernetes label key: `[prefix/]name`, prefix a DNS subdomain (≤ 253), name ≤ 63 of
/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
pub fn valid_label_key(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(|p| p.len() <= 253 && valid_dns_name(p))
        && !name.is_empty()
        && valid_label_value(name)
}

/// Kubernetes label value: empty, or ≤ 63 of `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
pub fn valid_label_value(v: &str) -> bool {
    if v.is_empty() {
        return true;
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    v.len() <= 63
        && v.starts_with(alnum)
        && v.ends_with(alnum)
        && v.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

/// A Kubernetes bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}` (`<id>.<secret>`).
///
/// A secret: no `Display`, so it cannot end up in a log line by a stray `{}`;
/// [`Debug`](fmt::Debug) shows the id only. The whole token is reached explicitly,
/// through [`BootstrapToken::as_str`] or `Deref<Target = str>`.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken(String);

impl BootstrapToken {
    /// The whole token, `<id>.<secret>` (secret material).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The public part: `bootstrap-token-<id>` names its Secret.
    pub fn id(&self) -> &str {
        &self.0[..6]
    }

    /// The secret part (secret material).
    pub fn secret(&self) -> &str {
        &self.0[7..]
    }

    /// The name of its Secret in `kube-system`.
    pub fn secret_name(&self) -> String {
        format!("bootstrap-token-{}", self.id())
    }

    /// The `stringData` of its `bootstrap.kubernetes.io/token` Secret (secret material):
    /// authentication and signing, the kubeadm node-token group (bound to CSR creation
    /// and auto-approval), and `expiration` (RFC 3339) unless it never expires.
    pub fn secret_string_data(
        &self,
        description: &str,
        expiration: Option<time::OffsetDateTime>,
    ) -> std::collections::BTreeMap<String, String> {
        let mut m: std::collections::BTreeMap<String, String> = [
            ("description", description),
            ("token-id", self.id()),
            ("token-secret", self.secret()),
            ("usage-bootstrap-authentication", "true"),
            ("usage-bootstrap-signing", "true"),
            ("auth-extra-groups", BOOTSTRAPPERS_GROUP),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some(t) = expiration {
            let t = t
                .to_offset(time::UtcOffset::UTC)
                .replace_nanosecond(0)
                .expect("0 is a valid nanosecond");
            m.insert(
                "expiration".into(),
                t.format(&time::format_description::well_known::Rfc3339)
                    .expect("a UTC time formats as RFC 3339"),
            );
        }
        m
    }
}

/// The group bootstrap tokens authenticate into (kubeadm's name), besides
/// `system:bootstrappers`.
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";
/// The Secret type of bootstrap tokens.
pub const BOOTSTRAP_TOKEN_SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";

/// When a bootstrap token made at `now` with `ttl` (a Go duration, `0`: never) expires.
pub fn bootstrap_token_expiration(
    now: time::OffsetDateTime,
    ttl: &str,
) -> Option<time::OffsetDateTime> {
    let d = super::go_duration(ttl)?;
    (!d.is_zero()).then(|| now + d)
}

impl TryFrom<&str> for BootstrapToken {
    type Error = InvalidValue;
    fn try_from(t: &str) -> Result<Self, InvalidValue> {
        let ok = |s: &str, n: usize| {
            s.len() == n
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        };
        match t.split_once('.') {
            Some((id, secret)) if ok(id, 6) && ok(secret, 16) => Ok(BootstrapToken(t.into())),
            // Never echo the value: it may be a real token with a typo.
            _ => Err(InvalidValue::new(
                "expected the form [a-z0-9]{6}.[a-z0-9]{16}",
            )),
        }
    }
}

from_checked_str!(BootstrapToken);

impl Deref for BootstrapToken {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapToken({}.<redacted>)", self.id())
    }
}

impl Serialize for BootstrapToken {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for BootstrapToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_str(d, "a bootstrap token")
    }
}

/// Permission bits of a file, at most `0o7777`, written as an octal string (`"0644"`;
/// a `0o` prefix is accepted). Serialized in the canonical form `"0644"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileMode(u32);

impl FileMode {
    /// `rw-r--r--`, the mode of a file the config gives none.
    pub const DEFAULT: FileMode = FileMode(0o644);

    pub fn bits(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for FileMode {
    type Error = InvalidValue;
    fn try_from(bits: u32) -> Result<Self, InvalidValue> {
        if bits <= 0o7777 {
            Ok(FileMode(bits))
        } else {
            Err(InvalidValue::new(format!(
                "expected permission bits up to 0o7777, found 0o{bits:o}"
            )))
        }
    }
}

impl TryFrom<&str> for FileMode {
    type Error = InvalidValue;
    fn try_from(m: &str) -> Result<Self, InvalidValue> {
        // The parse the schema has always used (an optional `0o` prefix, octal digits).
        u32::from_str_radix(m.trim_start_matches("0o"), 8)
            .ok()
            .filter(|v| *v <= 0o7777)
            .map(FileMode)
            .ok_or_else(|| {
                InvalidValue::new(format!(
                    "expected an octal mode like \"0644\", found \"{m}\""
                ))
            })
    }
}

from_checked_str!(FileMode);

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_str(d, "an octal mode like \"0644\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each good value parses and prints as given; each bad one is refused with a
    /// message naming what was expected.
    fn table<T>(good: &[&str], bad: &[&str], expected: &str)
    where
        T: for<'a> TryFrom<&'a str, Error = InvalidValue> + fmt::Debug,
    {
        for g in good {
            assert!(T::try_from(g).is_ok(), "{g:?} should be accepted");
        }
        for b in bad {
            let e = T::try_from(b).unwrap_err().to_string();
            assert!(e.contains(expected), "{b:?}: {e}");
        }
    }

    #[test]
    fn hostnames() {
        table::<Hostname>(
            &["node-1", "a", "master-0.example.com", "x1", &"a".repeat(63)],
            &[
                "",
                "Node_1",
                "UPPER",
                "-lead",
                "trail-",
                "a..b",
                ".lead",
                "sp ace",
                "ünï",
                &"a".repeat(64),
                &format!("{}.b", vec!["a".repeat(63); 4].join(".")),
            ],
            "expected a DNS name",
        );
        let h: Hostname = "node-1".parse().unwrap();
        assert_eq!(h.to_string(), "node-1");
        assert_eq!(h, "node-1");
        assert_eq!(String::from(h), "node-1");
    }

    #[test]
    fn label_keys() {
        table::<LabelKey>(
            &[
                "disk",
                "node-role.kubernetes.io/master",
                "topology.kubernetes.io/zone",
                "A.b_c-d",
                "example.com/x",
            ],
            &[
                "",
                "/x",
                "a/b/c",
                "-x",
                "x-",
                "a b",
                "bad key!",
                "Example.com/x",
                "x/",
                &"a".repeat(64),
            ],
            "is not a valid label key",
        );
        let m: std::collections::BTreeMap<LabelKey, String> =
            [("disk".parse().unwrap(), "ssd".to_string())].into();
        assert_eq!(m.get("disk").map(String::as_str), Some("ssd"));
    }

    #[test]
    fn node_paths() {
        table::<NodePath>(
            &["/etc/x", "/", "/etc/demo/motd", "/a/.../b", "/a/..b"],
            &["", "etc/x", "./x", "/etc/../shadow", "/..", "/a/b/.."],
            "expected an absolute path without `..`",
        );
    }

    #[test]
    fn file_modes() {
        table::<FileMode>(
            &["0644", "644", "0o600", "7777", "0", "0755"],
            &[
                "",
                "999",
                "0o",
                "08",
                "10000",
                "-1",
                "0x1ff",
                "rw-r--r--",
                " 644",
            ],
            "expected an octal mode like \"0644\"",
        );
        assert_eq!(FileMode::try_from("0o600").unwrap().bits(), 0o600);
        assert_eq!(FileMode::try_from("644").unwrap().to_string(), "0644");
        assert_eq!(FileMode::DEFAULT.to_string(), "0644");
        assert!(FileMode::try_from(0o10000).is_err());
        // As before the type existed: a `0o` prefix (even repeated) and a `+` sign pass.
        assert_eq!(FileMode::try_from("0o0o640").unwrap().bits(), 0o640);
        assert_eq!(FileMode::try_from("+644").unwrap().bits(), 0o644);
    }

    #[test]
    fn bootstrap_tokens() {
        table::<BootstrapToken>(
            &[
                "abcdef.0123456789abcdef",
                "123456.1234567890123456",
                "12e345.0000000000000000",
            ],
            &[
                "",
                "ABCDEF.0123456789abcdef",
                "abcdef0123456789abcdef",
                "abcde.0123456789abcdef",
                "abcdef.0123456789abcde",
                "abcdef.0123456789abcdef0",
                "abc-ef.0123456789abcdef",
                "abcdef.0123456789abcdef\n",
            ],
            "expected the form [a-z0-9]{6}.[a-z0-9]{16}",
        );
        let t: BootstrapToken = "abcdef.0123456789abcdef".parse().unwrap();
        assert_eq!((t.id(), t.secret()), ("abcdef", "0123456789abcdef"));
        assert_eq!(t.as_str(), "abcdef.0123456789abcdef");
        let d = format!("{t:?}");
        assert!(
            d.contains("abcdef") && !d.contains("0123456789abcdef"),
            "{d}"
        );
        // The refusal never echoes the value.
        let e = BootstrapToken::try_from("abcdef.SECRETSECRETSECRE").unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }

    #[test]
    fn errors_carry_field_line_and_column() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Doc {
            name: Hostname,
            labels: std::collections::BTreeMap<LabelKey, String>,
        }
        let e = yaml_serde::from_str::<Doc>("name: Bad_Name\nlabels: {}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("name: expected a DNS name") && e.ends_with("at line 1 column 7"),
            "{e}"
        );
        let e = yaml_serde::from_str::<Doc>("name: ok\nlabels:\n  \"a b\": x\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("labels: `a b` is not a valid label key")
                && e.contains("line 3 column 3"),
            "{e}"
        );
        // A non-string is refused as such.
        let e = yaml_serde::from_str::<Doc>("name: [x]\nlabels: {}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a DNS name"), "{e}");
    }
}
