//! etcd under systemd on the node.

use std::path::{Path, PathBuf};

use super::{etcd_unit, EtcdEnv, EtcdError, EtcdService, ENV_FILE, UNIT_NAME, UNIT_PATH};
use crate::systemd::{self, SystemdError};

/// etcd under systemd on the node: env file + unit under a root prefix, then systemctl.
pub struct SystemdEtcd {
    pub root: PathBuf,
    pub etcd_bin: String,
}

/// Writing one of etcd's files failed.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
struct WriteError {
    path: PathBuf,
    source: std::io::Error,
}

/// A reload or enable that systemctl refuses does not stop the start (the restart that
/// follows fails if it matters); one it cannot run at all does.
fn tolerate(r: Result<(), SystemdError>) -> Result<(), EtcdError> {
    match r {
        Err(e @ SystemdError::Spawn { .. }) => Err(EtcdError::Service(e.into())),
        Err(e) => {
            tracing::warn!(error = %e, "systemctl refused; continuing");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

impl EtcdService for SystemdEtcd {
    fn start(&self, env: &EtcdEnv) -> Result<(), EtcdError> {
        let w = |p: &str, data: &str, mode: u32| {
            let path = nodeimage_core::files::rooted(&self.root, p);
            nodeimage_core::files::atomic_write(&path, data.as_bytes(), mode)
                .map_err(|source| EtcdError::Service(WriteError { path, source }.into()))
        };
        w(ENV_FILE, &env.to_env_file(), 0o600)?;
        w(UNIT_PATH, &etcd_unit(&self.etcd_bin), 0o644)?;
        if self.root != Path::new("/") {
            // Applying to a directory tree: nothing to start.
            return Ok(());
        }
        tolerate(systemd::daemon_reload())?;
        tolerate(systemd::enable(&[UNIT_NAME]))?;
        // --no-block: Type=notify would otherwise wait for a quorum this member may
        // only reach together with others.
        systemd::restart_no_block(UNIT_NAME).map_err(|e| EtcdError::Service(e.into()))
    }

    fn is_running(&self) -> bool {
        // Starting counts: a Type=notify member is `activating` until it has quorum.
        self.root == Path::new("/") && systemd::is_running(UNIT_NAME)
    }
}
