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

pub fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}
