//! Secrets stay secret: nothing the hub logs, even at `trace`, carries a key
//! or a token; a data dir other users can open is refused; TLS below 1.2 and
//! legacy cipher suites are refused.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::DirBuilderExt;
use std::process::{Command, Stdio};

use common::mqtt::{create_device, http, now_unix, owner_token, service, token};
use common::{clear_hub_env, TestHub, BIN};
use ferrohub_device_client::{DeviceClient, DeviceOptions, Message};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_or_token_reaches_the_log_even_at_trace() {
    let hub = TestHub::start_with_env(&[("RUST_LOG", "trace")], &[]);
    let s = service(&hub);
    let key = create_device(&hub, "secret-dev").await;
    let device_token = token("secret-dev", &key, now_unix() + 600);
    let owner = owner_token(&hub);

    // MQTT with a SAS password: connect, twin, telemetry.
    let options = DeviceOptions {
        mqtt_port: Some(hub.mqtt_port()),
        ca_file: Some(hub.ca_file()),
        ..Default::default()
    };
    let cs = format!("HostName=localhost;DeviceId=secret-dev;SharedAccessKey={key}");
    let device = DeviceClient::connect(&cs, options.clone()).await.unwrap();
    device.update_reported(&json!({"x": 1})).await.unwrap();
    device.send_telemetry(Message::new(b"hello".to_vec())).await.unwrap();
    device.close().await;

    // Refused credentials are where a careless log line would quote them.
    let wrong = format!("HostName=localhost;DeviceId=secret-dev;SharedAccessKey={}", "A".repeat(44));
    assert!(DeviceClient::connect(&wrong, options).await.is_err());
    let web = http(&hub);
    let base = format!("https://localhost:{}", hub.https_port());
    let forged = owner.replace("sig=", "sig=AAAA");
    for auth in [owner.as_str(), forged.as_str(), device_token.as_str()] {
        let _ = web
            .get(format!("{base}/devices/secret-dev?api-version=2021-04-12"))
            .header("Authorization", auth)
            .send()
            .await
            .unwrap();
    }
    // The device HTTPS API with the device's token.
    let sent = web
        .post(format!("{base}/devices/secret-dev/messages/events?api-version=2021-04-12"))
        .header("Authorization", &device_token)
        .body("over https")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 204);
    // Keys in a registry answer (the device's) and a twin read.
    let twin = s.get_twin("secret-dev").await.unwrap();
    assert_eq!(twin["properties"]["reported"]["x"], 1);

    let log = hub.log();
    assert!(log.contains("TRACE"), "the hub logged at trace level");
    let owner_key = hub.connection_string().split("SharedAccessKey=").nth(1).unwrap().to_owned();
    let policies: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hub.data_dir().join("policies.json")).unwrap()).unwrap();
    let mut secrets = vec![key.clone(), owner_key, device_token.clone(), owner.clone()];
    for p in policies.as_array().unwrap() {
        secrets.push(p["primaryKey"].as_str().unwrap().to_owned());
        secrets.push(p["secondaryKey"].as_str().unwrap().to_owned());
    }
    // A token's signature alone, as it appears percent-encoded.
    for t in [&device_token, &owner] {
        secrets.push(t.split("sig=").nth(1).unwrap().split('&').next().unwrap().to_owned());
    }
    for (i, secret) in secrets.iter().enumerate() {
        assert!(!log.contains(secret.as_str()), "secret #{i} is in the hub's log");
    }
    for marker in ["SharedAccessSignature", "SharedAccessKey="] {
        assert!(!log.contains(marker), "the hub's log quotes a credential ({marker})");
    }
}

#[test]
fn a_data_dir_other_users_can_open_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("open");
    std::fs::DirBuilder::new().mode(0o755).create(&dir).unwrap();
    let out = clear_hub_env(&mut Command::new(BIN))
        .args(["serve", "--https-port", "0", "--mqtt-port", "0", "--data-dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the hub started on a 0755 data dir");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mode 0755") && err.contains("chmod 700"), "{err}");
    assert!(!dir.join("policies.json").exists(), "nothing is created in a refused data dir");
}

/// Runs `openssl s_client` against the hub with extra options; true when
/// the handshake completed.
fn handshake(port: u16, ca: &std::path::Path, args: &[&str]) -> bool {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost", "-CAfile"])
        .arg(ca)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && text.contains("Verify return code: 0")
}

#[test]
fn tls_below_1_2_and_legacy_ciphers_are_refused_on_both_ports() {
    let hub = TestHub::start();
    let ca = hub.ca_file();
    for port in [hub.https_port(), hub.mqtt_port()] {
        assert!(handshake(port, &ca, &["-tls1_3"]), "TLS 1.3 on {port}");
        assert!(handshake(port, &ca, &["-tls1_2"]), "TLS 1.2 on {port}");
        // The client's own floor is lowered, so a refusal is the hub's.
        let any = "ALL:@SECLEVEL=0";
        assert!(!handshake(port, &ca, &["-tls1_1", "-cipher", any]), "TLS 1.1 accepted on {port}");
        assert!(!handshake(port, &ca, &["-tls1", "-cipher", any]), "TLS 1.0 accepted on {port}");
        // CBC, RSA key exchange and SHA-1 MACs: none offered.
        for legacy in ["AES128-SHA", "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES256-SHA384", "DES-CBC3-SHA"] {
            assert!(!handshake(port, &ca, &["-tls1_2", "-cipher", legacy]), "{legacy} accepted on {port}");
        }
    }
}
