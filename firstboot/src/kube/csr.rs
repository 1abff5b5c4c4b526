//! Approval policy for kubelet serving certificates.
//!
//! Workers run with `serverTLSBootstrap: true`: their kubelet asks for a serving
//! certificate with a CSR of signer `kubernetes.io/kubelet-serving`. Kubernetes approves
//! client CSRs automatically (the `nodeclient`/`selfnodeclient` bindings) but never
//! serving CSRs, so until one is approved the API server cannot reach that kubelet
//! (`kubectl logs/exec`). The bootstrap master approves a serving CSR only when it is
//! exactly what the Node may ask for: its own name, its own addresses.

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// The fields of a CertificateSigningRequest object that matter here.
#[derive(Debug, Clone)]
pub struct CsrObject<'a> {
    pub signer_name: &'a str,
    /// `spec.username`: who created the CSR.
    pub username: &'a str,
    pub groups: &'a [String],
    pub usages: &'a [String],
    /// `spec.request` decoded: PEM or DER of the PKCS#10 request.
    pub request: &'a [u8],
}

/// Ok when the CSR may be approved; Err says why not (for the log and the denial).
/// `node_addresses` are the Node's `status.addresses` (IPs and host names).
pub fn kubelet_serving_decision(csr: &CsrObject, node_addresses: &[String]) -> Result<(), String> {
    if csr.signer_name != KUBELET_SERVING_SIGNER {
        return Err(format!(
            "signer is {}, not {KUBELET_SERVING_SIGNER}",
            csr.signer_name
        ));
    }
    let node = csr
        .username
        .strip_prefix("system:node:")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("requested by {}, not by a node", csr.username))?;
    if !csr.groups.iter().any(|g| g == "system:nodes") {
        return Err("requester is not in system:nodes".into());
    }
    let allowed_usages = ["digital signature", "key encipherment", "server auth"];
    if !csr.usages.iter().any(|u| u == "server auth")
        || csr
            .usages
            .iter()
            .any(|u| !allowed_usages.contains(&u.as_str()))
    {
        return Err(format!(
            "usages {:?} are not a serving certificate's",
            csr.usages
        ));
    }
    let der = if csr.request.starts_with(b"-----BEGIN") {
        x509_parser::pem::parse_x509_pem(csr.request)
            .map_err(|e| format!("request is not PEM: {e}"))?
            .1
            .contents
    } else {
        csr.request.to_vec()
    };
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| format!("request does not parse: {e}"))?;
    req.verify_signature()
        .map_err(|e| format!("request signature: {e}"))?;
    let info = &req.certification_request_info;
    let cn: Vec<_> = info
        .subject
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .collect();
    let orgs: Vec<_> = info
        .subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .collect();
    if cn != [csr.username] || orgs != ["system:nodes"] {
        return Err(format!(
            "subject CN={cn:?} O={orgs:?} is not CN={} O=system:nodes",
            csr.username
        ));
    }
    let mut names = 0;
    for ext in req.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                names += 1;
                match n {
                    GeneralName::DNSName(d) => {
                        if *d != node && !node_addresses.iter().any(|a| a == d) {
                            return Err(format!("DNS name {d} is not node {node}'s"));
                        }
                    }
                    GeneralName::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()),
                            16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()),
                            _ => return Err("malformed IP address".into()),
                        };
                        if !node_addresses
                            .iter()
                            .any(|a| a.parse::<std::net::IpAddr>().ok() == Some(ip))
                        {
                            return Err(format!("IP address {ip} is not node {node}'s"));
                        }
                    }
                    other => {
                        return Err(format!("subject alternative name {other:?} is not allowed"))
                    }
                }
            }
        }
    }
    if names == 0 {
        return Err("no subject alternative names".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn request(cn: &str, org: &str, sans: Vec<SanType>) -> String {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, org);
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.subject_alt_names = sans;
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn serving_csr_policy() {
        let groups = vec![
            "system:nodes".to_string(),
            "system:authenticated".to_string(),
        ];
        let usages = vec!["digital signature".to_string(), "server auth".to_string()];
        let addrs = vec!["10.0.0.20".to_string(), "worker-0".to_string()];
        let good = request(
            "system:node:worker-0",
            "system:nodes",
            vec![
                SanType::DnsName("worker-0".try_into().unwrap()),
                SanType::IpAddress("10.0.0.20".parse().unwrap()),
            ],
        );
        let csr = CsrObject {
            signer_name: KUBELET_SERVING_SIGNER,
            username: "system:node:worker-0",
            groups: &groups,
            usages: &usages,
            request: good.as_bytes(),
        };
        kubelet_serving_decision(&csr, &addrs).unwrap();

        let other_ip = request(
            "system:node:worker-0",
            "system:nodes",
            vec![SanType::IpAddress("10.0.0.99".parse().unwrap())],
        );
        let e = kubelet_serving_decision(
            &CsrObject {
                request: other_ip.as_bytes(),
                ..csr.clone()
            },
            &addrs,
        )
        .unwrap_err();
        assert!(e.contains("10.0.0.99"), "{e}");
        let other_node = request(
            "system:node:worker-1",
            "system:nodes",
            vec![SanType::DnsName("worker-0".try_into().unwrap())],
        );
        assert!(kubelet_serving_decision(
            &CsrObject {
                request: other_node.as_bytes(),
                ..csr.clone()
            },
            &addrs
        )
        .is_err());
        let client_usage = vec!["client auth".to_string()];
        assert!(kubelet_serving_decision(
            &CsrObject {
                usages: &client_usage,
                ..csr.clone()
            },
            &addrs
        )
        .is_err());
        assert!(kubelet_serving_decision(
            &CsrObject {
                username: "alice",
                ..csr.clone()
            },
            &addrs
        )
        .is_err());
        assert!(kubelet_serving_decision(
            &CsrObject {
                signer_name: "kubernetes.io/kube-apiserver-client",
                ..csr
            },
            &addrs
        )
        .is_err());
    }
}
