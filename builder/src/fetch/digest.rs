//! Content digests: the pinned `sha256:<hex>` / `sha512:<hex>` values that decide
//! whether a download is accepted, and the incremental hasher that checks them.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// A hash algorithm supported for pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The lowercase name used in `alg:<hex>` and in the cache layout.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the digest in bytes.
    pub fn byte_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }

    /// Length of the digest in hex characters.
    pub fn hex_len(self) -> usize {
        self.byte_len() * 2
    }

    /// Parses `sha256` / `sha512` (case-insensitive).
    pub fn parse(name: &str) -> Result<Self, DigestError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            _ => Err(DigestError::UnknownAlgorithm {
                found: name.to_string(),
            }),
        }
    }

    /// A fresh incremental hasher for this algorithm.
    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Box::new(Sha512::new())),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A pinned content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Digest {
    Sha256([u8; 32]),
    Sha512([u8; 64]),
}

/// Why a digest string was rejected. Every message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("unknown digest algorithm `{found}`: expected `sha256` or `sha512`")]
    UnknownAlgorithm { found: String },
    #[error(
        "digest `{found}` has no algorithm prefix: expected `sha256:<64 hex digits>` or \
         `sha512:<128 hex digits>`{hint}"
    )]
    MissingAlgorithm { found: String, hint: String },
    #[error(
        "{algorithm} digest has {found} hex digits: expected {expected} \
         (`{algorithm}:<{expected} hex digits>`)"
    )]
    WrongLength {
        algorithm: Algorithm,
        expected: usize,
        found: usize,
    },
    #[error(
        "{algorithm} digest is not hexadecimal: `{ch}` at position {position} \
         (expected only 0-9 and a-f)"
    )]
    NotHex {
        algorithm: Algorithm,
        position: usize,
        ch: char,
    },
}

impl Digest {
    /// Parses `sha256:<hex>` or `sha512:<hex>` (algorithm and hex case-insensitive).
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let s = s.trim();
        match s.split_once(':') {
            Some((alg, hex)) => Self::from_parts(alg, hex),
            None => {
                let hint = match s.len() {
                    64 => format!("; if this is a sha256, write `sha256:{s}`"),
                    128 => format!("; if this is a sha512, write `sha512:{s}`"),
                    _ => String::new(),
                };
                Err(DigestError::MissingAlgorithm {
                    found: s.to_string(),
                    hint,
                })
            }
        }
    }

    /// Builds a digest from separate fields, e.g. a TOML `sha256 = "<hex>"` key.
    pub fn from_parts(algorithm: &str, hex: &str) -> Result<Self, DigestError> {
        Self::from_hex(Algorithm::parse(algorithm)?, hex)
    }

    /// Builds a digest of a known algorithm from its hex form.
    pub fn from_hex(algorithm: Algorithm, hex: &str) -> Result<Self, DigestError> {
        let hex = hex.trim();
        if let Some((position, ch)) = hex.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(DigestError::NotHex {
                algorithm,
                position,
                ch,
            });
        }
        if hex.len() != algorithm.hex_len() {
            return Err(DigestError::WrongLength {
                algorithm,
                expected: algorithm.hex_len(),
                found: hex.len(),
            });
        }
        let bytes = hex::decode(hex).expect("validated hex");
        Ok(Self::from_bytes(algorithm, &bytes).expect("validated length"))
    }

    /// Builds a digest from raw bytes; `None` if the length does not fit the algorithm.
    pub fn from_bytes(algorithm: Algorithm, bytes: &[u8]) -> Option<Self> {
        match algorithm {
            Algorithm::Sha256 => bytes.try_into().ok().map(Digest::Sha256),
            Algorithm::Sha512 => bytes.try_into().ok().map(Digest::Sha512),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Digest::Sha256(_) => Algorithm::Sha256,
            Digest::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Digest::Sha256(b) => b,
            Digest::Sha512(b) => b,
        }
    }

    /// Lowercase hex without the algorithm prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// The digest of `data` with the given algorithm.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Self {
        let mut h = algorithm.hasher();
        h.update(data);
        h.finalize()
    }

    /// Whether this is the digest of the empty input.
    pub fn is_empty_content(&self) -> bool {
        *self == Digest::of(self.algorithm(), b"")
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Incremental hasher producing a [`Digest`].
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    // Boxed: Sha512 state is twice the size of Sha256's.
    Sha512(Box<Sha512>),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finalize(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest::Sha256(h.finalize().into()),
            Hasher::Sha512(h) => Digest::Sha512(h.finalize().into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn parses_and_displays() {
        let d = Digest::parse(&format!("sha256:{ABC256}")).unwrap();
        assert_eq!(d, Digest::of(Algorithm::Sha256, b"abc"));
        assert_eq!(d.to_string(), format!("sha256:{ABC256}"));
        let upper = Digest::parse(&format!("SHA256:{}", ABC256.to_uppercase())).unwrap();
        assert_eq!(upper, d);
        assert_eq!(Digest::from_parts("sha256", ABC256).unwrap(), d);
        let d512 = Digest::of(Algorithm::Sha512, b"abc");
        assert_eq!(Digest::parse(&d512.to_string()).unwrap(), d512);
        assert!(d512.to_string().starts_with("sha512:ddaf35a1"));
    }

    #[test]
    fn errors_say_what_was_expected() {
        let e = Digest::parse("sha256:abcd").unwrap_err().to_string();
        test_support::assert_contains(&e, &["4 hex digits", "expected 64"]);
        let e = Digest::parse(&format!("sha512:{ABC256}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 128"), "{e}");
        let e = Digest::parse(&format!("sha256:{}", ABC256.replace('a', "g")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`g`") && e.contains("not hexadecimal"), "{e}");
        let e = Digest::parse("md5:00").unwrap_err().to_string();
        assert!(e.contains("`md5`") && e.contains("sha256"), "{e}");
        let e = Digest::parse(ABC256).unwrap_err().to_string();
        assert!(e.contains(&format!("`sha256:{ABC256}`")), "{e}");
    }

    #[test]
    fn serde_round_trip() {
        let d = Digest::of(Algorithm::Sha256, b"abc");
        let j = serde_json::to_string(&d).unwrap();
        assert_eq!(j, format!("\"sha256:{ABC256}\""));
        assert_eq!(serde_json::from_str::<Digest>(&j).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }

    #[test]
    fn empty_content() {
        assert!(Digest::of(Algorithm::Sha512, b"").is_empty_content());
        assert!(!Digest::of(Algorithm::Sha512, b"x").is_empty_content());
    }
}
