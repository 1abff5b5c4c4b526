//! A tiny HTTP/1.1 server on 127.0.0.1 for the fetch tests: raw `TcpListener`, one
//! response per connection (`Connection: close`), full control over status, headers,
//! Range handling and cutting a body short. Every request is recorded.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::header(&self.headers, name)
    }

    /// The start of a `Range: bytes=N-` header.
    pub fn range_start(&self) -> Option<u64> {
        let v = self.header("range")?;
        v.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
    }
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send only this many body bytes, then close (Content-Length still says all).
    pub cut_after: Option<usize>,
    /// Before closing a cut body, keep the connection silent this long.
    pub stall: Option<Duration>,
}

impl Reply {
    pub fn ok(body: &[u8]) -> Self {
        Reply {
            status: 200,
            headers: vec![],
            body: body.to_vec(),
            cut_after: None,
            stall: None,
        }
    }

    pub fn status(status: u16) -> Self {
        Reply {
            status,
            headers: vec![],
            body: format!("status {status}\n").into_bytes(),
            cut_after: None,
            stall: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn cut_after(mut self, n: usize) -> Self {
        self.cut_after = Some(n);
        self
    }

    pub fn stall(mut self, d: Duration) -> Self {
        self.stall = Some(d);
        self
    }
}

/// Serves `body` honoring `Range: bytes=N-` with 206 + Content-Range and an ETag.
pub fn ranged(req: &Request, body: &[u8], etag: &str) -> Reply {
    match req.range_start() {
        Some(start) if (start as usize) < body.len() => Reply {
            status: 206,
            headers: vec![
                (
                    "Content-Range".into(),
                    format!("bytes {start}-{}/{}", body.len() - 1, body.len()),
                ),
                ("ETag".into(), etag.into()),
            ],
            body: body[start as usize..].to_vec(),
            cut_after: None,
            stall: None,
        },
        _ => Reply::ok(body).header("ETag", etag),
    }
}

pub struct TestServer {
    pub base: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl TestServer {
    /// `handler(request, index)` with `index` counting requests from 0.
    pub fn start(handler: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Self {
        let (base, requests) =
            spawn_recording(move |stream, recorded| serve(stream, recorded, &handler));
        TestServer { base, requests }
    }

    /// A server that serves fixed files by path (404 otherwise), no Range support.
    pub fn files(files: Vec<(&str, Vec<u8>)>) -> Self {
        let files: Vec<(String, Vec<u8>)> =
            files.into_iter().map(|(p, b)| (p.to_string(), b)).collect();
        Self::start(move |req, _| {
            files
                .iter()
                .find(|(p, _)| *p == req.path)
                .map(|(_, b)| Reply::ok(b))
                .unwrap_or_else(|| Reply::status(404))
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// Bind 127.0.0.1 on a free port and hand every connection, on a thread of its own (so
/// parallel clients are served in parallel), to `on_connection` with the shared request
/// log. Returns the base URL and that log.
pub(super) fn spawn_recording(
    on_connection: impl Fn(TcpStream, &Mutex<Vec<Request>>) + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let recorded = requests.clone();
    let on_connection = Arc::new(on_connection);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let recorded = recorded.clone();
            let on_connection = on_connection.clone();
            std::thread::spawn(move || on_connection(stream, &recorded));
        }
    });
    (base, requests)
}

/// Read one request's head (request line and headers) from `stream`.
pub(super) fn read_request(stream: &TcpStream) -> Option<Request> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    Some(Request {
        method,
        path,
        headers,
    })
}

fn serve(
    stream: TcpStream,
    recorded: &Mutex<Vec<Request>>,
    handler: impl Fn(&Request, usize) -> Reply,
) {
    let Some(req) = read_request(&stream) else {
        return;
    };
    let index = {
        let mut r = recorded.lock().unwrap();
        r.push(req.clone());
        r.len() - 1
    };
    let reply = handler(&req, index);
    let mut out = stream;
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    if !reply
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    for (n, v) in &reply.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    let _ = out.write_all(head.as_bytes());
    let body = match reply.cut_after {
        Some(n) => &reply.body[..n.min(reply.body.len())],
        None => &reply.body[..],
    };
    if req.method != "HEAD" {
        let _ = out.write_all(body);
    }
    let _ = out.flush();
    if let Some(d) = reply.stall {
        std::thread::sleep(d);
    }
    let _ = out.shutdown(Shutdown::Both);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        403 => "Forbidden",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// A URL on a closed loopback port: connecting is refused at once.
pub const UNREACHABLE: &str = "http://127.0.0.1:1";
