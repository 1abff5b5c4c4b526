//! Helpers shared by the workspace's tests. Dev-only: no product crate depends on this
//! at run time.
//!
//! * [`Needs`]: what a test needs from the machine (root, a program on `PATH`, a file).
//!   When something is missing the test is skipped with a `SKIP` line, except under CI
//!   (`CI=true`), where a missing requirement fails the test and names what is missing,
//!   so a package that drops out of `.ci/install-deps` turns CI red instead of silently
//!   shrinking the suite.

pub mod needs;

pub use needs::{in_ci, is_root, which, Needs};
