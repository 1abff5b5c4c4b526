//! The native node config (YAML user data): `NodeConfig::parse` and the path firstboot
//! takes for user data, `NodeConfig::parse_untrusted`.
//!
//! Property: an error about user data shows none of its secret values. The secret
//! values are the strings of at least 8 characters under a `secrets` key (any depth)
//! of the input read as YAML. The property is checked on `parse_untrusted`, the parser
//! for user data (what firstboot uses, see firstboot/src/source/userdata.rs); plain
//! `parse` is for documents the operator wrote (nodeimage's own inputs) and quotes what
//! it refuses by design, so it is only required not to panic.
//!
//! Also: a config that parses serialises (`to_yaml`) and reads back the same, since
//! nodeimage writes node configs with `to_yaml` and firstboot parses them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeimage_core::config::NodeConfig;
use nodeimage_fuzz::{assert_no_secret, secrets_in};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `parse_untrusted` is `parse` and then the redaction of its error.
    match NodeConfig::parse_untrusted("fuzz", text) {
        Ok(config) => {
            let _ = format!("{config:?}");
            let yaml = config.to_yaml();
            match NodeConfig::parse("fuzz", &yaml) {
                Ok(back) => assert_eq!(back, config, "to_yaml does not read back: {yaml}"),
                Err(e) => panic!("to_yaml of a parsed config does not parse: {e}\n{yaml}"),
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert_no_secret("NodeConfig::parse_untrusted", &message, &secrets_in(text));
        }
    }
});
