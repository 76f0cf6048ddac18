//! Renewing a shared access policy's keys against a running hub, through
//! the CLI: old tokens are refused at once, the new keys work, swap swaps,
//! and the keys survive a restart. Only a policy with every permission may
//! list or renew.
#![allow(clippy::unwrap_used)]

mod common;

use common::mqtt::{http, now_unix};
use common::TestHub;
use serde_json::Value;

/// `GET /statistics/service` (ServiceConnect) with a token of `policy`
/// signed with `key`: the status.
async fn service_call(hub: &TestHub, policy: &str, key: &str) -> u16 {
    let token =
        ferrohub_core::sas::generate_token("localhost", key, Some(policy), now_unix() + 3600).unwrap();
    http(hub)
        .get(format!("https://localhost:{}/statistics/service?api-version=2021-04-12", hub.https_port()))
        .header("authorization", token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn policy(list: &Value, name: &str) -> Value {
    list.as_array().unwrap().iter().find(|p| p["keyName"] == name).unwrap().clone()
}

fn key(p: &Value, which: &str) -> String {
    p[which].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn renewing_a_policy_key_refuses_old_tokens_at_once_and_survives_a_restart() {
    let mut hub = TestHub::start();
    let before = policy(&common::ok_json(&hub.cli(&["policy", "list"])), "service");
    assert_eq!(before["rights"], "ServiceConnect");
    let (old_primary, old_secondary) = (key(&before, "primaryKey"), key(&before, "secondaryKey"));
    assert_eq!(service_call(&hub, "service", &old_primary).await, 200);

    let renewed = common::ok_json(&hub.cli(&[
        "policy",
        "renew-key",
        "--hub-name",
        "myhub",
        "--name",
        "service",
        "--renew-key",
        "primary",
    ]));
    let new_primary = key(&renewed, "primaryKey");
    assert_ne!(new_primary, old_primary);
    assert_eq!(key(&renewed, "secondaryKey"), old_secondary);
    assert_eq!(renewed["rights"], "ServiceConnect");
    // Right after: the old primary's token is refused, the new one and the
    // untouched secondary work.
    assert_eq!(service_call(&hub, "service", &old_primary).await, 401);
    assert_eq!(service_call(&hub, "service", &new_primary).await, 200);
    assert_eq!(service_call(&hub, "service", &old_secondary).await, 200);
    // The connection string the CLI shows carries the new key, and works.
    let cs = common::ok_json(&hub.cli(&["connection-string", "show", "--policy-name", "service"]));
    let cs = cs["connectionString"].as_str().unwrap().to_owned();
    assert!(cs.contains(&new_primary), "{cs}");
    let port = hub.https_port().to_string();
    let out = hub
        .command()
        .args(["query", "-q", "SELECT * FROM devices", "--login", &cs, "--https-port", &port, "--ca"])
        .arg(hub.ca_file())
        .output()
        .unwrap();
    common::ok(&out);

    // Swap: the keys trade places, and the token of the old secondary (now
    // primary) still works.
    let swapped = common::ok_json(&hub.cli(&["policy", "renew-key", "-n", "service", "--renew-key", "swap"]));
    assert_eq!(
        (key(&swapped, "primaryKey"), key(&swapped, "secondaryKey")),
        (old_secondary.clone(), new_primary.clone())
    );
    assert_eq!(service_call(&hub, "service", &old_secondary).await, 200);

    // Secondary: the secondary (the renewed primary of before) is replaced.
    let second =
        common::ok_json(&hub.cli(&["policy", "renew-key", "-n", "service", "--renew-key", "secondary"]));
    assert_eq!(key(&second, "primaryKey"), old_secondary);
    assert_ne!(key(&second, "secondaryKey"), new_primary);
    assert_eq!(service_call(&hub, "service", &new_primary).await, 401);

    // The keys survive a SIGKILL and restart; the other policies never moved.
    hub.restart();
    let after = common::ok_json(&hub.cli(&["policy", "list"]));
    assert_eq!(policy(&after, "service"), second);
    assert_eq!(service_call(&hub, "service", &old_secondary).await, 200);
    assert_eq!(service_call(&hub, "service", &old_primary).await, 401);
    assert_eq!(service_call(&hub, "service", &new_primary).await, 401);
    let err = common::fails(&hub.cli(&["policy", "renew-key", "-n", "nobody", "--renew-key", "primary"]));
    assert!(err.contains("IotHubNotFound") || err.contains("does not exist"), "{err}");
}

#[tokio::test]
async fn only_a_policy_with_every_permission_lists_or_renews_policies() {
    let hub = TestHub::start();
    let list = common::ok_json(&hub.cli(&["policy", "list"]));
    let c = http(&hub);
    for name in ["registryReadWrite", "service", "device", "registryRead"] {
        let p = policy(&list, name);
        let token = ferrohub_core::sas::generate_token(
            "localhost",
            &key(&p, "primaryKey"),
            Some(name),
            now_unix() + 3600,
        )
        .unwrap();
        let renew = c
            .post(format!(
                "https://localhost:{}/ferrohub/policies/iothubowner/renewKey?renewKey=primary",
                hub.https_port()
            ))
            .header("authorization", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(renew.status().as_u16(), 401, "{name}");
        assert_eq!(renew.headers()["iothub-errorcode"], "IotHubUnauthorized", "{name}");
        let listed = c
            .get(format!("https://localhost:{}/ferrohub/policies", hub.https_port()))
            .header("authorization", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(listed.status().as_u16(), 401, "{name}");
    }
    // Nothing moved, and a bad renewKey is Azure's 400.
    assert_eq!(common::ok_json(&hub.cli(&["policy", "list"])), list);
    let owner = common::mqtt::owner_token(&hub);
    let bad = c
        .post(format!(
            "https://localhost:{}/ferrohub/policies/service/renewKey?renewKey=both",
            hub.https_port()
        ))
        .header("authorization", &owner)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    assert_eq!(bad.headers()["iothub-errorcode"], "ArgumentInvalid");
}
