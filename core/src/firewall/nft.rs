//! Checking and loading a ruleset with the real `nft`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{FirewallError, DEFAULT_NFT, TABLE_FAMILY, TABLE_NAME};

/// Check, then load a ruleset: `nft -c -f -`, then `nft -f -` (with `-j` when the
/// ruleset is JSON, i.e. starts with `{`). Loading is one transaction; the ruleset
/// replaces our table only, so applying it again is harmless.
pub fn apply(ruleset: &str, nft: &Path) -> Result<(), FirewallError> {
    check(ruleset, nft)?;
    run_nft(nft, ruleset, false)?;
    verify_loaded(nft)?;
    tracing::info!(table = TABLE_NAME, nft = %nft.display(), "firewall loaded");
    Ok(())
}

/// The kernel holds our table with both chains (`nft list chain`), so nothing that
/// follows runs on a node whose ruleset did not load.
pub fn verify_loaded(nft: &Path) -> Result<(), FirewallError> {
    for chain in ["input", "forward"] {
        let args = ["list", "chain", TABLE_FAMILY, TABLE_NAME, chain];
        let out = Command::new(nft)
            .args(args)
            .output()
            .map_err(|source| FirewallError::Spawn {
                nft: nft.to_path_buf(),
                source,
            })?;
        if !out.status.success() {
            return Err(FirewallError::Rejected {
                command: format!("{} {}", nft.display(), args.join(" ")),
                status: out.status.to_string(),
                stderr: format!(
                    "the ruleset was accepted but chain {chain} is not loaded: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
    }
    Ok(())
}

/// `nft -c -f -`: let the kernel's nftables validate a ruleset without committing it.
pub fn check(ruleset: &str, nft: &Path) -> Result<(), FirewallError> {
    run_nft(nft, ruleset, true)
}

fn run_nft(nft: &Path, ruleset: &str, check_only: bool) -> Result<(), FirewallError> {
    let mut args: Vec<&str> = Vec::new();
    if ruleset.trim_start().starts_with('{') {
        args.push("-j");
    }
    if check_only {
        args.push("-c");
    }
    args.extend(["-f", "-"]);
    let command = format!("{} {}", nft.display(), args.join(" "));
    let mut child = Command::new(nft)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => FirewallError::NftMissing {
                nft: nft.to_path_buf(),
            },
            _ => FirewallError::Spawn {
                nft: nft.to_path_buf(),
                source,
            },
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(|source| FirewallError::Spawn {
                nft: nft.to_path_buf(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| FirewallError::Spawn {
            nft: nft.to_path_buf(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FirewallError::Rejected {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The `nft` binary to use: `$NFT` if set, else [`DEFAULT_NFT`] if present, else `nft`
/// from `PATH`.
pub fn nft_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NFT") {
        return PathBuf::from(p);
    }
    if Path::new(DEFAULT_NFT).exists() {
        return PathBuf::from(DEFAULT_NFT);
    }
    PathBuf::from("nft")
}
