//! What every step of the run sees and how it reports: the [`RunOptions`], the
//! [`StepContext`], the [`Step`] trait, and the console line.
//!
//! A step is idempotent: run twice, the second run changes nothing. It can also say what
//! it would do without doing it ([`Step::plan`]), which `firstboot --dry-run` prints.

use std::path::PathBuf;

use anyhow::Result;

use crate::source::Platform;
use nodeimage_core::config::NodeConfig;

/// How and where to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `/` on a node; a directory tree in tests.
    pub root: PathBuf,
    /// Apply to the running system too (set the kernel hostname, load the firewall,
    /// start services). True only when `root` is `/`.
    pub live: bool,
    /// `--platform`: the data sources to use (overrides `firstboot.platform=` and SMBIOS).
    pub platform: Option<Platform>,
    /// Read the node config from this file instead of the data sources.
    pub config_file: Option<PathBuf>,
    /// Base URL override for the platform's metadata service.
    pub metadata_url: Option<String>,
}

impl RunOptions {
    /// Apply to the tree at `root`; live exactly when it is `/`; data sources as on the
    /// node.
    pub fn for_root(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        RunOptions {
            live: root == std::path::Path::new("/"),
            root,
            platform: None,
            config_file: None,
            metadata_url: None,
        }
    }
}

/// Everything a step may read.
pub struct StepContext<'a> {
    pub opts: &'a RunOptions,
    pub config: &'a NodeConfig,
    /// The node's name (the config's hostname, else the data source's).
    pub hostname: &'a str,
}

/// One idempotent step of the run.
pub trait Step {
    /// The step's name in the journal, status.json and the logs (`preflight`, `etcd`).
    fn name(&self) -> &'static str;

    /// What the step would do on this node, in one line, computed without changing
    /// anything (it may read the tree, never writes it or starts anything).
    fn plan(&self, c: &StepContext) -> String;

    /// Do it; the result is the step's detail in status.json.
    fn apply(&self, c: &StepContext) -> Result<String>;
}

/// A step made of two functions, its plan and its work: most steps need nothing but the
/// context.
#[derive(Clone, Copy)]
pub struct FnStep {
    pub name: &'static str,
    pub plan: fn(&StepContext) -> String,
    pub apply: fn(&StepContext) -> Result<String>,
}

impl FnStep {
    pub const fn new(
        name: &'static str,
        plan: fn(&StepContext) -> String,
        apply: fn(&StepContext) -> Result<String>,
    ) -> Self {
        FnStep { name, plan, apply }
    }
}

impl Step for FnStep {
    fn name(&self) -> &'static str {
        self.name
    }

    fn plan(&self, c: &StepContext) -> String {
        (self.plan)(c)
    }

    fn apply(&self, c: &StepContext) -> Result<String> {
        (self.apply)(c)
    }
}

/// Print a console line to stdout and, on a live node, to the kernel log (which reaches
/// the console reliably even when a getty owns the serial line).
pub fn announce(opts: &RunOptions, line: &str) {
    println!("{line}");
    if opts.live {
        if let Ok(mut k) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            use std::io::Write;
            let _ = writeln!(k, "{line}");
        }
    }
}

/// An error and its causes on one line, each cause once: what status.json and the
/// console say.
pub fn error_line(e: &anyhow::Error) -> String {
    nodeimage_core::errors::chain(e.as_ref())
}
