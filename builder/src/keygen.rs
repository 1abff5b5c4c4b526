//! `nodeimage keygen`: the Ed25519 key pair that signs update bundles.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use nodeimage_core::bundle::SigningKey;

#[derive(clap::Args, Debug, Clone)]
pub struct KeygenArgs {
    /// Write PREFIX.pem (the private key, 0600: keep it off the nodes, pass it to
    /// `nodeimage build --sign-key`) and PREFIX.pub.pem (the public key, for the
    /// profile's `[update] public_key`).
    #[arg(long, short = 'o', value_name = "PREFIX", default_value = "update-key")]
    pub out: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

/// The two files `args` names.
pub fn paths(args: &KeygenArgs) -> (PathBuf, PathBuf) {
    let s = args.out.as_os_str().to_string_lossy();
    (
        PathBuf::from(format!("{s}.pem")),
        PathBuf::from(format!("{s}.pub.pem")),
    )
}

pub fn keygen(args: &KeygenArgs) -> Result<()> {
    let (secret, public) = paths(args);
    for p in [&secret, &public] {
        if p.exists() && !args.force {
            bail!(
                "{} exists: a new key would orphan every node that trusts the old one; \
                 pass --force to replace it",
                p.display()
            );
        }
    }
    let (pem, key) = SigningKey::generate()?;
    nodeimage_core::files::atomic_write(&secret, pem.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", secret.display()))?;
    nodeimage_core::files::atomic_write(&public, key.public().to_pem().as_bytes(), 0o644)
        .with_context(|| format!("writing {}", public.display()))?;
    println!(
        "{} (private, 0600) and {}: key {}",
        secret.display(),
        public.display(),
        key.public().fingerprint()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_a_private_key_only_its_owner_reads_and_never_replaces_one_silently() {
        let d = tempfile::tempdir().unwrap();
        let args = KeygenArgs {
            out: d.path().join("k"),
            force: false,
        };
        keygen(&args).unwrap();
        let (secret, public) = paths(&args);
        assert_eq!(
            std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let key = SigningKey::from_pem(&std::fs::read_to_string(&secret).unwrap(), "k").unwrap();
        let pubkey = nodeimage_core::bundle::PublicKey::from_pem(
            &std::fs::read_to_string(&public).unwrap(),
            "k.pub",
        )
        .unwrap();
        assert_eq!(key.public(), pubkey);
        let old = std::fs::read_to_string(&secret).unwrap();
        let e = keygen(&args).unwrap_err().to_string();
        assert!(e.contains("exists") && e.contains("--force"), "{e}");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), old);
        keygen(&KeygenArgs {
            force: true,
            ..args
        })
        .unwrap();
        assert_ne!(
            std::fs::read_to_string(&secret).unwrap(),
            old,
            "--force makes a new key"
        );
    }
}
