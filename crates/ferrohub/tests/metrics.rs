//! `GET /metrics` against the real hub: Prometheus's basic auth with a
//! policy name and key (or a SAS token) gets the text format, anything else
//! 401 with a challenge; the series follow what the hub does.
#![allow(clippy::unwrap_used)]

mod common;

use common::mqtt::{create_device, http, now_unix, owner_token, token};
use common::TestHub;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};

/// The value of the series `name` (with its labels as written), if present.
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// What a Prometheus server asks for.
const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";

async fn scrape(hub: &TestHub, auth: Option<&str>) -> reqwest::Response {
    let mut req = http(hub)
        .get(format!("https://localhost:{}/metrics", hub.https_port()))
        .header(reqwest::header::ACCEPT, OPENMETRICS);
    if let Some(a) = auth {
        req = req.header(AUTHORIZATION, a);
    }
    req.send().await.unwrap()
}

/// Prometheus's own linter (Debian's `prometheus` package, which
/// scripts/test.sh installs) finds nothing wrong with `text`.
fn promtool_accepts(text: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) is needed");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool: {said}\n{text}");
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[tokio::test]
async fn a_scrape_with_a_policy_key_sees_the_hub_and_anything_else_is_refused() {
    let hub = TestHub::start();
    let cs: ferrohub_core::connection_string::ConnectionString = hub.connection_string().parse().unwrap();
    let owner = basic("iothubowner", cs.shared_access_key.as_deref().unwrap());

    let before = scrape(&hub, Some(&owner)).await;
    assert_eq!(before.status().as_u16(), 200);
    assert!(before.headers()[CONTENT_TYPE].to_str().unwrap().starts_with("application/openmetrics-text"));
    let before = before.text().await.unwrap();
    assert_eq!(value(&before, "ferrohub_registered_devices"), Some(0.0), "{before}");
    assert!(before.ends_with("# EOF\n"), "{before}");

    let key = create_device(&hub, "counted").await;
    let res = http(&hub)
        .post(format!(
            "https://localhost:{}/devices/counted/messages/events?api-version=2021-04-12",
            hub.https_port()
        ))
        .header(AUTHORIZATION, token("counted", &key, now_unix() + 600))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);

    // A SAS token works too.
    let after = scrape(&hub, Some(&owner_token(&hub))).await;
    assert_eq!(after.status().as_u16(), 200);
    let after = after.text().await.unwrap();
    assert_eq!(value(&after, "ferrohub_registered_devices"), Some(1.0), "{after}");
    assert_eq!(value(&after, "ferrohub_telemetry_messages_accepted_total"), Some(1.0), "{after}");
    let created = r#"ferrohub_http_requests_total{method="PUT",route="/devices/{id}",status="200"}"#;
    assert_eq!(value(&after, created), Some(1.0), "{after}");
    assert!(!after.contains("counted"), "a device id became a label: {after}");
    // Without the Accept, the older text format, which promtool lints.
    let plain = http(&hub)
        .get(format!("https://localhost:{}/metrics", hub.https_port()))
        .header(AUTHORIZATION, &owner)
        .send()
        .await
        .unwrap();
    assert!(plain.headers()[CONTENT_TYPE].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let plain = plain.text().await.unwrap();
    assert!(!plain.contains("# EOF"), "{plain}");
    promtool_accepts(&plain);

    // Refused: no credentials, a wrong key, an unknown policy, a policy
    // without ServiceConnect, a device's token.
    let device_token = token("counted", &key, now_unix() + 600);
    for auth in [
        None,
        Some(basic("iothubowner", &"A".repeat(44))),
        Some(basic("nobody", cs.shared_access_key.as_deref().unwrap())),
        Some("Basic not-base64!".to_owned()),
        Some(device_token),
    ] {
        let res = scrape(&hub, auth.as_deref()).await;
        assert_eq!(res.status().as_u16(), 401, "{auth:?}");
        assert!(res.headers()[WWW_AUTHENTICATE].to_str().unwrap().starts_with("Basic"), "{auth:?}");
    }
    let policies = common::ok_json(&hub.cli(&["policy", "list"]));
    let reader = policies
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["keyName"] == "registryRead")
        .unwrap_or_else(|| panic!("no registryRead policy in {policies}"));
    let res = scrape(&hub, Some(&basic("registryRead", reader["primaryKey"].as_str().unwrap()))).await;
    assert_eq!(res.status().as_u16(), 401, "registryRead has no ServiceConnect");
}
