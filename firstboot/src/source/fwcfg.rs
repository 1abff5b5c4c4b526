//! QEMU fw_cfg: `<root>/sys/firmware/qemu_fw_cfg/by_name/opt/org.nodeimage/config/raw`
//! (the `qemu_fw_cfg` kernel module exposes it). Pass the file to QEMU with
//! `-fw_cfg name=opt/org.nodeimage/config,file=node.yaml`.

use super::{DataSource, SourceContext, SourceError};

/// The fw_cfg item name firstboot reads.
pub const FW_CFG_NAME: &str = "opt/org.nodeimage/config";

pub(crate) const SOURCE_NAME: &str = "qemu-fw-cfg";

pub(crate) struct FwCfgSource {
    root: std::path::PathBuf,
}

impl FwCfgSource {
    pub fn new(ctx: &SourceContext) -> Self {
        FwCfgSource {
            root: ctx.root.clone(),
        }
    }
}

impl DataSource for FwCfgSource {
    fn name(&self) -> &'static str {
        SOURCE_NAME
    }

    fn user_data(&self) -> Result<Option<Vec<u8>>, SourceError> {
        let base = nodeimage_core::files::rooted(&self.root, "/sys/firmware/qemu_fw_cfg");
        if !base.exists() && self.root == std::path::Path::new("/") {
            // Debian builds the sysfs interface as a module that nothing loads by default.
            let _ = std::process::Command::new("modprobe")
                .args(["-q", "qemu_fw_cfg"])
                .status();
        }
        let raw = base.join("by_name").join(FW_CFG_NAME).join("raw");
        match std::fs::read(&raw) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if base.exists() {
                    Err(SourceError::absent(
                        SOURCE_NAME,
                        format!("fw_cfg has no item {FW_CFG_NAME}"),
                    ))
                } else {
                    Err(SourceError::absent(
                        SOURCE_NAME,
                        "no fw_cfg (not QEMU, or the qemu_fw_cfg module is not loaded)",
                    ))
                }
            }
            Err(e) => Err(SourceError::io(
                SOURCE_NAME,
                format!("reading {}", raw.display()),
                e,
            )),
        }
    }
}
