//! Certificate renewal on masters (`firstboot renew-certs`, run daily by a timer):
//! short-lived certificates minted by the pki code, then renewed from the identity
//! the master recorded and the CAs it keeps, at times before and inside the window.

use std::path::Path;

use ::time::{Duration, OffsetDateTime};
use firstboot::pki::{self, CaPair, MasterIdentity, MasterSecrets, Outcome, ServiceAccountKey};
use firstboot::renew;
use nodeimage_core::files::rooted;
use nodeimage_core::layout::paths;
use x509_parser::prelude::parse_x509_pem;

fn identity() -> MasterIdentity {
    MasterIdentity {
        cluster_name: "demo".into(),
        hostname: "master-1".into(),
        addresses: vec!["10.0.0.11".into()],
        masters: vec!["10.0.0.11".into()],
        api_endpoint: "10.0.0.11:6443".into(),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        dns_domain: "cluster.local".into(),
        stacked_etcd: true,
        bootstrap: true,
    }
}

fn not_after(root: &Path, p: &str) -> OffsetDateTime {
    let text = std::fs::read(rooted(root, p)).unwrap();
    let (_, pem) = parse_x509_pem(&text).unwrap();
    pem.parse_x509().unwrap().validity().not_after.to_datetime()
}

#[test]
fn renewal_window_is_thirty_days_or_the_last_third() {
    let t = OffsetDateTime::UNIX_EPOCH;
    assert_eq!(
        nodeimage_core::pki::renew_window(t, t + Duration::days(365)),
        Duration::days(30)
    );
    assert_eq!(
        nodeimage_core::pki::renew_window(t, t + Duration::hours(1)),
        Duration::minutes(20)
    );
}

#[test]
fn short_lived_master_certificates_are_renewed_in_their_window_only() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let t0 = OffsetDateTime::now_utc();
    let secrets = MasterSecrets {
        ca: CaPair::generate("kubernetes", t0).unwrap(),
        front_proxy_ca: CaPair::generate("front-proxy-ca", t0).unwrap(),
        etcd_ca: Some(CaPair::generate("etcd-ca", t0).unwrap()),
        service_account: ServiceAccountKey::generate().unwrap(),
    };
    let id = identity();
    let hour = Duration::hours(1);
    let first = pki::ensure_master_pki_valid_for(r, &id, &secrets, t0, hour).unwrap();
    assert!(first.iter().all(|(_, o)| matches!(o, Outcome::Created)));
    renew::save_identity(r, &id).unwrap();
    assert_eq!(renew::load_identity(r).unwrap(), id);
    let identity_text = std::fs::read_to_string(rooted(r, renew::IDENTITY)).unwrap();
    assert!(
        !identity_text.contains("PRIVATE KEY"),
        "the identity holds no secret"
    );
    let end0 = not_after(r, paths::APISERVER_CRT);

    // Ten minutes in: outside the last third of an hour, nothing is due.
    let kept = renew::renew_at(r, t0 + Duration::minutes(10), hour).unwrap();
    assert_eq!(kept.len(), first.len());
    assert!(
        kept.iter().all(|(_, o)| matches!(o, Outcome::Kept)),
        "{kept:?}"
    );
    assert!(renew::units_to_restart(&kept).is_empty());
    assert_eq!(not_after(r, paths::APISERVER_CRT), end0);

    // Forty-five minutes in: every leaf is in its window and is reissued, signed by
    // the same CA, valid until later; the components reading them are named.
    let renewed = renew::renew_at(r, t0 + Duration::minutes(45), hour).unwrap();
    assert!(
        renewed
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Replaced(_))),
        "{renewed:?}"
    );
    let end1 = not_after(r, paths::APISERVER_CRT);
    assert!(end1 > end0, "{end1} after {end0}");
    let ca = std::fs::read_to_string(rooted(r, paths::CA_CRT)).unwrap();
    assert_eq!(ca, secrets.ca.cert_pem, "the CA is kept");
    let units = renew::units_to_restart(&renewed);
    for u in [
        "etcd.service",
        "kube-apiserver.service",
        "kube-controller-manager.service",
        "kube-scheduler.service",
        "kubelet.service",
    ] {
        assert!(units.contains(u), "{u} in {units:?}");
    }

    // The kubelet's client pair is still a link to a regular dated file (the link was
    // swapped, the old dated file left alone).
    let current = nodeimage_core::files::rooted_nofollow(r, paths::KUBELET_CLIENT_CURRENT);
    let target = std::fs::read_link(&current).expect("kubelet-client-current.pem is a link");
    let dated = current.parent().unwrap().join(&target);
    assert!(
        std::fs::symlink_metadata(&dated).unwrap().is_file(),
        "{} is a regular file",
        dated.display()
    );

    // Right after, nothing is due again.
    let again = renew::renew_at(r, t0 + Duration::minutes(46), hour).unwrap();
    assert!(again.iter().all(|(_, o)| matches!(o, Outcome::Kept)));
}

#[test]
fn renewal_without_a_recorded_identity_names_the_file() {
    let root = tempfile::tempdir().unwrap();
    let err =
        renew::renew_at(root.path(), OffsetDateTime::now_utc(), pki::LEAF_VALIDITY).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("master-identity.json"), "{msg}");
}

#[test]
fn the_renewal_timer_runs_the_firstboot_binary_daily() {
    let units = renew::units("/usr/bin/firstboot");
    let service = units
        .iter()
        .find(|f| f.path.ends_with(renew::SERVICE))
        .unwrap();
    assert!(service
        .contents
        .contains("ExecStart=/usr/bin/firstboot renew-certs"));
    let timer = units
        .iter()
        .find(|f| f.path.ends_with(renew::TIMER))
        .unwrap();
    assert!(timer.contents.contains("OnUnitActiveSec=1d"));
    assert!(timer.contents.contains("Persistent=true"));
}
