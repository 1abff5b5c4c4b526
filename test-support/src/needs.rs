//! Requirements of a test on the machine it runs on.

use std::path::Path;

use crate::cmd::which;

/// True when running under CI: `CI` is set to `true` or `1` (GitHub Actions, GitLab and
/// `.ci/run` all set `CI=true`).
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Ok("true") | Ok("1")
    )
}

/// Whether the test runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// What one test needs. Build it with [`Needs::new`], add requirements, then call
/// [`Needs::met`]:
///
/// ```no_run
/// # use test_support::Needs;
/// if !Needs::new("firewall matrix").root().tool("nft", "nftables").met() {
///     return;
/// }
/// ```
#[derive(Debug)]
#[must_use = "call .met() to check the requirements"]
pub struct Needs {
    test: String,
    missing: Vec<String>,
}

impl Needs {
    pub fn new(test: &str) -> Needs {
        Needs {
            test: test.to_string(),
            missing: Vec::new(),
        }
    }

    /// Root (namespaces, loop devices, mounts, chroot).
    pub fn root(mut self) -> Needs {
        if !is_root() {
            self.missing.push("root".into());
        }
        self
    }

    /// `program` on `PATH`, from the Debian package `package`.
    pub fn tool(mut self, program: &str, package: &str) -> Needs {
        if which(program).is_none() {
            self.missing
                .push(format!("`{program}` on PATH (Debian package {package})"));
        }
        self
    }

    /// A file at a fixed path, from the Debian package `package`.
    pub fn file(mut self, path: impl AsRef<Path>, package: &str) -> Needs {
        let path = path.as_ref();
        if !path.exists() {
            self.missing
                .push(format!("{} (Debian package {package})", path.display()));
        }
        self
    }

    /// A requirement the caller checked itself; `why` says what is missing.
    pub fn check(mut self, ok: bool, why: impl Into<String>) -> Needs {
        if !ok {
            self.missing.push(why.into());
        }
        self
    }

    /// What is missing, if anything.
    pub fn missing(&self) -> &[String] {
        &self.missing
    }

    /// True when every requirement is met. Otherwise prints `SKIP <test>: needs ...` and
    /// returns false, or, under CI, panics with the same message.
    pub fn met(self) -> bool {
        if self.missing.is_empty() {
            return true;
        }
        let msg = format!("{}: needs {}", self.test, self.missing.join(", "));
        if in_ci() {
            panic!("CI=true and a requirement is missing (a test may not skip in CI): {msg}");
        }
        eprintln!("SKIP {msg}");
        false
    }
}

/// `Needs::new(test).tool(program, package).met()`: a test that needs one program.
pub fn needs_tool(test: &str, program: &str, package: &str) -> bool {
    Needs::new(test).tool(program, package).met()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_requirements_are_named() {
        let n = Needs::new("t")
            .tool("definitely-not-a-program-here", "nopkg")
            .file("/definitely/not/here", "otherpkg")
            .check(true, "never shown");
        assert_eq!(n.missing().len(), 2);
        assert!(n.missing()[0].contains("definitely-not-a-program-here"));
        assert!(n.missing()[0].contains("nopkg"));
        assert!(n.missing()[1].contains("otherpkg"));
    }

    #[test]
    fn everything_present_is_met() {
        assert!(Needs::new("t").tool("sh", "dash").check(true, "x").met());
    }
}
