//! What the fetcher logs. Alone in its binary: a thread-scoped `tracing` subscriber
//! misses events when other tests hit the same callsites concurrently.

use nodeimage::fetch::{
    Algorithm, Cache, Digest, FetchOptions, FetchRequest, Fetcher, ProgressMode,
};
use test_support::files::content;
use test_support::http::{Reply, TestServer};

const PATH: &str = "/release/v1.35.1/bin/linux/amd64/kubelet";

/// Collects everything logged (at TRACE) while `f` runs.
fn logged(f: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let w = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || w.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let out = buf.0.lock().unwrap().clone();
    String::from_utf8(out).unwrap()
}

#[test]
fn logs_have_url_and_bytes_but_never_header_values() {
    let body = content(5_000, 13);
    let b = body.clone();
    let server = TestServer::start(move |_, i| {
        if i == 0 {
            Reply::status(503)
        } else {
            Reply::ok(&b)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let req = FetchRequest::new(server.url(PATH), Digest::of(Algorithm::Sha256, &body))
        .with_header("Authorization", "Bearer sup3rs3cret");
    let log = logged(|| {
        // Fast retries, no progress bars (which would log nothing).
        let opts = FetchOptions {
            retries: 3,
            backoff_base: std::time::Duration::from_millis(2),
            backoff_max: std::time::Duration::from_millis(20),
            progress: ProgressMode::Never,
            ..FetchOptions::default()
        };
        Fetcher::new(Cache::new(dir.path()), opts)
            .unwrap()
            .fetch_with(&req)
            .unwrap();
    });
    assert!(log.contains("download started"), "{log}");
    assert!(log.contains("download finished"), "{log}");
    assert!(log.contains(&format!("url={}", server.url(PATH))), "{log}");
    assert!(log.contains("bytes=5000"), "{log}");
    assert!(log.contains("retrying"), "{log}");
    assert!(!log.contains("sup3rs3cret"), "{log}");
    assert_eq!(
        server.requests()[1].header("authorization"),
        Some("Bearer sup3rs3cret")
    );
}
