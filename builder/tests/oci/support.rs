//! What the OCI tests share that needs the builder's types (the registry and the test
//! images are in `test_support::registry`).

use std::path::Path;

use nodeimage::fetch::Digest;
use nodeimage::profile::{self, LoadedProfile};

/// Writes `dir/<name>.toml` for `arch` with `images` ([[image]] TOML snippets) and loads it.
pub fn write_profile(dir: &Path, name: &str, arch: &str, images: &str) -> LoadedProfile {
    profile::load(&test_support::registry::write_profile_toml(
        dir, name, arch, images,
    ))
    .unwrap()
}

/// An x86_64 profile `name` with the one image `name` = `reference`.
pub fn one_image_profile(dir: &Path, name: &str, reference: &str) -> LoadedProfile {
    write_profile(
        dir,
        name,
        "x86_64",
        &test_support::registry::image_entry(name, reference, ""),
    )
}

pub fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}
