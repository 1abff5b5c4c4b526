//! The join protocol: a new cluster on the bootstrap master, resuming from data, or
//! adding this member through a running member and starting it (see the module
//! documentation of [`super`]).

use std::time::Duration;

use nodeimage_core::retry::{wait_until, Backoff, Deadline, Poll};

use super::{etcd_env, ClusterState, EtcdApi, EtcdEnv, EtcdError, EtcdMemberSpec, Member};

/// `name=peerURL,...` for `initial-cluster`: every member of the list, this one under its
/// own name. Unstarted members have no name yet; they get a placeholder (etcd matches
/// the other members by peer URL, not by name, when it joins an existing cluster).
pub fn initial_cluster(members: &[Member], self_name: &str, self_peer_url: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for m in members {
        let is_self = m.peer_urls.iter().any(|u| u == self_peer_url);
        let name = if is_self {
            self_name.to_string()
        } else if m.name.is_empty() {
            format!("unstarted-{:x}", m.id)
        } else {
            m.name.clone()
        };
        for u in &m.peer_urls {
            parts.push(format!("{name}={u}"));
        }
    }
    if !members
        .iter()
        .any(|m| m.peer_urls.iter().any(|u| u == self_peer_url))
    {
        parts.push(format!("{self_name}={self_peer_url}"));
    }
    parts.sort();
    parts.join(",")
}

/// What a joining master does next, given the member list an existing member returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinAction {
    /// Not a member: add this member.
    Add,
    /// Already a member (added, never started, or data intact): start with this
    /// initial-cluster and state `existing`.
    Start { initial_cluster: String },
    /// Listed as a started member (or under its name with another peer URL) but its data
    /// is gone: remove that member, then add again.
    Remove { id: u64 },
}

/// Decide the next join step. Pure.
pub fn plan_join(name: &str, peer_url: &str, members: &[Member], has_data: bool) -> JoinAction {
    if let Some(m) = members
        .iter()
        .find(|m| m.peer_urls.iter().any(|u| u == peer_url))
    {
        if m.is_started() && !has_data {
            return JoinAction::Remove { id: m.id };
        }
        return JoinAction::Start {
            initial_cluster: initial_cluster(members, name, peer_url),
        };
    }
    if let Some(m) = members.iter().find(|m| m.name == name) {
        // Same name, different peer URL: this node's address changed.
        return JoinAction::Remove { id: m.id };
    }
    JoinAction::Add
}

/// Starts and checks the local etcd.
pub trait EtcdService {
    /// Write `env` where etcd reads it and (re)start etcd.
    fn start(&self, env: &EtcdEnv) -> Result<(), EtcdError>;
    fn is_running(&self) -> bool;
}

/// Timing of the join protocol.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// Give up after this long.
    pub deadline: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a started etcd may take to report healthy before the join looks again.
    pub health_timeout: Duration,
}

impl Default for JoinOptions {
    fn default() -> Self {
        JoinOptions {
            deadline: Duration::from_secs(30 * 60),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(15),
            health_timeout: Duration::from_secs(60),
        }
    }
}

/// How this member came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// etcd was already running and healthy.
    AlreadyRunning,
    /// The data directory held a member: etcd was started and resumed from it.
    Resumed,
    /// The bootstrap master started a new one-member cluster.
    NewCluster,
    /// Added to the cluster and started.
    Joined { initial_cluster: String },
    /// Already a member that had never started (crashed mid-join): started.
    StartedUnstarted { initial_cluster: String },
    /// Listed with its data gone: removed, added again and started.
    Rejoined {
        removed: u64,
        initial_cluster: String,
    },
}

/// Bring this master's etcd member up: start a new cluster (bootstrap master), resume
/// from data, or join the running cluster. Idempotent; safe to run again after a crash.
pub fn join_cluster(
    spec: &EtcdMemberSpec,
    api: &dyn EtcdApi,
    svc: &dyn EtcdService,
    opts: &JoinOptions,
) -> Result<JoinOutcome, EtcdError> {
    let deadline = Deadline::after(opts.deadline);
    let own = spec.client_url();
    if svc.is_running() && api.healthy(&own) {
        tracing::info!(member = %spec.name, "etcd already running and healthy");
        return Ok(JoinOutcome::AlreadyRunning);
    }
    if spec.has_data() {
        tracing::info!(member = %spec.name, data_dir = %spec.data_dir.display(), "etcd data present: resuming");
        // etcd ignores the initial-cluster settings when its data directory has a member.
        let env = etcd_env(
            spec,
            &format!("{}={}", spec.name, spec.peer_url()),
            ClusterState::Existing,
        );
        svc.start(&env)?;
        wait_healthy(spec, api, svc, &deadline)?;
        return Ok(JoinOutcome::Resumed);
    }
    let others = spec.other_endpoints();
    if spec.bootstrap {
        match bootstrap_decision(spec, api, opts, &deadline, &others)? {
            BootstrapDecision::New => {
                let ic = format!("{}={}", spec.name, spec.peer_url());
                tracing::info!(member = %spec.name, initial_cluster = %ic, "bootstrap master: starting a new etcd cluster");
                svc.start(&etcd_env(spec, &ic, ClusterState::New))?;
                wait_healthy(spec, api, svc, &deadline)?;
                return Ok(JoinOutcome::NewCluster);
            }
            BootstrapDecision::Rejoin(ep) => {
                tracing::info!(member = %spec.name, endpoint = %ep, "bootstrap master without data: a cluster is running, rejoining it");
            }
        }
    }
    if others.is_empty() {
        return Err(EtcdError::Config(format!(
            "{} is not the bootstrap master and no other master is known: nothing to join",
            spec.name
        )));
    }

    let mut join = Join {
        spec,
        api,
        svc,
        opts,
        deadline,
        others,
        removed: None,
        last: String::from("no member answered yet"),
    };
    let mut backoff = Backoff::new(opts.initial_backoff, opts.max_backoff);
    match wait_until(&deadline, &mut backoff, |attempt| join.attempt(attempt)) {
        Ok(outcome) => outcome,
        Err(t) => Err(EtcdError::Deadline {
            waited: deadline.elapsed(),
            doing: format!("joining etcd as {}", spec.name),
            last: t.last,
        }),
    }
}

/// What a bootstrap master without etcd data does.
enum BootstrapDecision {
    /// No other master runs etcd: form the cluster.
    New,
    /// A member at this endpoint answered: the cluster exists, this master was re-imaged.
    Rejoin(String),
}

/// A bootstrap master without data forms a new cluster only when every other master
/// is known to run no etcd: it answers, and its etcd port refuses the connection (the
/// first formation, where the others wait to join it). A member that answers means a
/// running cluster, which it rejoins. An unreachable master (timeout, no route, its
/// closed firewall before its first boot loads the real one) may be a running member
/// behind a partition: starting a second, empty cluster behind the same API endpoint
/// would be split brain, so it waits, and past the deadline it fails naming them.
fn bootstrap_decision(
    spec: &EtcdMemberSpec,
    api: &dyn EtcdApi,
    opts: &JoinOptions,
    deadline: &Deadline,
    others: &[String],
) -> Result<BootstrapDecision, EtcdError> {
    let mut backoff = Backoff::new(opts.initial_backoff, opts.max_backoff);
    let decided = wait_until(deadline, &mut backoff, |attempt| {
        let mut unknown = Vec::new();
        for ep in others {
            match api.member_list(ep) {
                Ok(_) => return Poll::Ready(BootstrapDecision::Rejoin(ep.clone())),
                Err(e) if e.is_refused() => {}
                Err(e) => unknown.push(format!("{ep}: {e}")),
            }
        }
        if unknown.is_empty() {
            return Poll::Ready(BootstrapDecision::New);
        }
        tracing::info!(member = %spec.name, attempt, unknown = %unknown.join("; "), "bootstrap master without data: waiting until every other master is reachable (a new cluster only when none runs etcd)");
        Poll::Pending(unknown.join("; "))
    });
    decided.map_err(|t| EtcdError::Deadline {
        waited: deadline.elapsed(),
        doing: format!(
            "deciding whether {} forms a new etcd cluster: a bootstrap master without data starts one only when every other master is up without etcd, and these did not answer (bring them up, or fix the network; a re-imaged bootstrap master rejoins a running cluster)",
            spec.name
        ),
        last: t.last,
    })
}

/// The state of a join between its attempts.
struct Join<'a> {
    spec: &'a EtcdMemberSpec,
    api: &'a dyn EtcdApi,
    svc: &'a dyn EtcdService,
    opts: &'a JoinOptions,
    deadline: Deadline,
    others: Vec<String>,
    /// This node's stale member, once removed.
    removed: Option<u64>,
    /// Why the last attempt did not finish.
    last: String,
}

/// What one join attempt yields: done (or failed for good), or retry with why not yet.
type Attempt = Poll<Result<JoinOutcome, EtcdError>, String>;

impl Join<'_> {
    /// Ask a member for the list and take the step [`plan_join`] calls for. A refused
    /// step backs off; a step that changed the cluster looks again at once.
    fn attempt(&mut self, attempt: u32) -> Attempt {
        let spec = self.spec;
        let mut answered = None;
        for ep in &self.others {
            match self.api.member_list(ep) {
                Ok(m) => {
                    answered = Some((ep.clone(), m));
                    break;
                }
                Err(e) => self.last = e.to_string(),
            }
        }
        let Some((ep, members)) = answered else {
            tracing::info!(member = %spec.name, attempt, waited_s = self.deadline.elapsed().as_secs(), last_error = %self.last, "waiting for an etcd member to answer");
            return self.pending();
        };
        let action = plan_join(&spec.name, &spec.peer_url(), &members, spec.has_data());
        tracing::info!(member = %spec.name, endpoint = %ep, members = members.len(), action = ?action_name(&action), "etcd member list");
        match action {
            JoinAction::Remove { id } => {
                tracing::info!(member = %spec.name, id = format!("{id:x}"), "removing this node's stale etcd member (data lost)");
                match self.api.member_remove(&ep, id) {
                    Ok(()) => {
                        self.removed = Some(id);
                        self.again()
                    }
                    Err(e) => {
                        tracing::info!(member = %spec.name, error = %e, "member remove refused; retrying");
                        self.last = e.to_string();
                        self.pending()
                    }
                }
            }
            JoinAction::Start { initial_cluster } => {
                tracing::info!(member = %spec.name, "already a member that never started: starting");
                self.start(initial_cluster, false)
            }
            JoinAction::Add => match self.api.member_add(&ep, &[spec.peer_url()]) {
                Ok(after) => {
                    let ic = initial_cluster(&after, &spec.name, &spec.peer_url());
                    tracing::info!(member = %spec.name, initial_cluster = %ic, "added to the etcd cluster: starting");
                    // If etcd exits or stays unhealthy (e.g. the member list changed under a
                    // concurrent add), the next attempt finds this member listed and starts
                    // it with the current list.
                    self.start(ic, true)
                }
                Err(e) => {
                    tracing::info!(member = %spec.name, attempt, error = %e, "member add refused (another member is joining?); backing off");
                    self.last = e.to_string();
                    self.pending()
                }
            },
        }
    }

    /// Start etcd as a member of the existing cluster and wait for it to be healthy.
    fn start(&mut self, initial_cluster: String, added: bool) -> Attempt {
        let spec = self.spec;
        if let Err(e) = self
            .svc
            .start(&etcd_env(spec, &initial_cluster, ClusterState::Existing))
        {
            return Poll::Ready(Err(e));
        }
        if !wait_healthy_for(
            spec,
            self.api,
            self.svc,
            &self.deadline,
            self.opts.health_timeout,
        ) {
            self.last = "started etcd did not become healthy".into();
            return self.again();
        }
        tracing::info!(member = %spec.name, elapsed_ms = self.deadline.elapsed().as_millis() as u64, "etcd member healthy");
        Poll::Ready(Ok(match (self.removed, added) {
            (Some(removed), _) => JoinOutcome::Rejoined {
                removed,
                initial_cluster,
            },
            (None, true) => JoinOutcome::Joined { initial_cluster },
            (None, false) => JoinOutcome::StartedUnstarted { initial_cluster },
        }))
    }

    fn pending(&self) -> Attempt {
        Poll::Pending(self.last.clone())
    }

    fn again(&self) -> Attempt {
        Poll::Again(self.last.clone())
    }
}

fn action_name(a: &JoinAction) -> &'static str {
    match a {
        JoinAction::Add => "add",
        JoinAction::Start { .. } => "start",
        JoinAction::Remove { .. } => "remove",
    }
}

/// Wait until the member just started is healthy, up to the deadline.
fn wait_healthy(
    spec: &EtcdMemberSpec,
    api: &dyn EtcdApi,
    svc: &dyn EtcdService,
    deadline: &Deadline,
) -> Result<(), EtcdError> {
    if wait_healthy_for(spec, api, svc, deadline, deadline.remaining()) {
        tracing::info!(member = %spec.name, elapsed_ms = deadline.elapsed().as_millis() as u64, "etcd member healthy");
        Ok(())
    } else {
        Err(EtcdError::Deadline {
            waited: deadline.elapsed(),
            doing: format!("waiting for etcd member {} to become healthy", spec.name),
            last: if svc.is_running() {
                "not healthy".into()
            } else {
                "etcd is not running".into()
            },
        })
    }
}

/// Poll the member's own /health every 200 ms. False when etcd exited or `limit` (or
/// the deadline) passed.
fn wait_healthy_for(
    spec: &EtcdMemberSpec,
    api: &dyn EtcdApi,
    svc: &dyn EtcdService,
    deadline: &Deadline,
    limit: Duration,
) -> bool {
    let own = spec.client_url();
    let mut exited_checks = 0;
    let polled = wait_until(
        &deadline.within(limit),
        &mut Backoff::constant(Duration::from_millis(200)),
        |_| {
            if api.healthy(&own) {
                return Poll::Ready(true);
            }
            if !svc.is_running() {
                exited_checks += 1;
                // systemd may be restarting it; a child process that exited stays exited.
                if exited_checks >= 3 {
                    tracing::info!(member = %spec.name, "etcd is not running");
                    return Poll::Ready(false);
                }
            } else {
                exited_checks = 0;
            }
            Poll::Pending(())
        },
    );
    polled.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, name: &str, peer: &str) -> Member {
        Member {
            id,
            name: name.into(),
            peer_urls: vec![peer.into()],
            client_urls: vec![],
            is_learner: false,
        }
    }

    #[test]
    fn plans() {
        let me = "https://10.0.0.3:2380";
        let list = vec![
            m(1, "m1", "https://10.0.0.1:2380"),
            m(2, "", "https://10.0.0.2:2380"),
        ];
        assert_eq!(plan_join("m3", me, &list, false), JoinAction::Add);
        let mut with_me = list.clone();
        with_me.push(m(3, "", me));
        assert_eq!(
            plan_join("m3", me, &with_me, false),
            JoinAction::Start {
                initial_cluster: "m1=https://10.0.0.1:2380,m3=https://10.0.0.3:2380,unstarted-2=https://10.0.0.2:2380".into()
            }
        );
        let mut started = list.clone();
        started.push(m(3, "m3", me));
        assert_eq!(
            plan_join("m3", me, &started, false),
            JoinAction::Remove { id: 3 }
        );
        let moved = vec![
            m(1, "m1", "https://10.0.0.1:2380"),
            m(9, "m3", "https://10.0.0.9:2380"),
        ];
        assert_eq!(
            plan_join("m3", me, &moved, false),
            JoinAction::Remove { id: 9 }
        );
    }
}
