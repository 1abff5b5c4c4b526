//! Running the real tools tests check against.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The first executable file named `program` in the directories of `PATH`. Only `PATH`
/// is searched, so a test run with a reduced `PATH` sees exactly what the product would.
pub fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// A `Command` for `program`, which the test needs: it panics naming the Debian
/// `package` when the program is not installed (in a system directory or on `PATH`).
/// mtools' drive-geometry check is off and messages are in English (`LC_ALL=C`), so
/// tests can match on them.
pub fn tool(program: &str, package: &str) -> Command {
    let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).exists())
        || which(program).is_some();
    assert!(
        found,
        "`{program}` is needed by this test: apt-get install {package}"
    );
    let mut c = Command::new(program);
    c.env("MTOOLS_SKIP_CHECK", "1").env("LC_ALL", "C");
    c
}

/// A command that could not be run or failed: what it was, its status and its output.
#[derive(Debug)]
pub struct CmdError(String);

impl std::fmt::Display for CmdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CmdError {}

/// Run `cmd`; its stdout when it exits 0, else an error with the command, its status,
/// stdout and stderr.
pub fn run(cmd: &mut Command) -> Result<String, CmdError> {
    let out = cmd
        .output()
        .map_err(|e| CmdError(format!("running {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(CmdError(format!(
            "{:?} failed ({}):\n{}\n{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run `cmd`, asserting it exits 0 (else the message is `what` and its stderr); its stdout.
pub fn stdout_ok(what: &str, cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Run `cmd`, panicking with its output when it fails; stdout and stderr together.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {:?}: {e}", cmd.get_program()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_searches_path_only() {
        assert!(which("sh").is_some(), "sh is on every PATH");
        assert!(which("definitely-not-a-program-here").is_none());
    }

    #[test]
    fn run_returns_stdout_or_says_what_failed() {
        assert_eq!(
            run(Command::new("sh").args(["-c", "echo hi"])).unwrap(),
            "hi\n"
        );
        let e = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("exit status: 3") && e.contains("oops"), "{e}");
        assert!(run(&mut Command::new("definitely-not-a-program-here")).is_err());
        assert_eq!(
            run_ok(Command::new("sh").args(["-c", "echo a; echo b >&2"])),
            "a\nb\n"
        );
    }
}
