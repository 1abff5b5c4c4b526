//! Secrets never reach an error, a log line or status.json (issue 11, L2): the parsers
//! quote what they refuse, and user data holds the cluster's keys and tokens.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use firstboot::source::userdata::classify;
use nodeimage_core::config::NodeConfig;

const TOKEN: &str = "abcdef.0123456789abcdef";
const PASSWORD: &str = "Wv3aveMarkerPassw0rdXyzzy";
const KEY: &str = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIMarkerKeyMaterialAAAAAAAAAAAAAAAAAAAAoAoGCCqGSM49\n-----END EC PRIVATE KEY-----\n";

fn no_secret(what: &str, text: &str) {
    for m in [TOKEN, PASSWORD, "MarkerKeyMaterial", "0123456789abcdef"] {
        assert!(!text.contains(m), "{what}: `{m}` in {text}");
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

/// Each of these makes the YAML parser or the validation quote a value.
fn broken_configs() -> Vec<(&'static str, String)> {
    let head = "version: 1\nrole: master\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1\n";
    vec![
        // A string where the mapping belongs: serde quotes the string.
        (
            "secrets as a string",
            format!("{head}secrets: \"{TOKEN}\"\n"),
        ),
        // A key pasted one level too high.
        (
            "ca_key at the top",
            format!("{head}ca_key: |\n{}", indent(KEY)),
        ),
        // A token with a typo: the token type never echoes, the rest of the doc neither.
        (
            "bad token",
            format!(
                "{head}secrets:\n  bootstrap_token: \"{TOKEN}x\"\n  weave_password: {PASSWORD}\n"
            ),
        ),
        // A secret in a field that echoes what it refuses.
        (
            "password as the hostname",
            format!("{head}hostname: {PASSWORD}\nsecrets:\n  weave_password: {PASSWORD}\n"),
        ),
        (
            "key as a label",
            format!(
                "{head}labels:\n  x: \"{}\"\nsecrets:\n  ca_key: |\n{}",
                KEY.replace('\n', "\\n"),
                indent(KEY)
            ),
        ),
        // A sequence where a string belongs; the other secrets are not shown either.
        (
            "wrong type",
            format!("{head}secrets:\n  ca_key: [{PASSWORD}]\n  bootstrap_token: {TOKEN}\n"),
        ),
    ]
}

#[test]
fn user_data_errors_carry_no_secret_values() {
    for (what, doc) in broken_configs() {
        let e = classify("ec2", doc.as_bytes()).unwrap_err();
        let text = nodeimage_core::errors::chain(&e);
        no_secret(what, &text);
        assert!(text.starts_with("ec2: "), "{what}: {text}");
        println!("{what}: {text}");
    }
    // The message still says where: a field, a line and a column.
    let e = classify("ec2", broken_configs()[0].1.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("secrets") && e.contains("line 6"), "{e}");
}

/// The same inside an Ignition config: a data: URL is quoted whole by serde.
#[test]
fn ignition_parse_errors_carry_no_secret_values() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!(
        "secrets:\n  bootstrap_token: {TOKEN}\n  weave_password: {PASSWORD}\n"
    ));
    let data_url = format!("data:;base64,{b64}");
    for doc in [
        // `storage` as a string instead of an object.
        format!("{{\"ignition\":{{\"version\":\"3.4.0\"}},\"storage\":\"{data_url}\"}}"),
        // `contents` as a string.
        format!("{{\"ignition\":{{\"version\":\"3.4.0\"}},\"storage\":{{\"files\":[{{\"path\":\"/etc/nodeimage/node.yaml\",\"contents\":\"{data_url}\"}}]}}}}"),
    ] {
        let e = classify("ec2", doc.as_bytes())
            .and_then(|u| match u {
                firstboot::source::userdata::UserData::Ignition(raw) => {
                    firstboot::ignition::stage("ec2", &raw, Default::default())
                        .map(drop)
                        .map_err(Into::into)
                }
                _ => Ok(()),
            })
            .unwrap_err();
        let text = nodeimage_core::errors::chain(&e);
        assert!(!text.contains(&b64[..40]), "{text}");
        no_secret("ignition", &text);
    }
}

/// What a node's owner sees: the console line and status.json (0640) of the binary.
#[test]
fn the_console_line_and_status_json_hold_no_secret() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("node.yaml");
    std::fs::write(&cfg, &broken_configs()[0].1).unwrap();
    let tree = root.path().join("tree");
    let out = Command::new(env!("CARGO_BIN_EXE_firstboot"))
        .args([
            "--root",
            tree.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    no_secret("console", &stdout);
    no_secret("log", &String::from_utf8_lossy(&out.stderr));
    let status = tree.join("var/lib/firstboot/status.json");
    no_secret("status.json", &std::fs::read_to_string(&status).unwrap());
    assert_eq!(
        std::fs::metadata(&status).unwrap().permissions().mode() & 0o777,
        0o640
    );
}

/// `Debug` of the node config (what a `tracing` field or a panic would print) shows no
/// file contents and no key.
#[test]
fn debug_of_a_node_config_redacts_secret_fields() {
    let doc = format!(
        "version: 1\nrole: master\ncluster:\n  name: demo\n  api_endpoint: 10.0.0.1\n  authentication:\n    token_webhook:\n      config:\n        cluster: {{name: r, server: \"https://t.example.com/token\"}}\n        user:\n          name: apiserver\n          client_key: {PASSWORD}\nfiles:\n  - {{path: /etc/x, contents: {PASSWORD}}}\nsecrets:\n  bootstrap_token: {TOKEN}\n  weave_password: {PASSWORD}\n  ca_key: |\n{}",
        indent(KEY)
    );
    let c = NodeConfig::parse("t", &doc).unwrap();
    no_secret("Debug", &format!("{c:?}"));
    no_secret("Debug", &format!("{c:#?}"));
}
