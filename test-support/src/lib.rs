//! Helpers shared by the workspace's tests. Dev-only: no product crate depends on this
//! at run time, and this crate depends on no workspace crate (the builder's and
//! firstboot's tests depend on it; helpers that need their types stay beside those tests).
//!
//! * [`Needs`]: what a test needs from the machine (root, a program on `PATH`, a file).
//!   When something is missing the test is skipped with a `SKIP` line, except under CI
//!   (`CI=true`), where a missing requirement fails the test and names what is missing,
//!   so a package that drops out of `.ci/install-deps` turns CI red instead of silently
//!   shrinking the suite.
//! * [`cmd`]: `which`, `tool` (a command the test needs) and `run`.
//! * [`golden`]: golden files with `UPDATE_GOLDEN=1`.
//! * [`http`]: a raw-TCP HTTP server (status, Range, cut bodies) and a tiny_http mock
//!   with injected faults; [`metadata`]: cloud metadata services built on the mock.
//! * [`images`]: FAT and ISO images made by mkfs.fat/mtools and genisoimage/xorriso, and
//!   `fsck.fat`.
//! * [`registry`]: Debian's docker-registry on 127.0.0.1 and test images pushed to it.
//! * [`files`]: deterministic content, directory listings.

pub mod cmd;
pub mod files;
pub mod golden;
pub mod http;
pub mod images;
pub mod metadata;
pub mod needs;
pub mod registry;

pub use cmd::which;
pub use needs::{in_ci, is_root, needs_tool, Needs};

/// `len` bytes of deterministic noise (xorshift32 from `seed`): data that compresses and
/// repeats nowhere, for file system and hash tree tests.
pub fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Assert that `text` contains every one of `parts`; the message names the missing ones
/// and shows `text`.
#[track_caller]
pub fn assert_contains(text: &str, parts: &[&str]) {
    let missing: Vec<&str> = parts
        .iter()
        .copied()
        .filter(|p| !text.contains(p))
        .collect();
    assert!(missing.is_empty(), "missing {missing:?} in:\n{text}");
}
