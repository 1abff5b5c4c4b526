//! The image's own configuration partition: a FAT filesystem labelled `NODECONFIG`
//! (written by `nodeimage`) holding `node.yaml` (native) or `config.ign` (Ignition). An
//! empty partition is "present, no user data", so the platform's sources are tried next.

use std::cell::RefCell;

use nodeimage_core::config::NODE_CONFIG_FILE_NAME;

/// The Ignition config's file name on the partition (what `nodeimage write-config` writes).
pub const IGNITION_FILE_NAME: &str = "config.ign";

use super::blockdev::{DeviceSet, Volume};
use super::{DataSource, SourceContext, SourceError};

/// Label of the configuration partition.
pub const NODECONFIG_LABEL: &str = "NODECONFIG";

pub(crate) const SOURCE_NAME: &str = "nodeconfig-partition";

pub(crate) struct NodeConfigPartition {
    ctx: SourceContext,
    /// `NODECONFIG/<file>` once read, so errors name the file the user edits.
    found: RefCell<Option<String>>,
}

impl NodeConfigPartition {
    pub fn new(ctx: &SourceContext) -> Self {
        NodeConfigPartition {
            ctx: ctx.clone(),
            found: RefCell::new(None),
        }
    }
}

impl DataSource for NodeConfigPartition {
    fn name(&self) -> &'static str {
        SOURCE_NAME
    }

    /// On a node that knows its boot disk, only that disk's own NODECONFIG counts (see
    /// [`nodeconfig_volumes`]).
    fn user_data(&self) -> Result<Option<Vec<u8>>, SourceError> {
        let vols = nodeconfig_volumes(&self.ctx.devices)
            .map_err(|reason| SourceError::absent(SOURCE_NAME, reason))?;
        if vols.len() > 1 {
            tracing::warn!(count = vols.len(), first = %vols[0].path.display(), "several NODECONFIG volumes; using the first");
        }
        let vol = &vols[0];
        for file in [NODE_CONFIG_FILE_NAME, IGNITION_FILE_NAME] {
            let data = vol.fs.read_file(file).map_err(|e| {
                SourceError::io(
                    SOURCE_NAME,
                    format!("reading {file} on {}", vol.path.display()),
                    e,
                )
            })?;
            tracing::debug!(device = %vol.path.display(), file, found = data.is_some(), "config partition");
            if data.is_some() {
                *self.found.borrow_mut() = Some(format!("{NODECONFIG_LABEL}/{file}"));
                return Ok(data);
            }
        }
        Ok(None)
    }

    fn document(&self) -> String {
        match &*self.found.borrow() {
            Some(f) => format!("{SOURCE_NAME} ({f})"),
            None => SOURCE_NAME.to_string(),
        }
    }
}

/// The NODECONFIG volumes to read: on a node that knows its boot disk only that disk's
/// own (a stick or a second disk with the same label, which may sort first, `sda` before
/// `vda`, is ignored with a warning, never read); elsewhere every one, in name order.
/// `Err` says why there is none.
pub fn nodeconfig_volumes(devices: &DeviceSet) -> Result<Vec<Volume>, String> {
    let vols = devices.find_by_label(&[NODECONFIG_LABEL]);
    let vols = match devices.boot_disk() {
        None => vols,
        Some(disk) => {
            let (own, others): (Vec<Volume>, Vec<Volume>) = vols
                .into_iter()
                .partition(|v| disk.devices.contains(&v.path));
            for o in &others {
                tracing::warn!(device = %o.path.display(), boot_disk = %disk.name, "ignoring a NODECONFIG volume that is not on the boot disk");
            }
            if own.is_empty() && !others.is_empty() {
                return Err(format!(
                    "no {NODECONFIG_LABEL} on the boot disk {}; ignored {} on other devices",
                    disk.name,
                    others
                        .iter()
                        .map(|v| v.path.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            own
        }
    };
    if vols.is_empty() {
        return Err(format!("no filesystem labelled {NODECONFIG_LABEL}"));
    }
    Ok(vols)
}
