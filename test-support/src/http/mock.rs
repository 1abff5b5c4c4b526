//! A mock HTTP server on 127.0.0.1 (tiny_http) for metadata services: a handler per
//! request, injected failures and delays ([`Faults`]), every request recorded. Each
//! request is answered on its own thread so a deliberately slow answer does not block
//! the next one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Req {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub headers: Vec<(String, String)>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::header(&self.headers, name)
    }
}

pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
    pub delay: Duration,
}

impl Resp {
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Resp {
            status: 200,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
    pub fn status(status: u16, body: &str) -> Self {
        Resp {
            status,
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
        }
    }
    pub fn not_found() -> Self {
        Resp::status(404, "Not Found")
    }
}

type Handler = dyn Fn(&Req) -> Resp + Send + Sync + 'static;

/// Behaviour shared by every mock: fail the first `failures` requests with 500, delay
/// every answer by `delay`.
#[derive(Clone, Default)]
pub struct Faults {
    pub failures: u32,
    pub delay: Duration,
}

pub struct Mock {
    pub base: String,
    /// "METHOD /path" of every request, in arrival order.
    pub hits: Arc<Mutex<Vec<String>>>,
    server: Arc<tiny_http::Server>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

impl Mock {
    pub fn start(faults: Faults, handler: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> Mock {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1"));
        let port = server.server_addr().to_ip().expect("ip").port();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let failed = Arc::new(AtomicU32::new(0));
        {
            let server = server.clone();
            let hits = hits.clone();
            std::thread::spawn(move || {
                for mut rq in server.incoming_requests() {
                    let handler = handler.clone();
                    let hits = hits.clone();
                    let failed = failed.clone();
                    let faults = faults.clone();
                    std::thread::spawn(move || {
                        let url = rq.url().to_string();
                        let (path, q) = url.split_once('?').unwrap_or((&url, ""));
                        let query = q
                            .split('&')
                            .filter(|p| !p.is_empty())
                            .map(|p| {
                                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                                (k.to_string(), v.to_string())
                            })
                            .collect();
                        let req = Req {
                            method: rq.method().to_string(),
                            path: path.to_string(),
                            query,
                            headers: rq
                                .headers()
                                .iter()
                                .map(|h| {
                                    (
                                        h.field.as_str().as_str().to_string(),
                                        h.value.as_str().to_string(),
                                    )
                                })
                                .collect(),
                        };
                        let mut sink = Vec::new();
                        let _ = std::io::Read::read_to_end(rq.as_reader(), &mut sink);
                        hits.lock().unwrap().push(format!("{} {}", req.method, url));
                        let resp = if failed.fetch_add(1, Ordering::SeqCst) < faults.failures {
                            Resp::status(500, "Internal Server Error")
                        } else {
                            handler(&req)
                        };
                        std::thread::sleep(faults.delay.max(resp.delay));
                        let _ = rq.respond(
                            tiny_http::Response::from_data(resp.body).with_status_code(resp.status),
                        );
                    });
                }
            });
        }
        Mock {
            base: format!("http://127.0.0.1:{port}"),
            hits,
            server,
        }
    }

    pub fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }
}

/// A port on 127.0.0.1 where nothing listens.
pub fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}
