//! etcd under systemd on the node.

use std::path::{Path, PathBuf};

use super::{etcd_unit, EtcdEnv, EtcdError, EtcdService, ENV_FILE, UNIT_NAME, UNIT_PATH};

/// etcd under systemd on the node: env file + unit under a root prefix, then systemctl.
pub struct SystemdEtcd {
    pub root: PathBuf,
    pub etcd_bin: String,
}

impl SystemdEtcd {
    fn systemctl(&self, args: &[&str]) -> Result<bool, EtcdError> {
        let st = std::process::Command::new("systemctl")
            .args(args)
            .status()
            .map_err(|e| EtcdError::Service(format!("running systemctl: {e}")))?;
        Ok(st.success())
    }
}

impl EtcdService for SystemdEtcd {
    fn start(&self, env: &EtcdEnv) -> Result<(), EtcdError> {
        let w = |p: &str, data: &str, mode: u32| {
            let path = nodeimage_core::files::rooted(&self.root, p);
            nodeimage_core::files::atomic_write(&path, data.as_bytes(), mode)
                .map_err(|e| EtcdError::Service(format!("{}: {e}", path.display())))
        };
        w(ENV_FILE, &env.to_env_file(), 0o600)?;
        w(UNIT_PATH, &etcd_unit(&self.etcd_bin), 0o644)?;
        if self.root != Path::new("/") {
            // Applying to a directory tree: nothing to start.
            return Ok(());
        }
        self.systemctl(&["daemon-reload"])?;
        self.systemctl(&["enable", UNIT_NAME])?;
        // --no-block: Type=notify would otherwise wait for a quorum this member may
        // only reach together with others.
        if !self.systemctl(&["restart", "--no-block", UNIT_NAME])? {
            return Err(EtcdError::Service(format!(
                "systemctl restart {UNIT_NAME} failed"
            )));
        }
        Ok(())
    }

    fn is_running(&self) -> bool {
        if self.root != Path::new("/") {
            return false;
        }
        std::process::Command::new("systemctl")
            .args(["is-active", "--quiet", UNIT_NAME])
            .status()
            .is_ok_and(|s| s.success())
    }
}
