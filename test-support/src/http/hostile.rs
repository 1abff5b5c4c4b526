//! A hostile HTTP server on 127.0.0.1: for each request a handler picks a
//! [`Behaviour`] (an endless body, a huge announced length, a drip-feed, a body such as
//! a gzip bomb, a redirect, a plain status). One thread per connection; a writer stops
//! when the client goes away. Every request is recorded.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::raw::{read_request, spawn_recording, Request};

/// How the server answers one request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 without Content-Length, then zeros as fast as the client takes them, forever.
    Endless,
    /// 200 with `Content-Length: <n>`, then zeros until the client goes away.
    Announced(u64),
    /// 200 with Content-Length `len`, one byte every `every`.
    Drip { len: usize, every: Duration },
    /// 200 with this body (Content-Length set).
    Body(Vec<u8>),
    /// A redirect with this status and Location.
    Redirect(u16, String),
    /// This status with a short body.
    Status(u16),
}

pub struct Hostile {
    pub base: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Hostile {
    pub fn start(handler: impl Fn(&Request) -> Behaviour + Send + Sync + 'static) -> Self {
        let (base, requests) = spawn_recording(move |stream, recorded| {
            let Some(req) = read_request(&stream) else {
                return;
            };
            recorded.lock().unwrap().push(req.clone());
            answer(stream, handler(&req));
        });
        Hostile { base, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn head(out: &mut TcpStream, status: u16, headers: &[String]) -> std::io::Result<()> {
    let mut h = format!("HTTP/1.1 {status} Hostile\r\n");
    for l in headers {
        h.push_str(l);
        h.push_str("\r\n");
    }
    h.push_str("Connection: close\r\n\r\n");
    out.write_all(h.as_bytes())
}

fn zeros_forever(out: &mut TcpStream) {
    let chunk = vec![0u8; 256 << 10];
    while out.write_all(&chunk).is_ok() {}
}

fn answer(mut out: TcpStream, b: Behaviour) {
    let _ = out.set_write_timeout(Some(Duration::from_secs(120)));
    let _ = match b {
        Behaviour::Endless => head(&mut out, 200, &[]).map(|_| zeros_forever(&mut out)),
        Behaviour::Announced(n) => {
            head(&mut out, 200, &[format!("Content-Length: {n}")]).map(|_| zeros_forever(&mut out))
        }
        Behaviour::Drip { len, every } => head(&mut out, 200, &[format!("Content-Length: {len}")])
            .and_then(|_| {
                for _ in 0..len {
                    out.write_all(b"x")?;
                    out.flush()?;
                    std::thread::sleep(every);
                }
                Ok(())
            }),
        Behaviour::Body(body) => head(&mut out, 200, &[format!("Content-Length: {}", body.len())])
            .and_then(|_| out.write_all(&body)),
        Behaviour::Redirect(status, location) => head(
            &mut out,
            status,
            &[format!("Location: {location}"), "Content-Length: 0".into()],
        ),
        Behaviour::Status(status) => {
            let body = format!("status {status}\n");
            head(
                &mut out,
                status,
                &[format!("Content-Length: {}", body.len())],
            )
            .and_then(|_| out.write_all(body.as_bytes()))
        }
    };
    let _ = out.flush();
    let _ = out.shutdown(Shutdown::Both);
}

/// A gzip bomb: `mib` MiB of zeros as that many concatenated gzip members of 1 MiB each
/// (about a kilobyte each; gzip readers decode every member, as `gzip -d` does).
pub fn gzip_bomb(mib: u64) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![0u8; 1 << 20]).unwrap();
    let member = enc.finish().unwrap();
    member.repeat(mib as usize)
}
