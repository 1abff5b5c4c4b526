//! Platform identification from SMBIOS/DMI (`<root>/sys/class/dmi/id/*`).
//!
//! | platform      | evidence                                                               |
//! |---------------|------------------------------------------------------------------------|
//! | ec2           | `sys_vendor` or `bios_vendor` is `Amazon EC2`; or `product_uuid` starts with `ec2` (Xen instances) |
//! | gcp           | `sys_vendor` `Google` or `product_name` `Google Compute Engine`        |
//! | azure         | `sys_vendor` `Microsoft Corporation` and `chassis_asset_tag` `7783-7084-3265-9085-8269-3286-77` |
//! | openstack     | `sys_vendor` or `product_name` mentions `OpenStack`                    |
//! | digitalocean  | `sys_vendor` `DigitalOcean`                                            |
//! | hetzner       | `sys_vendor` `Hetzner`                                                 |
//! | qemu          | `sys_vendor`, `product_name` or `board_vendor` mentions `QEMU`        |
//!
//! Clouds are checked before QEMU because several clouds run on KVM/QEMU.

use std::path::Path;

use super::Platform;

/// Azure's fixed chassis asset tag.
pub const AZURE_CHASSIS_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

fn field(root: &Path, name: &str) -> String {
    std::fs::read_to_string(nodeimage_core::files::rooted(
        root,
        &format!("/sys/class/dmi/id/{name}"),
    ))
    .map(|s| s.trim().to_string())
    .unwrap_or_default()
}

/// The platform the DMI tables name, with the evidence; `None` when nothing matches.
pub fn detect_from_dmi(root: &Path) -> Option<(Platform, String)> {
    let sys_vendor = field(root, "sys_vendor");
    let product_name = field(root, "product_name");
    let bios_vendor = field(root, "bios_vendor");
    let chassis_asset_tag = field(root, "chassis_asset_tag");
    let board_vendor = field(root, "board_vendor");
    let product_uuid = field(root, "product_uuid").to_ascii_lowercase();
    let has = |s: &str, needle: &str| {
        s.to_ascii_lowercase()
            .contains(&needle.to_ascii_lowercase())
    };

    if sys_vendor == "Amazon EC2" || bios_vendor == "Amazon EC2" {
        return Some((
            Platform::Ec2,
            format!("sys_vendor={sys_vendor:?} bios_vendor={bios_vendor:?}"),
        ));
    }
    if product_uuid.starts_with("ec2") {
        return Some((Platform::Ec2, format!("product_uuid={product_uuid:?}")));
    }
    if sys_vendor == "Google" || product_name == "Google Compute Engine" {
        return Some((
            Platform::Gcp,
            format!("sys_vendor={sys_vendor:?} product_name={product_name:?}"),
        ));
    }
    if sys_vendor == "Microsoft Corporation" && chassis_asset_tag == AZURE_CHASSIS_ASSET_TAG {
        return Some((
            Platform::Azure,
            format!("sys_vendor={sys_vendor:?} chassis_asset_tag={chassis_asset_tag:?}"),
        ));
    }
    if has(&sys_vendor, "openstack") || has(&product_name, "openstack") {
        return Some((
            Platform::OpenStack,
            format!("sys_vendor={sys_vendor:?} product_name={product_name:?}"),
        ));
    }
    if sys_vendor == "DigitalOcean" {
        return Some((Platform::DigitalOcean, format!("sys_vendor={sys_vendor:?}")));
    }
    if sys_vendor == "Hetzner" {
        return Some((Platform::Hetzner, format!("sys_vendor={sys_vendor:?}")));
    }
    if has(&sys_vendor, "qemu") || has(&product_name, "qemu") || has(&board_vendor, "qemu") {
        return Some((
            Platform::Qemu,
            format!("sys_vendor={sys_vendor:?} product_name={product_name:?}"),
        ));
    }
    None
}
