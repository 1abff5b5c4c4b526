//! systemd, through `systemctl`: the one place firstboot starts, enables and asks about
//! units.
//!
//! Starting a unit from `firstboot.service` needs care: a start job for a unit ordered
//! after `firstboot.service` waits until firstboot's own (oneshot) start finishes, while
//! firstboot waits for that unit. [`check_start_order`] says so at once instead of
//! waiting for a deadline, and [`enable_now`] checks it before starting anything.

use std::collections::BTreeMap;
use std::process::{Command, ExitStatus};

/// The unit firstboot runs as.
pub const FIRSTBOOT_UNIT: &str = "firstboot.service";

/// A `systemctl` call that failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("running systemctl {args}")]
    Spawn {
        args: String,
        #[source]
        error: std::io::Error,
    },
    #[error("systemctl {args} failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: ExitStatus,
        stderr: String,
    },
    /// A unit ordered after firstboot would wait for firstboot (see the module docs).
    #[error(
        "{FIRSTBOOT_UNIT} is ordered Before={0}, so starting {0} from firstboot would wait for \
         firstboot itself: remove {0} from Before= in {FIRSTBOOT_UNIT}"
    )]
    StartOrder(String),
}

/// `systemctl ARGS`, failing with its stderr; returns its stdout.
pub fn systemctl(args: &[&str]) -> Result<String, SystemdError> {
    let shown = || args.join(" ");
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|error| SystemdError::Spawn {
            args: shown(),
            error,
        })?;
    if !out.status.success() {
        return Err(SystemdError::Failed {
            args: shown(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `systemctl daemon-reload`: pick up unit files just written.
pub fn daemon_reload() -> Result<(), SystemdError> {
    systemctl(&["daemon-reload"]).map(drop)
}

/// `systemctl enable UNITS` (links only; nothing is started).
pub fn enable(units: &[&str]) -> Result<(), SystemdError> {
    systemctl(&with(&["enable"], units)).map(drop)
}

/// `systemctl start UNIT`, waiting for the start job.
pub fn start(unit: &str) -> Result<(), SystemdError> {
    systemctl(&["start", unit]).map(drop)
}

/// `systemctl restart UNIT`, waiting for the start job.
pub fn restart(unit: &str) -> Result<(), SystemdError> {
    systemctl(&["restart", unit]).map(drop)
}

/// `systemctl restart --no-block UNIT`: queue the restart, do not wait for it (a
/// `Type=notify` unit may only become ready together with other machines).
pub fn restart_no_block(unit: &str) -> Result<(), SystemdError> {
    systemctl(&["restart", "--no-block", unit]).map(drop)
}

/// Whether a unit's process runs or is starting: `active`, `reloading`, or `activating`
/// other than waiting to be restarted (`auto-restart`). A `Type=notify` service is
/// `activating` until it reports ready, which for an etcd member can take as long as
/// reaching quorum, and under emulation seconds in any case.
pub fn is_running_state(active_state: &str, sub_state: &str) -> bool {
    match active_state {
        "active" | "reloading" => true,
        "activating" => sub_state != "auto-restart",
        _ => false,
    }
}

/// [`is_running_state`] of `unit`, asked of systemd; false when systemd cannot be asked.
pub fn is_running(unit: &str) -> bool {
    show(unit, &["ActiveState", "SubState"]).is_ok_and(|p| {
        let get = |k: &str| p.get(k).map(String::as_str).unwrap_or_default();
        is_running_state(get("ActiveState"), get("SubState"))
    })
}

/// The unit's state as `systemctl is-active` prints it (`active`, `activating`,
/// `failed`, …), or `unknown (why)`.
pub fn active_state(unit: &str) -> String {
    Command::new("systemctl")
        .args(["is-active", unit])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// `unit=state` for each unit, for progress lines.
pub fn unit_states(units: &[&str]) -> String {
    units
        .iter()
        .map(|u| format!("{u}={}", active_state(u)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Properties of a unit (`systemctl show -p P …`), by name; a property systemd does not
/// print is absent.
pub fn show(unit: &str, properties: &[&str]) -> Result<BTreeMap<String, String>, SystemdError> {
    let mut args = vec!["show"];
    for p in properties {
        args.extend(["-p", p]);
    }
    args.push(unit);
    Ok(parse_show(&systemctl(&args)?))
}

/// `KEY=value` lines of `systemctl show`.
pub fn parse_show(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The units among `units` that `firstboot.service` is ordered `Before=`, when it is
/// starting right now (pure: from `systemctl show` output).
pub fn ordered_after_firstboot<'u>(
    active_state: &str,
    before: &str,
    units: &[&'u str],
) -> Vec<&'u str> {
    if active_state.trim() != "activating" {
        return Vec::new();
    }
    let before: Vec<&str> = before.split_whitespace().collect();
    units
        .iter()
        .copied()
        .filter(|u| before.contains(u))
        .collect()
}

/// Fail when starting `units` from a starting `firstboot.service` would deadlock (see the
/// module documentation). When systemd cannot be asked, nothing is known to block.
pub fn check_start_order(units: &[&str]) -> Result<(), SystemdError> {
    let Ok(props) = show(FIRSTBOOT_UNIT, &["ActiveState", "Before"]) else {
        return Ok(());
    };
    let field = |k: &str| props.get(k).map(String::as_str).unwrap_or_default();
    let blocked = ordered_after_firstboot(field("ActiveState"), field("Before"), units);
    if !blocked.is_empty() {
        return Err(SystemdError::StartOrder(blocked.join(" ")));
    }
    Ok(())
}

/// Reload units, then enable and start them without waiting for their start jobs (the
/// caller waits for what matters with a deadline and says what it waits for).
pub fn enable_now(units: &[&str]) -> Result<(), SystemdError> {
    check_start_order(units)?;
    daemon_reload()?;
    systemctl(&with(&["enable", "--now", "--no-block"], units)).map(drop)
}

fn with<'a>(head: &[&'a str], units: &[&'a str]) -> Vec<&'a str> {
    let mut v = head.to_vec();
    v.extend_from_slice(units);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_units_run_and_restart_waits_do_not() {
        assert!(is_running_state("active", "running"));
        assert!(is_running_state("activating", "start"));
        assert!(!is_running_state("activating", "auto-restart"));
        assert!(!is_running_state("failed", "failed"));
        assert!(!is_running_state("inactive", "dead"));
        assert!(!is_running_state("", ""));
    }

    #[test]
    fn start_order_deadlock_is_detected_only_while_firstboot_starts() {
        let before = "kubelet.service etcd.service multi-user.target";
        let units = ["kubelet.service", "kube-proxy.service"];
        assert_eq!(
            ordered_after_firstboot("activating", before, &units),
            ["kubelet.service"]
        );
        assert!(ordered_after_firstboot("inactive", before, &units).is_empty());
        assert!(ordered_after_firstboot("activating", "multi-user.target", &units).is_empty());
    }

    #[test]
    fn show_output_is_read_by_key() {
        let p = parse_show("ActiveState=activating\nBefore=a.service b.target\nEmpty=\n");
        assert_eq!(p["ActiveState"], "activating");
        assert_eq!(p["Before"], "a.service b.target");
        assert_eq!(p["Empty"], "");
    }

    #[test]
    fn the_deadlock_message_names_the_unit_and_the_fix() {
        assert_eq!(
            SystemdError::StartOrder("kubelet.service".into()).to_string(),
            "firstboot.service is ordered Before=kubelet.service, so starting kubelet.service \
             from firstboot would wait for firstboot itself: remove kubelet.service from \
             Before= in firstboot.service"
        );
    }
}
