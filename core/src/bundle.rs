//! Update bundles: one file with everything a node needs to switch to a new image (its
//! kernel, initrd, erofs root and dm-verity tree), behind a manifest signed with the
//! operator's Ed25519 key. `nodeimage build --sign-key` writes them; `firstboot update`
//! reads them.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! "NODEIMAGE-BUNDLE-1\n"            19 bytes
//! manifest length M                 u32
//! manifest                          M bytes of JSON (BundleManifest)
//! signature                         64 bytes: Ed25519 over the 23 + M bytes above
//! members                           each member's bytes, in the manifest's order
//! ```
//!
//! A reader verifies the signature before it trusts a byte of the manifest, and each
//! member's size and SHA-256 (both in the signed manifest) while it streams it: nothing
//! unsigned is ever acted on. Keys are PKCS#8 (private, `PRIVATE KEY` PEM, written 0600
//! by `nodeimage keygen`) and SubjectPublicKeyInfo (`PUBLIC KEY` PEM), the forms
//! `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` use.

use std::io::{Read, Write};

use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 19] = b"NODEIMAGE-BUNDLE-1\n";
/// The largest manifest a reader accepts.
pub const MAX_MANIFEST: u32 = 1 << 20;
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the key's 32 bytes follow.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410): the 32-byte seed follows.
/// (ring's own PKCS#8 v2 also carries the public key, which OpenSSL 3.0 cannot read.)
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// What a bundle carries, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleManifest {
    pub format: u32,
    /// The profile's name and architecture (`x86_64`, `aarch64`).
    pub name: String,
    pub arch: String,
    /// The image's version: its build time and identity (`<epoch>-<inputs sha256[..12]>`).
    pub version: String,
    pub inputs_sha256: String,
    pub kernel_version: String,
    /// The profile's own kernel arguments (the node adds root, slot and verity ones).
    pub cmdline: String,
    pub verity: BundleVerity,
    pub members: Vec<Member>,
}

/// The root's dm-verity parameters (the hash tree is the `root.verity` member).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleVerity {
    pub root_hash: String,
    pub data_blocks: u64,
}

/// One file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `vmlinuz`, `initrd.img`, `root.erofs`, `root.verity`.
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

impl BundleManifest {
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
}

impl Member {
    /// The record of `bytes` named `name`.
    pub fn of(name: &str, bytes: &[u8]) -> Member {
        Member {
            name: name.to_string(),
            size: bytes.len() as u64,
            sha256: hex_of(&Sha256::digest(bytes)),
        }
    }
}

/// A whole bundle in memory: the header for `manifest` with `members`' records (in
/// their order), then their bytes.
pub fn write_all(
    out: &mut dyn Write,
    mut manifest: BundleManifest,
    members: &[(&str, &[u8])],
    key: &SigningKey,
) -> Result<(), BundleError> {
    manifest.members = members.iter().map(|(n, b)| Member::of(n, b)).collect();
    write_header(out, &manifest, key)?;
    for (_, b) in members {
        out.write_all(b)?;
    }
    Ok(())
}

/// Why a bundle or key is refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a nodeimage update bundle (no \"NODEIMAGE-BUNDLE-1\" header)")]
    Magic,
    #[error("the bundle's manifest is {0} bytes, more than {MAX_MANIFEST}")]
    ManifestSize(u32),
    #[error("the bundle's signature does not verify with the update key {key}: refusing it")]
    Signature { key: String },
    #[error("the bundle's manifest (signed, but not one this version reads): {0}")]
    Manifest(String),
    #[error(
        "bundle member {name}: sha256 {got}, the signed manifest says {expected}: refusing it"
    )]
    MemberHash {
        name: String,
        got: String,
        expected: String,
    },
    #[error("the bundle ends inside {name} ({got} of {expected} bytes)")]
    Truncated {
        name: String,
        got: u64,
        expected: u64,
    },
    #[error("{what}: not an Ed25519 {kind} in PEM ({detail})")]
    Key {
        what: String,
        kind: &'static str,
        detail: String,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// An Ed25519 public key: what a node trusts.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// `PUBLIC KEY` PEM (SubjectPublicKeyInfo) → key; `what` names the file in errors.
    pub fn from_pem(text: &str, what: &str) -> Result<PublicKey, BundleError> {
        let err = |detail: String| BundleError::Key {
            what: what.to_string(),
            kind: "public key",
            detail,
        };
        let p = pem::parse(text).map_err(|e| err(e.to_string()))?;
        if p.tag() != "PUBLIC KEY" {
            return Err(err(format!(
                "a {:?} block, expected \"PUBLIC KEY\"",
                p.tag()
            )));
        }
        let der = p.contents();
        if der.len() != 44 || der[..12] != SPKI_PREFIX {
            return Err(err(
                "the key is not Ed25519 (RFC 8410 SubjectPublicKeyInfo)".into(),
            ));
        }
        Ok(PublicKey(der[12..].try_into().unwrap()))
    }

    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        pem::encode(&pem::Pem::new("PUBLIC KEY", der))
    }

    /// `sha256:<first 16 hex digits of the key's SHA-256>`: names a key in messages.
    pub fn fingerprint(&self) -> String {
        format!("sha256:{}", &hex_of(&Sha256::digest(self.0))[..16])
    }

    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(message, sig)
            .is_ok()
    }
}

/// An Ed25519 key pair: what the operator keeps.
pub struct SigningKey(Ed25519KeyPair);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public().fingerprint())
    }
}

impl SigningKey {
    /// A new key pair, as `PRIVATE KEY` PEM (PKCS#8) and the key.
    pub fn generate() -> Result<(String, SigningKey), BundleError> {
        use ring::rand::SecureRandom as _;
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| BundleError::Key {
                what: "the system's random source".into(),
                kind: "private key",
                detail: "no random bytes".into(),
            })?;
        let pem_text = Self::pem_from_seed(&seed);
        let key = SigningKey::from_pem(&pem_text, "the new key")?;
        Ok((pem_text, key))
    }

    /// The `PRIVATE KEY` PEM (PKCS#8 v1, RFC 8410) of the key with this 32-byte seed
    /// (tests use fixed seeds for keys they can make again).
    pub fn pem_from_seed(seed: &[u8; 32]) -> String {
        let mut der = PKCS8_V1_PREFIX.to_vec();
        der.extend_from_slice(seed);
        pem::encode(&pem::Pem::new("PRIVATE KEY", der))
    }

    /// `PRIVATE KEY` PEM (PKCS#8 v1 as openssl writes it, or v2) → key pair. The error
    /// never carries the key's bytes.
    pub fn from_pem(text: &str, what: &str) -> Result<SigningKey, BundleError> {
        let err = |detail: String| BundleError::Key {
            what: what.to_string(),
            kind: "private key",
            detail,
        };
        let p = pem::parse(text).map_err(|_| err("no PEM block".into()))?;
        if p.tag() != "PRIVATE KEY" {
            return Err(err(format!(
                "a {:?} block, expected \"PRIVATE KEY\"",
                p.tag()
            )));
        }
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(p.contents())
            .map(SigningKey)
            .map_err(|e| err(format!("PKCS#8: {e}")))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.public_key().as_ref().try_into().unwrap())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).as_ref().try_into().unwrap()
    }
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The signed part: magic, length, manifest.
fn signed_header(manifest: &[u8]) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    h.extend_from_slice(manifest);
    h
}

/// Write the header (magic, manifest, signature); the caller then writes each member's
/// bytes in the manifest's order.
pub fn write_header(
    out: &mut dyn Write,
    manifest: &BundleManifest,
    key: &SigningKey,
) -> Result<(), BundleError> {
    let json = serde_json::to_vec(manifest).map_err(|e| BundleError::Manifest(e.to_string()))?;
    let header = signed_header(&json);
    out.write_all(&header)?;
    out.write_all(&key.sign(&header))?;
    Ok(())
}

/// Read and verify the header: the manifest is returned only when its signature
/// verifies with `key`. `r` is then at the first member.
pub fn read_header(r: &mut dyn Read, key: &PublicKey) -> Result<BundleManifest, BundleError> {
    let mut magic = [0u8; 19];
    r.read_exact(&mut magic).map_err(|_| BundleError::Magic)?;
    if &magic != MAGIC {
        return Err(BundleError::Magic);
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_MANIFEST {
        return Err(BundleError::ManifestSize(len));
    }
    let mut json = vec![0u8; len as usize];
    r.read_exact(&mut json)?;
    let mut sig = [0u8; 64];
    r.read_exact(&mut sig)?;
    if !key.verify(&signed_header(&json), &sig) {
        return Err(BundleError::Signature {
            key: key.fingerprint(),
        });
    }
    let m: BundleManifest =
        serde_json::from_slice(&json).map_err(|e| BundleError::Manifest(e.to_string()))?;
    if m.format != 1 {
        return Err(BundleError::Manifest(format!(
            "format {}, expected 1",
            m.format
        )));
    }
    Ok(m)
}

/// Stream member `m` from `r` into `w`, checking its size and SHA-256; `w` has all of
/// it only when this returns Ok.
pub fn copy_member(r: &mut dyn Read, m: &Member, w: &mut dyn Write) -> Result<(), BundleError> {
    let mut h = Sha256::new();
    let mut left = m.size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = (buf.len() as u64).min(left) as usize;
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(BundleError::Truncated {
                name: m.name.clone(),
                got: m.size - left,
                expected: m.size,
            });
        }
        h.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let got = hex_of(&h.finalize());
    if got != m.sha256 {
        return Err(BundleError::MemberHash {
            name: m.name.clone(),
            got,
            expected: m.sha256.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(members: &[(&str, &[u8])]) -> BundleManifest {
        BundleManifest {
            format: 1,
            name: "t".into(),
            arch: "x86_64".into(),
            version: "1767225600-0123456789ab".into(),
            inputs_sha256: "0".repeat(64),
            kernel_version: "6.1.0-test".into(),
            cmdline: "quiet".into(),
            verity: BundleVerity {
                root_hash: "ab".repeat(32),
                data_blocks: 3,
            },
            members: members.iter().map(|(n, b)| Member::of(n, b)).collect(),
        }
    }

    fn bundle(key: &SigningKey, members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        write_all(&mut out, manifest(members), members, key).unwrap();
        out
    }

    #[test]
    fn a_signed_bundle_reads_back_member_by_member() {
        let (_, key) = SigningKey::generate().unwrap();
        let members: &[(&str, &[u8])] = &[("vmlinuz", b"kernel"), ("root.erofs", &[7u8; 3 << 20])];
        let b = bundle(&key, members);
        let mut r = &b[..];
        let m = read_header(&mut r, &key.public()).unwrap();
        assert_eq!(m, manifest(members));
        for (i, (_, bytes)) in members.iter().enumerate() {
            let mut out = Vec::new();
            copy_member(&mut r, &m.members[i], &mut out).unwrap();
            assert_eq!(&out[..], *bytes);
        }
        assert!(r.is_empty());
    }

    #[test]
    fn another_key_a_changed_manifest_or_member_is_refused() {
        let (_, key) = SigningKey::generate().unwrap();
        let (_, other) = SigningKey::generate().unwrap();
        let b = bundle(&key, &[("root.erofs", b"root bytes")]);
        let e = read_header(&mut &b[..], &other.public()).unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "does not verify with the update key {}",
                other.public().fingerprint()
            )),
            "{e}"
        );
        // One flipped byte anywhere in the signed header.
        for at in [0, 20, 30, b.len() - 20] {
            let mut bad = b.clone();
            bad[at] ^= 1;
            assert!(
                read_header(&mut &bad[..], &key.public()).is_err(),
                "byte {at} flipped"
            );
        }
        // A member whose bytes are not the signed ones.
        let mut bad = b.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let mut r = &bad[..];
        let m = read_header(&mut r, &key.public()).unwrap();
        let e = copy_member(&mut r, &m.members[0], &mut Vec::new()).unwrap_err();
        assert!(matches!(e, BundleError::MemberHash { .. }), "{e}");
        let short = &b[..b.len() - 3];
        let mut r = short;
        let m = read_header(&mut r, &key.public()).unwrap();
        let e = copy_member(&mut r, &m.members[0], &mut Vec::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("ends inside root.erofs (7 of 10 bytes)"),
            "{e}"
        );
        assert!(matches!(
            read_header(&mut &b"NOPE"[..], &key.public()),
            Err(BundleError::Magic)
        ));
    }

    #[test]
    fn keys_round_trip_through_pem_and_errors_name_the_file() {
        let (pem_text, key) = SigningKey::generate().unwrap();
        assert!(pem_text.starts_with("-----BEGIN PRIVATE KEY-----"));
        let again = SigningKey::from_pem(&pem_text, "k.pem").unwrap();
        assert_eq!(again.public(), key.public());
        let pub_pem = key.public().to_pem();
        assert!(
            pub_pem.starts_with("-----BEGIN PUBLIC KEY-----\r\nMCowBQYDK2VwAyEA")
                || pub_pem.starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"),
            "{pub_pem}"
        );
        assert_eq!(
            PublicKey::from_pem(&pub_pem, "k.pub").unwrap(),
            key.public()
        );
        let e = PublicKey::from_pem(&pem_text, "keys/update.pub")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("keys/update.pub: not an Ed25519 public key")
                && e.contains("\"PRIVATE KEY\""),
            "{e}"
        );
        let e = SigningKey::from_pem("junk", "secret.pem")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("secret.pem: not an Ed25519 private key"),
            "{e}"
        );
    }

    /// openssl, an implementation of its own, accepts our keys and signatures, and we
    /// accept its keys.
    #[test]
    fn openssl_agrees() {
        if !test_support::needs_tool("Ed25519 against openssl", "openssl", "openssl") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            test_support::cmd::stdout_ok(
                &format!("openssl {args:?}"),
                std::process::Command::new("openssl")
                    .args(args)
                    .current_dir(d.path()),
            )
        };
        let (pem_text, key) = SigningKey::generate().unwrap();
        std::fs::write(d.path().join("k.pem"), &pem_text).unwrap();
        std::fs::write(d.path().join("k.pub"), key.public().to_pem()).unwrap();
        let derived = run(&["pkey", "-in", "k.pem", "-pubout"]);
        assert_eq!(
            PublicKey::from_pem(&String::from_utf8_lossy(&derived), "openssl").unwrap(),
            key.public()
        );
        std::fs::write(d.path().join("msg"), b"a bundle header").unwrap();
        std::fs::write(d.path().join("sig"), key.sign(b"a bundle header")).unwrap();
        run(&[
            "pkeyutl", "-verify", "-pubin", "-inkey", "k.pub", "-rawin", "-in", "msg", "-sigfile",
            "sig",
        ]);
        // A key openssl made (PKCS#8 v1) signs what we verify.
        run(&["genpkey", "-algorithm", "ed25519", "-out", "o.pem"]);
        run(&[
            "pkeyutl", "-sign", "-inkey", "o.pem", "-rawin", "-in", "msg", "-out", "osig",
        ]);
        let theirs = SigningKey::from_pem(
            &std::fs::read_to_string(d.path().join("o.pem")).unwrap(),
            "o.pem",
        )
        .unwrap();
        let osig = std::fs::read(d.path().join("osig")).unwrap();
        assert!(theirs.public().verify(b"a bundle header", &osig));
        assert_eq!(
            theirs.sign(b"a bundle header").to_vec(),
            osig,
            "Ed25519 is deterministic"
        );
    }
}
