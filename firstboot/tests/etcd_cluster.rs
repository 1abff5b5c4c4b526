//! A real three-master etcd cluster formed by firstboot's etcd step.
//!
//! Each master is a network namespace (10.97.0.11-13/24 on a bridge that lives in a
//! fourth namespace; nothing is added to the host's own network) running Debian's
//! `/usr/bin/etcd` with certificates minted by `firstboot::pki`. The join protocol runs
//! in a thread that entered the master's namespace, so its HTTPS calls leave from that
//! master's address, as on a node.
//!
//! Checks: the bootstrap master and two joiners started at the same moment form a
//! healthy three-member cluster (`etcdctl endpoint health` / `member list`); a member
//! killed with its data wiped rejoins (removed and added again); a member added but
//! never started (crash mid-join) starts; the bootstrap master losing its data while cut
//! off from its peers refuses to form a new cluster, and rejoins once reconnected.
//!
//! Needs root and etcd-server + etcd-client; skipped with a message otherwise.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use firstboot::etcd::{
    join_cluster, EtcdApi, EtcdEnv, EtcdError, EtcdMemberSpec, EtcdService, EtcdTls,
    HttpEtcdClient, JoinOptions, JoinOutcome, CLIENT_PORT, PEER_PORT,
};
use firstboot::pki::{self, CaPair, MasterIdentity, MasterSecrets, ServiceAccountKey};

const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";

/// Root (network namespaces), Debian's etcd and etcdctl, `ip`.
fn environment_ready() -> bool {
    test_support::Needs::new("etcd_cluster")
        .root()
        .tool("etcd", "etcd-server")
        .tool("etcdctl", "etcd-client")
        .file(ETCD, "etcd-server")
        .file(ETCDCTL, "etcd-client")
        .tool("ip", "iproute2")
        .met()
}

fn sh(args: &[&str]) {
    test_support::cmd::stdout_ok(&format!("{args:?}"), Command::new(args[0]).args(&args[1..]));
}

/// Namespaces, bridge and addresses; removed on drop.
struct Net {
    hub: String,
    members: Vec<String>,
}

impl Net {
    fn new(n: usize) -> Net {
        let tag = format!("nie{}", std::process::id() % 100000);
        let hub = format!("{tag}h");
        let members: Vec<String> = (1..=n).map(|i| format!("{tag}m{i}")).collect();
        let net = Net {
            hub: hub.clone(),
            members: members.clone(),
        };
        sh(&["ip", "netns", "add", &hub]);
        sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
        for (i, ns) in members.iter().enumerate() {
            sh(&["ip", "netns", "add", ns]);
            let port = format!("p{}", i + 1);
            sh(&[
                "ip", "link", "add", "name", &port, "netns", &hub, "type", "veth", "peer", "name",
                "eth0", "netns", ns,
            ]);
            sh(&[
                "ip", "-n", &hub, "link", "set", &port, "master", "br0", "up",
            ]);
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", addr(i)),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.members.iter().chain(std::iter::once(&self.hub)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn addr(i: usize) -> String {
    format!("10.97.0.{}", 11 + i)
}

/// etcd as a child process inside a namespace (the node uses systemd instead).
struct ChildEtcd {
    netns: String,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

impl ChildEtcd {
    fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl EtcdService for ChildEtcd {
    fn start(&self, env: &EtcdEnv) -> Result<(), EtcdError> {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| EtcdError::Service(e.into()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, ETCD])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &env.vars {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| EtcdError::Service(e.into()))?;
        *self.child.lock().unwrap() = Some(child);
        Ok(())
    }

    fn is_running(&self) -> bool {
        match self.child.lock().unwrap().as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for ChildEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Master {
    spec: EtcdMemberSpec,
    svc: ChildEtcd,
    netns: String,
    tls: EtcdTls,
}

/// Enter a network namespace for the rest of this thread's life.
fn enter_netns(ns: &str) {
    let f = File::open(format!("/var/run/netns/{ns}")).expect("netns handle");
    // SAFETY: valid fd of a network namespace; affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

fn opts() -> JoinOptions {
    JoinOptions {
        deadline: Duration::from_secs(45),
        initial_backoff: Duration::from_millis(300),
        max_backoff: Duration::from_secs(2),
        health_timeout: Duration::from_secs(15),
    }
}

/// Run the etcd step for one master in its namespace.
fn run_step(m: &Master) -> Result<JoinOutcome, EtcdError> {
    enter_netns(&m.netns);
    let api = HttpEtcdClient::from_tls(&m.tls, Duration::from_secs(3))?;
    join_cluster(&m.spec, &api, &m.svc, &opts())
}

fn etcdctl(m: &Master, endpoints: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &m.netns, ETCDCTL])
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg(format!("--cacert={}", m.tls.ca.display()))
        .arg(format!("--cert={}", m.tls.client_cert.display()))
        .arg(format!("--key={}", m.tls.client_key.display()))
        .arg("--dial-timeout=3s")
        .args(args);
    c
}

fn all_endpoints() -> String {
    (0..3)
        .map(|i| format!("https://{}:{CLIENT_PORT}", addr(i)))
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(serde::Deserialize)]
struct MemberListJson {
    members: Vec<MemberJson>,
}

#[derive(serde::Deserialize)]
struct MemberJson {
    #[serde(rename = "ID")]
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(rename = "clientURLs", default)]
    client_urls: Vec<String>,
}

/// Three healthy, started members named m1..m3.
fn assert_three_healthy(m: &Master) -> Vec<(String, u64)> {
    let text =
        test_support::cmd::run_ok(&mut etcdctl(m, &all_endpoints(), &["endpoint", "health"]));
    assert_eq!(text.matches("is healthy").count(), 3, "{text}");
    let list = test_support::cmd::stdout_ok(
        "etcdctl member list",
        &mut etcdctl(m, &all_endpoints(), &["member", "list", "-w", "json"]),
    );
    let list: MemberListJson = serde_json::from_slice(&list).unwrap();
    let mut v: Vec<(String, u64)> = list
        .members
        .iter()
        .map(|mm| {
            assert!(
                !mm.name.is_empty() && !mm.client_urls.is_empty(),
                "member {:x} not started",
                mm.id
            );
            (mm.name.clone(), mm.id)
        })
        .collect();
    v.sort();
    assert_eq!(
        v.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
        ["m1", "m2", "m3"]
    );
    v
}

fn id_of(ids: &[(String, u64)], name: &str) -> u64 {
    ids.iter().find(|x| x.0 == name).unwrap().1
}

fn wipe(m: &Master) {
    m.svc.kill();
    std::fs::remove_dir_all(&m.spec.data_dir).unwrap();
}

#[test]
fn three_masters_form_and_repair_an_etcd_cluster() {
    if !environment_ready() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    let work = tempfile::tempdir().unwrap();
    let net = Net::new(3);
    let now = time::OffsetDateTime::now_utc();
    let secrets = MasterSecrets {
        ca: CaPair::generate("kubernetes", now).unwrap(),
        front_proxy_ca: CaPair::generate("front-proxy-ca", now).unwrap(),
        etcd_ca: Some(CaPair::generate("etcd-ca", now).unwrap()),
        service_account: ServiceAccountKey::generate().unwrap(),
    };
    let masters_addrs: Vec<String> = (0..3).map(addr).collect();
    let masters: Vec<Arc<Master>> = (0..3)
        .map(|i| {
            let name = format!("m{}", i + 1);
            let root = work.path().join(&name);
            let id = MasterIdentity {
                cluster_name: "etcdtest".into(),
                hostname: name.clone(),
                addresses: vec![addr(i)],
                masters: masters_addrs.clone(),
                api_endpoint: addr(0),
                service_cidr: "10.96.0.0/12".parse().unwrap(),
                dns_domain: "cluster.local".into(),
                stacked_etcd: true,
                bootstrap: i == 0,
            };
            pki::ensure_master_pki(&root, &id, &secrets, now).unwrap();
            let tls = EtcdTls::under(&root);
            let spec = EtcdMemberSpec {
                name: name.clone(),
                address: addr(i),
                masters: masters_addrs.clone(),
                bootstrap: i == 0,
                data_dir: root.join("var/lib/etcd"),
                cluster_token: "etcdtest".into(),
                tls: tls.clone(),
                client_port: CLIENT_PORT,
                peer_port: PEER_PORT,
                listen_client_urls: vec![
                    format!("https://{}:{CLIENT_PORT}", addr(i)),
                    format!("https://127.0.0.1:{CLIENT_PORT}"),
                ],
                listen_peer_urls: vec![format!("https://{}:{PEER_PORT}", addr(i))],
                extra_env: Default::default(),
            };
            let svc = ChildEtcd {
                netns: net.members[i].clone(),
                log: work.path().join(format!("{name}.log")),
                child: Mutex::new(None),
            };
            Arc::new(Master {
                spec,
                svc,
                netns: net.members[i].clone(),
                tls,
            })
        })
        .collect();

    let dump_logs = || {
        for i in 1..=3 {
            let p = work.path().join(format!("m{i}.log"));
            let t = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<_> = t
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            eprintln!("--- m{i} etcd log (tail) ---\n{}", tail.join("\n"));
        }
    };

    // 1. All three at the same moment: m1 bootstraps, m2 and m3 join concurrently.
    let t0 = Instant::now();
    let barrier = Arc::new(Barrier::new(3));
    let handles: Vec<_> = masters
        .iter()
        .map(|m| {
            let (m, b) = (m.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                let r = run_step(&m);
                (r, t0.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (i, (r, t)) in results.iter().enumerate() {
        if r.is_err() {
            dump_logs();
        }
        eprintln!("m{}: {:?} after {:.2}s", i + 1, r, t.as_secs_f64());
    }
    assert_eq!(results[0].0.as_ref().unwrap(), &JoinOutcome::NewCluster);
    for (r, _) in &results[1..] {
        assert!(
            matches!(
                r.as_ref().unwrap(),
                JoinOutcome::Joined { .. } | JoinOutcome::StartedUnstarted { .. }
            ),
            "{r:?}"
        );
    }
    let ids = assert_three_healthy(&masters[0]);
    let formed = t0.elapsed();
    eprintln!(
        "TIMING: 3-member etcd cluster formed and healthy in {:.2}s",
        formed.as_secs_f64()
    );

    // 2. Running again is a no-op.
    let r = std::thread::scope(|s| s.spawn(|| run_step(&masters[1])).join().unwrap()).unwrap();
    assert_eq!(r, JoinOutcome::AlreadyRunning);

    // 3. m3 dies and loses its data: removed, added again, started.
    wipe(&masters[2]);
    let t = Instant::now();
    let r = std::thread::scope(|s| s.spawn(|| run_step(&masters[2])).join().unwrap());
    let r = r.unwrap_or_else(|e| {
        dump_logs();
        panic!("{e}")
    });
    assert!(
        matches!(r, JoinOutcome::Rejoined { removed, .. } if removed == id_of(&ids, "m3")),
        "{r:?}"
    );
    let ids2 = assert_three_healthy(&masters[0]);
    assert_ne!(id_of(&ids2, "m3"), id_of(&ids, "m3"), "m3 is a new member");
    eprintln!(
        "TIMING: m3 rejoined after data loss in {:.2}s",
        t.elapsed().as_secs_f64()
    );

    // 4. m2 crashed mid-join: removed, added, never started. The step starts it.
    wipe(&masters[1]);
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(&masters[0].netns);
            let api = HttpEtcdClient::from_tls(&masters[0].tls, Duration::from_secs(3)).unwrap();
            let ep = masters[0].spec.client_url();
            let id = id_of(&ids2, "m2");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match api.member_remove(&ep, id) {
                    Ok(()) => break,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("remove m2: {e}; retrying");
                        std::thread::sleep(Duration::from_millis(500))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            loop {
                match api.member_add(&ep, &[masters[1].spec.peer_url()]) {
                    Ok(_) => break,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("add m2: {e}; retrying");
                        std::thread::sleep(Duration::from_millis(500))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .join()
        .unwrap()
    });
    let r = std::thread::scope(|s| s.spawn(|| run_step(&masters[1])).join().unwrap()).unwrap();
    assert!(matches!(r, JoinOutcome::StartedUnstarted { .. }), "{r:?}");
    assert_three_healthy(&masters[0]);

    // 5. The bootstrap master loses its data while cut off from its peers (its bridge
    // port down: no route to them, nothing refuses): it must not start a second, empty
    // cluster, and says so by its deadline.
    wipe(&masters[0]);
    sh(&["ip", "-n", &net.hub, "link", "set", "p1", "down"]);
    let t = Instant::now();
    let cut_off = std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(&masters[0].netns);
            let api = HttpEtcdClient::from_tls(&masters[0].tls, Duration::from_secs(3)).unwrap();
            let short = JoinOptions {
                deadline: Duration::from_secs(15),
                ..opts()
            };
            join_cluster(&masters[0].spec, &api, &masters[0].svc, &short)
        })
        .join()
        .unwrap()
    });
    let e = match cut_off {
        Ok(r) => panic!("a bootstrap master cut off from its peers came up: {r:?}"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("forms a new etcd cluster") && e.contains(&addr(1)),
        "{e}"
    );
    assert!(
        !masters[0].spec.has_data(),
        "etcd must not have started a new member"
    );
    eprintln!(
        "TIMING: cut-off bootstrap master refused to form a cluster after {:.1}s: {e}",
        t.elapsed().as_secs_f64()
    );
    sh(&["ip", "-n", &net.hub, "link", "set", "p1", "up"]);

    // Reconnected, it rejoins the running cluster.
    let r = std::thread::scope(|s| s.spawn(|| run_step(&masters[0])).join().unwrap());
    let r = r.unwrap_or_else(|e| {
        dump_logs();
        panic!("{e}")
    });
    assert!(matches!(r, JoinOutcome::Rejoined { .. }), "{r:?}");
    assert_three_healthy(&masters[1]);
    eprintln!(
        "TIMING: whole etcd scenario {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    drop(masters);
    drop(net);
}
