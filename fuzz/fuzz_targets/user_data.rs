//! User data as a data source hands it over: `firstboot::source::userdata::classify`,
//! which decompresses gzip, detects the kind (native node config, Ignition, cloud-config,
//! script, MIME multipart, other) and parses a native node config (strictly, with its
//! errors redacted).
//!
//! Property: an error shows none of the secret values of the (decompressed) document
//! (strings of at least 8 characters under a `secrets` key).
#![no_main]

use firstboot::source::userdata::{classify, decompress, detect, UserData};
use libfuzzer_sys::fuzz_target;
use nodeimage_fuzz::{assert_no_secret, secrets_in};

fuzz_target!(|data: &[u8]| {
    let _ = detect(data);
    match classify("fuzz", data) {
        Ok(UserData::NodeConfig(config)) => {
            let _ = format!("{config:?}");
        }
        Ok(UserData::Ignition(raw)) => {
            let _ = detect(&raw);
        }
        Err(e) => {
            let message = nodeimage_core::errors::chain(&e);
            if let Ok(plain) = decompress("fuzz", data) {
                let text = String::from_utf8_lossy(&plain);
                let text = text.trim_start_matches('\u{feff}');
                assert_no_secret("classify", &message, &secrets_in(text));
            }
        }
    }
});
