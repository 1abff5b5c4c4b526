//! The cluster-wide secrets `nodeimage cluster new` makes (CAs, service-account key,
//! bootstrap token, Weave password), and their directory: read, and written as one set.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nodeimage_core::files::write_secret;
use nodeimage_core::pki::{CaPair, ServiceAccountKey};
use rand::Rng;

/// The cluster-wide secrets `cluster new` makes.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecrets {
    pub ca: CaPair,
    pub etcd_ca: CaPair,
    pub front_proxy_ca: CaPair,
    pub service_account: ServiceAccountKey,
    /// `[a-z0-9]{6}.[a-z0-9]{16}`
    pub bootstrap_token: String,
    pub weave_password: String,
}

impl std::fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecrets(<redacted>)")
    }
}

/// File names inside the secrets directory.
pub mod secret_files {
    pub const CA_CRT: &str = "ca.crt";
    pub const CA_KEY: &str = "ca.key";
    pub const ETCD_CA_CRT: &str = "etcd-ca.crt";
    pub const ETCD_CA_KEY: &str = "etcd-ca.key";
    pub const FRONT_PROXY_CA_CRT: &str = "front-proxy-ca.crt";
    pub const FRONT_PROXY_CA_KEY: &str = "front-proxy-ca.key";
    pub const SA_KEY: &str = "sa.key";
    pub const SA_PUB: &str = "sa.pub";
    pub const BOOTSTRAP_TOKEN: &str = "bootstrap-token";
    pub const WEAVE_PASSWORD: &str = "weave-password";
    pub const ALL: [&str; 10] = [
        CA_CRT,
        CA_KEY,
        ETCD_CA_CRT,
        ETCD_CA_KEY,
        FRONT_PROXY_CA_CRT,
        FRONT_PROXY_CA_KEY,
        SA_KEY,
        SA_PUB,
        BOOTSTRAP_TOKEN,
        WEAVE_PASSWORD,
    ];
}

const TOKEN_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn random_string(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rngs::OsRng;
    (0..len)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

/// A bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}` from the operating system's CSPRNG.
pub fn new_bootstrap_token() -> String {
    format!(
        "{}.{}",
        random_string(6, TOKEN_ALPHABET),
        random_string(16, TOKEN_ALPHABET)
    )
}

/// A Weave Net password: 32 characters of [A-Za-z0-9] (≈190 bits).
pub fn new_weave_password() -> String {
    random_string(
        32,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    )
}

impl ClusterSecrets {
    pub fn generate(now: time::OffsetDateTime) -> Result<Self> {
        Ok(ClusterSecrets {
            ca: CaPair::generate("kubernetes", now)?,
            etcd_ca: CaPair::generate("etcd-ca", now)?,
            front_proxy_ca: CaPair::generate("front-proxy-ca", now)?,
            service_account: ServiceAccountKey::generate()?,
            bootstrap_token: new_bootstrap_token(),
            weave_password: new_weave_password(),
        })
    }

    fn files(&self) -> Vec<(&'static str, String)> {
        use secret_files::*;
        vec![
            (CA_CRT, self.ca.cert_pem.clone()),
            (CA_KEY, self.ca.key_pem.clone()),
            (ETCD_CA_CRT, self.etcd_ca.cert_pem.clone()),
            (ETCD_CA_KEY, self.etcd_ca.key_pem.clone()),
            (FRONT_PROXY_CA_CRT, self.front_proxy_ca.cert_pem.clone()),
            (FRONT_PROXY_CA_KEY, self.front_proxy_ca.key_pem.clone()),
            (SA_KEY, self.service_account.private_pem.clone()),
            (SA_PUB, self.service_account.public_pem.clone()),
            (BOOTSTRAP_TOKEN, format!("{}\n", self.bootstrap_token)),
            (WEAVE_PASSWORD, format!("{}\n", self.weave_password)),
        ]
    }

    /// Read a secrets directory made by [`ClusterSecrets::write`].
    pub fn load(dir: &Path) -> Result<Self> {
        use secret_files::*;
        let read = |name: &str| -> Result<String> {
            std::fs::read_to_string(dir.join(name)).with_context(|| {
                format!(
                    "reading {} (make the cluster secrets with `nodeimage cluster new` first)",
                    dir.join(name).display()
                )
            })
        };
        let pair = |cert: &str, key: &str| -> Result<CaPair> {
            Ok(CaPair {
                cert_pem: read(cert)?,
                key_pem: read(key)?,
            })
        };
        let s = ClusterSecrets {
            ca: pair(CA_CRT, CA_KEY)?,
            etcd_ca: pair(ETCD_CA_CRT, ETCD_CA_KEY)?,
            front_proxy_ca: pair(FRONT_PROXY_CA_CRT, FRONT_PROXY_CA_KEY)?,
            service_account: ServiceAccountKey {
                private_pem: read(SA_KEY)?,
                public_pem: read(SA_PUB)?,
            },
            bootstrap_token: read(BOOTSTRAP_TOKEN)?.trim().to_string(),
            weave_password: read(WEAVE_PASSWORD)?.trim().to_string(),
        };
        if !nodeimage_core::config::valid_bootstrap_token(&s.bootstrap_token) {
            bail!(
                "{}: not of the form [a-z0-9]{{6}}.[a-z0-9]{{16}}",
                dir.join(BOOTSTRAP_TOKEN).display()
            );
        }
        Ok(s)
    }

    /// Write all files (0600) into `dir` (0700) as one set: they are written into a fresh
    /// sibling directory which then takes `dir`'s place in one rename (an atomic exchange
    /// with `--force`). An existing `dir` is refused unless `force`.
    pub fn write(&self, dir: &Path, force: bool) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let exists = dir.symlink_metadata().is_ok();
        if exists && !force {
            bail!(
                "{} exists; refusing to replace cluster secrets without --force",
                dir.display()
            );
        }
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let base = dir
            .file_name()
            .ok_or_else(|| anyhow!("{}: not a directory name", dir.display()))?
            .to_string_lossy()
            .into_owned();
        let tmp = parent.join(format!(".{base}.new.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
        let cleanup = |e: anyhow::Error| {
            let _ = std::fs::remove_dir_all(&tmp);
            e
        };
        for (name, data) in self.files() {
            write_secret(&tmp.join(name), data.as_bytes())
                .with_context(|| format!("writing {}", tmp.join(name).display()))
                .map_err(cleanup)?;
        }
        std::fs::File::open(&tmp)
            .and_then(|d| d.sync_all())
            .map_err(|e| cleanup(e.into()))?;
        if exists {
            exchange(&tmp, dir)
                .with_context(|| format!("replacing {}", dir.display()))
                .map_err(cleanup)?;
            // `tmp` now holds the old secrets.
            std::fs::remove_dir_all(&tmp)
                .with_context(|| format!("removing the old secrets in {}", tmp.display()))?;
        } else {
            std::fs::rename(&tmp, dir)
                .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))
                .map_err(cleanup)?;
        }
        std::fs::File::open(&parent).and_then(|d| d.sync_all()).ok();
        Ok(())
    }
}

/// Atomically swap two paths (renameat2 RENAME_EXCHANGE).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: both arguments are valid NUL-terminated paths; AT_FDCWD resolves them
    // relative to the working directory like rename(2).
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_and_password_forms() {
        for _ in 0..50 {
            let t = new_bootstrap_token();
            assert!(nodeimage_core::config::valid_bootstrap_token(&t), "{t}");
        }
        assert_ne!(new_bootstrap_token(), new_bootstrap_token());
        let p = new_weave_password();
        assert_eq!(p.len(), 32);
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
