//! nodeimage: bakes immutable Kubernetes node images from a profile.
//!
//! Data flow: `profile` → `fetch` (pinned artifacts into a content-addressed cache)
//! → `rootfs` (Debian base + payload + overlays + firstboot) → `disk` (erofs root,
//! FAT ESP and NODECONFIG, GPT) → outputs and `manifest`. [`build`] runs that flow as
//! typed stages, each cached by the hash of its inputs.
//!
//! Beside the pipeline: [`cluster`] (`cluster new`, `node-config`), [`disk`]'s
//! `write-config` and `inspect` on finished images, [`oci`] (`lock` and the image
//! stage), [`ports`] (`nodeimage ports`), [`keygen`] (the update-bundle signing key),
//! [`tools`] (the external programs).

pub mod build;
pub mod cluster;
pub mod disk;
pub mod fetch;
pub mod keygen;
pub mod manifest;
pub mod oci;
pub mod ports;
pub mod profile;
pub mod rootfs;
pub mod tools;
pub mod upload;
