//! The vocabulary of preflight: the checks, one result per check (or item), the report.

use std::fs;
use std::path::Path;

use serde::Serialize;

use nodeimage_core::files::rooted;

/// The checks, by the names `preflight.skip` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    Memory,
    Disk,
    Architecture,
    KernelModules,
    Sysctls,
    Ports,
    /// The preflight settings themselves (an unknown name in `skip`).
    Settings,
}

impl Check {
    /// The checks that `preflight.skip` may name.
    pub const ALL: [Check; 6] = [
        Check::Memory,
        Check::Disk,
        Check::Architecture,
        Check::KernelModules,
        Check::Sysctls,
        Check::Ports,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::Memory => "memory",
            Check::Disk => "disk",
            Check::Architecture => "architecture",
            Check::KernelModules => "kernel-modules",
            Check::Sysctls => "sysctls",
            Check::Ports => "ports",
            Check::Settings => "settings",
        }
    }

    pub fn from_name(s: &str) -> Option<Check> {
        Check::ALL.into_iter().find(|c| c.name() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skipped,
}

/// The outcome of one check (or one item of a check: a module, a sysctl).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub check: Check,
    /// The module or sysctl this result is about, when a check has several items.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    pub status: Status,
    pub requirement: String,
    pub found: String,
    /// How to fix a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl CheckResult {
    pub(super) fn new(check: Check, item: Option<&str>, requirement: String) -> Self {
        CheckResult {
            check,
            item: item.map(str::to_string),
            status: Status::Pass,
            requirement,
            found: String::new(),
            fix: None,
        }
    }
    pub(super) fn pass(mut self, found: impl Into<String>) -> Self {
        self.status = Status::Pass;
        self.found = found.into();
        self
    }
    pub(super) fn fail(mut self, found: impl Into<String>, fix: impl Into<String>) -> Self {
        self.status = Status::Fail;
        self.found = found.into();
        self.fix = Some(fix.into());
        self
    }

    /// One console/journal line.
    pub fn line(&self) -> String {
        let name = match &self.item {
            Some(i) => format!("{} {i}", self.check.name()),
            None => self.check.name().to_string(),
        };
        match self.status {
            Status::Pass => format!(
                "preflight {name}: ok: {} (requirement: {})",
                self.found, self.requirement
            ),
            Status::Skipped => format!("preflight {name}: skipped ({})", self.found),
            Status::Fail => format!(
                "preflight {name}: FAILED: requirement: {}; found: {}; fix: {}",
                self.requirement,
                self.found,
                self.fix.as_deref().unwrap_or("-")
            ),
        }
    }
}

/// All results, in check order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreflightReport {
    pub passed: bool,
    pub checks: Vec<CheckResult>,
}

impl PreflightReport {
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }
    pub fn lines(&self) -> Vec<String> {
        self.checks.iter().map(CheckResult::line).collect()
    }
}

/// A file under the root as text; the error says which file could not be read.
pub(super) fn read(root: &Path, node_path: &str) -> Result<String, String> {
    let p = rooted(root, node_path);
    fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}
