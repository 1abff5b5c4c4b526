//! Stacked etcd: how the masters assemble one etcd cluster without a coordinator.
//!
//! Exactly one master (the bootstrap master: marked in its node config, else the first
//! master of cluster.yml) starts a *new* cluster. Every other master waits until an
//! existing member answers, adds itself through etcd's v3 API (the JSON gRPC gateway
//! over client TLS: `/v3/cluster/member/{list,add,remove}`), then starts etcd with
//! `initial-cluster-state=existing` and the member list the add returned.
//!
//! * Concurrent joins serialise themselves: etcd refuses a member add while the cluster
//!   has an unstarted member it would need for quorum ("not enough started members") or
//!   a member not yet connected long enough; the refused master backs off and retries.
//! * A master that crashed mid-join (already a member, never started) starts with the
//!   current member list.
//! * A master whose data directory is gone but which is still listed as a started
//!   member is removed and added again.
//! * A bootstrap master whose data is gone finds the running cluster (another member
//!   answers) and rejoins it the same way instead of starting a second cluster.
//!
//! Starting etcd is behind [`EtcdService`]: systemd on the node ([`SystemdEtcd`]), a child
//! process in tests. Talking to etcd is behind [`EtcdApi`] ([`HttpEtcdClient`]).

mod client;
mod join;
mod spec;
mod systemd;

pub use client::{EtcdApi, HttpEtcdClient, Member};
pub use join::{
    initial_cluster, join_cluster, plan_join, EtcdService, JoinAction, JoinOptions, JoinOutcome,
};
pub use spec::{etcd_env, etcd_unit, ClusterState, EtcdEnv, EtcdMemberSpec, EtcdTls};
pub use systemd::SystemdEtcd;

use std::time::Duration;

use crate::net::TlsError;
use nodeimage_core::errors::chain as error_chain;
use nodeimage_core::ports::PortsError;

/// etcd client port as the port table has it (for tests and tools; a node takes its
/// ports and listeners from [`nodeimage_core::ports::PortPolicy`], and a test keeps the two equal).
pub const CLIENT_PORT: u16 = 2379;
/// etcd peer port as the port table has it (see [`CLIENT_PORT`]).
pub const PEER_PORT: u16 = 2380;
/// etcd metrics/health listener, plain HTTP on loopback. Not a row of the port table:
/// nothing outside the node uses it, and the firewall drops every port it does not list.
pub const LOCAL_METRICS_URL: &str = "http://127.0.0.1:2381";
/// Where the etcd environment file lives on the node.
pub const ENV_FILE: &str = "/etc/etcd/etcd.env";
pub const UNIT_NAME: &str = "etcd.service";
pub const UNIT_PATH: &str = "/etc/systemd/system/etcd.service";
pub const DATA_DIR: &str = "/var/lib/etcd";

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// Nothing listens on the member's etcd port (for [`EtcdApi`] implementations that
    /// are not HTTP clients; the HTTP client reports [`EtcdError::Request`]).
    #[error("etcd API {endpoint}: connection refused")]
    Refused { endpoint: String },
    /// etcd's JSON gateway could not be reached, or the answer could not be read.
    #[error("etcd API {endpoint}: {}", error_chain(.source))]
    Request {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    /// The gateway refused the call (e.g. a member add while another member joins).
    #[error("etcd API {endpoint}: {status}: {message}")]
    Status {
        endpoint: String,
        status: reqwest::StatusCode,
        message: String,
    },
    #[error("etcd API {endpoint}: unexpected response ({source}): {body}")]
    Response {
        endpoint: String,
        #[source]
        source: serde_json::Error,
        body: String,
    },
    /// Writing etcd's files or (re)starting it failed.
    #[error("starting etcd: {0}")]
    Service(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("timed out after {waited:?} {doing}; last error: {last}")]
    Deadline {
        waited: Duration,
        doing: String,
        last: String,
    },
    /// The client's certificates could not be read or used.
    #[error("{}: {source}", path.display())]
    ReadTls {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd client TLS: {}", error_chain(.0))]
    Tls(#[source] TlsError),
    #[error(transparent)]
    Ports(#[from] PortsError),
    #[error("{0}")]
    Config(String),
}

impl EtcdError {
    /// The member's host answered and refused the connection: nothing listens on its
    /// etcd port (as opposed to a timeout or no route, which say nothing).
    pub fn is_refused(&self) -> bool {
        match self {
            EtcdError::Request { source, .. } => {
                let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(source);
                while let Some(e) = cur {
                    if let Some(io) = e.downcast_ref::<std::io::Error>() {
                        if io.kind() == std::io::ErrorKind::ConnectionRefused {
                            return true;
                        }
                    }
                    cur = e.source();
                }
                false
            }
            EtcdError::Refused { .. } => true,
            _ => false,
        }
    }
}
