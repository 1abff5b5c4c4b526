//! etcd's v3 cluster API through its JSON gateway (`/v3/cluster/member/{list,add,remove}`,
//! `/health`) over client TLS.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{EtcdError, EtcdTls};
use crate::net::tls_client;

/// An etcd member as the v3 API reports it. An unstarted member has no name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    #[serde(rename = "ID", deserialize_with = "de_u64")]
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", default)]
    pub client_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
}

impl Member {
    pub fn is_started(&self) -> bool {
        !self.name.is_empty()
    }
}

/// grpc-gateway writes uint64 as a JSON string.
fn de_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        N(u64),
    }
    match N::deserialize(d)? {
        N::S(s) => s.parse().map_err(serde::de::Error::custom),
        N::N(n) => Ok(n),
    }
}

/// Access to the etcd v3 cluster API.
pub trait EtcdApi {
    fn member_list(&self, endpoint: &str) -> Result<Vec<Member>, EtcdError>;
    /// Add a voting member; returns the member list after the add.
    fn member_add(&self, endpoint: &str, peer_urls: &[String]) -> Result<Vec<Member>, EtcdError>;
    fn member_remove(&self, endpoint: &str, id: u64) -> Result<(), EtcdError>;
    /// `GET /health` reports `"health":"true"`.
    fn healthy(&self, endpoint: &str) -> bool;
}

/// The v3 JSON gateway over HTTPS with a client certificate.
pub struct HttpEtcdClient {
    client: reqwest::blocking::Client,
}

#[derive(Deserialize)]
struct MembersResponse {
    #[serde(default)]
    members: Vec<Member>,
}

impl HttpEtcdClient {
    /// `ca_pem` verifies the members; `cert_pem` + `key_pem` authenticate this client.
    pub fn new(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        timeout: Duration,
    ) -> Result<Self, EtcdError> {
        let identity = format!("{cert_pem}\n{key_pem}");
        let client = tls_client(ca_pem, Some(&identity), timeout).map_err(EtcdError::Tls)?;
        Ok(HttpEtcdClient { client })
    }

    /// From the TLS files of a member spec.
    pub fn from_tls(tls: &EtcdTls, timeout: Duration) -> Result<Self, EtcdError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| EtcdError::ReadTls {
                path: p.to_path_buf(),
                source,
            })
        };
        Self::new(
            &read(&tls.ca)?,
            &read(&tls.client_cert)?,
            &read(&tls.client_key)?,
            timeout,
        )
    }

    fn post<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, EtcdError> {
        let request = |source| EtcdError::Request {
            endpoint: endpoint.to_string(),
            source,
        };
        let resp = self
            .client
            .post(format!("{}{path}", endpoint.trim_end_matches('/')))
            .json(&body)
            .send()
            .map_err(request)?;
        let status = resp.status();
        let text = resp.text().map_err(request)?;
        if !status.is_success() {
            #[derive(Deserialize)]
            struct E {
                #[serde(default)]
                error: String,
            }
            let msg = serde_json::from_str::<E>(&text)
                .map(|e| e.error)
                .unwrap_or_default();
            return Err(EtcdError::Status {
                endpoint: endpoint.to_string(),
                status,
                message: if msg.is_empty() {
                    text.trim().to_string()
                } else {
                    msg
                },
            });
        }
        serde_json::from_str(&text).map_err(|source| EtcdError::Response {
            endpoint: endpoint.to_string(),
            source,
            body: text.trim().to_string(),
        })
    }
}

impl EtcdApi for HttpEtcdClient {
    fn member_list(&self, endpoint: &str) -> Result<Vec<Member>, EtcdError> {
        Ok(self
            .post::<MembersResponse>(endpoint, "/v3/cluster/member/list", serde_json::json!({}))?
            .members)
    }

    fn member_add(&self, endpoint: &str, peer_urls: &[String]) -> Result<Vec<Member>, EtcdError> {
        Ok(self
            .post::<MembersResponse>(
                endpoint,
                "/v3/cluster/member/add",
                serde_json::json!({ "peerURLs": peer_urls }),
            )?
            .members)
    }

    fn member_remove(&self, endpoint: &str, id: u64) -> Result<(), EtcdError> {
        self.post::<serde_json::Value>(
            endpoint,
            "/v3/cluster/member/remove",
            serde_json::json!({ "ID": id.to_string() }),
        )?;
        Ok(())
    }

    fn healthy(&self, endpoint: &str) -> bool {
        #[derive(Deserialize)]
        struct H {
            health: String,
        }
        self.client
            .get(format!("{}/health", endpoint.trim_end_matches('/')))
            .send()
            .ok()
            .and_then(|r| r.json::<H>().ok())
            .is_some_and(|h| h.health == "true")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_json_from_the_gateway() {
        let r: MembersResponse = serde_json::from_str(
            r#"{"header":{"cluster_id":"1"},"members":[{"ID":"13278297627402085795","peerURLs":["https://10.0.0.2:2380"]},{"ID":"42","name":"m1","peerURLs":["https://10.0.0.1:2380"],"clientURLs":["https://10.0.0.1:2379"]}]}"#,
        )
        .unwrap();
        assert_eq!(r.members[0].id, 13278297627402085795);
        assert!(!r.members[0].is_started() && r.members[1].is_started());
    }
}
