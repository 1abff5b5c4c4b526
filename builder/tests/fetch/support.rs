//! What the fetch tests share that needs the builder's types (the servers and files
//! are in `test_support`).

use std::path::Path;
use std::time::Duration;

use nodeimage::fetch::{Algorithm, Cache, Digest, FetchOptions, Fetcher, ProgressMode};

pub fn sha256(data: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, data)
}

pub fn sha512(data: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha512, data)
}

/// Options for tests: fast backoff, short timeouts, no bars.
pub fn test_options() -> FetchOptions {
    FetchOptions {
        retries: 3,
        backoff_base: Duration::from_millis(2),
        backoff_max: Duration::from_millis(20),
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
        progress: ProgressMode::Never,
        ..FetchOptions::default()
    }
}

pub fn fetcher(cache_root: &Path, opts: FetchOptions) -> Fetcher {
    Fetcher::new(Cache::new(cache_root), opts).expect("fetcher")
}
