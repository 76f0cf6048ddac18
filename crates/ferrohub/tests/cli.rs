//! The `az iot hub`-shaped CLI against a real `ferrohub serve`: every
//! command, az's ignored flags, output formats, errors, and where
//! credentials, ports and the CA come from.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{fails, ok, ok_json, TestHub};
use ferrohub_core::sas::SasToken;
use serde_json::{json, Value};

fn create(hub: &TestHub, id: &str) -> Value {
    ok_json(&hub.cli(&["device-identity", "create", "--device-id", id]))
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The key of `policy` in the hub's policies.json.
fn policy_key(hub: &TestHub, policy: &str) -> String {
    let text = std::fs::read_to_string(hub.data_dir().join("policies.json")).unwrap();
    let policies: Value = serde_json::from_str(&text).unwrap();
    let p = policies.as_array().unwrap().iter().find(|p| p["keyName"] == policy).unwrap();
    p["primaryKey"].as_str().unwrap().to_owned()
}

#[test]
fn the_tutorials_three_commands_work_with_az_arguments() {
    let hub = TestHub::start();
    let hubname = "my-tutorial-hub";
    let device = ok_json(&hub.cli(&[
        "device-identity",
        "create",
        "--device-id",
        "MyFirmwareUpdateDevice",
        "--hub-name",
        hubname,
        "--resource-group",
        "tutorial-iot-hub-rg",
    ]));
    assert_eq!(device["deviceId"], "MyFirmwareUpdateDevice");
    assert_eq!(device["status"], "enabled");
    let primary = device["authentication"]["symmetricKey"]["primaryKey"].as_str().unwrap().to_owned();
    assert_eq!(primary.len(), 44, "hub-generated 32-byte key");

    let twin = ok_json(&hub.cli(&[
        "device-twin",
        "update",
        "--device-id",
        "MyFirmwareUpdateDevice",
        "--hub-name",
        hubname,
        "--set",
        r#"tags={"devicetype":"chiller"}"#,
    ]));
    assert_eq!(twin["tags"], json!({"devicetype": "chiller"}));

    let cs = ok_json(&hub.cli(&[
        "device-identity",
        "show-connection-string",
        "--device-id",
        "MyFirmwareUpdateDevice",
        "--hub-name",
        hubname,
    ]));
    assert_eq!(
        cs,
        json!({"connectionString": format!("HostName=localhost;DeviceId=MyFirmwareUpdateDevice;SharedAccessKey={primary}")})
    );

    let twin = ok_json(&hub.cli(&["device-twin", "show", "--device-id", "MyFirmwareUpdateDevice"]));
    assert_eq!(twin["tags"]["devicetype"], "chiller");
}

#[test]
fn every_hub_command_accepts_and_ignores_az_hub_flags() {
    let hub = TestHub::start();
    let az = ["--hub-name", "h", "-g", "rg", "--name", "n"];
    let with_az = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(az);
        hub.cli(&all)
    };
    ok(&with_az(&["device-identity", "create", "-d", "az1"]));
    ok(&with_az(&["device-identity", "show", "-d", "az1"]));
    ok(&with_az(&["device-identity", "list"]));
    ok(&with_az(&["device-identity", "update", "-d", "az1", "--set", "status=disabled"]));
    ok(&with_az(&["device-identity", "connection-string", "show", "-d", "az1"]));
    ok(&with_az(&["device-identity", "renew-key", "-d", "az1", "--key-type", "swap"]));
    ok(&with_az(&["device-twin", "show", "-d", "az1"]));
    ok(&with_az(&["device-twin", "update", "-d", "az1", "--tags", r#"{"a":1}"#]));
    ok(&with_az(&["device-twin", "replace", "-d", "az1", "--json", r#"{"tags":{"b":2}}"#]));
    ok(&with_az(&["connection-string", "show"]));
    ok(&with_az(&["show-connection-string"]));
    ok(&with_az(&["generate-sas-token"]));
    ok(&with_az(&["generate-sas-token", "-d", "az1"]));
    ok(&with_az(&["env"]));
    ok(&with_az(&["healthcheck"]));
    ok(&with_az(&["device-identity", "delete", "-d", "az1"]));
    // `-n` is the short form of --hub-name.
    ok(&hub.cli(&["device-identity", "list", "-n", "h"]));
    let gone = fails(&hub.cli(&["device-identity", "show", "-d", "az1", "-n", "h"]));
    assert!(gone.contains("DeviceNotFound"), "{gone}");
}

#[test]
fn create_takes_azs_options() {
    let hub = TestHub::start();
    let pk = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let sk = "HxQdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";
    let d = ok_json(&hub.cli(&[
        "device-identity",
        "create",
        "--device-id",
        "opts",
        "--status",
        "disabled",
        "--status-reason",
        "not yet installed",
        "--primary-key",
        pk,
        "--secondary-key",
        sk,
        "--edge-enabled",
    ]));
    assert_eq!(d["status"], "disabled");
    assert_eq!(d["statusReason"], "not yet installed");
    assert_eq!(d["authentication"]["type"], "sas");
    assert_eq!(d["authentication"]["symmetricKey"], json!({"primaryKey": pk, "secondaryKey": sk}));
    assert_eq!(d["capabilities"]["iotEdge"], true);

    let ptp = "aabbccddeeff00112233445566778899aabbccdd";
    let stp = "00112233445566778899aabbccddeeff00112233";
    let d = ok_json(&hub.cli(&[
        "device-identity",
        "create",
        "-d",
        "x509dev",
        "--auth-method",
        "x509_thumbprint",
        "--ptp",
        ptp,
        "--stp",
        stp,
        "--ee",
    ]));
    assert_eq!(d["authentication"]["type"], "selfSigned");
    let thumbs = &d["authentication"]["x509Thumbprint"];
    assert!(thumbs["primaryThumbprint"].as_str().unwrap().eq_ignore_ascii_case(ptp));
    assert!(thumbs["secondaryThumbprint"].as_str().unwrap().eq_ignore_ascii_case(stp));
    assert_eq!(d["capabilities"]["iotEdge"], true);
    let cs = ok(&hub.cli(&["device-identity", "connection-string", "show", "-d", "x509dev", "-o", "tsv"]));
    assert_eq!(cs, "HostName=localhost;DeviceId=x509dev;x509=true\n");

    let err = fails(&hub.cli(&["device-identity", "create", "-d", "x509dev"]));
    assert!(err.contains("DeviceAlreadyExists"), "{err}");
    let err = fails(&hub.cli(&["device-identity", "create", "-d", "nothumb", "--am", "x509_thumbprint"]));
    assert!(err.contains("--primary-thumbprint"), "{err}");
    let err = fails(&hub.cli(&["device-identity", "create", "-d", "bad/id"]));
    assert!(err.contains("ArgumentInvalid") || err.contains("HTTP 400"), "{err}");
}

#[test]
fn show_and_errors_of_unknown_devices() {
    let hub = TestHub::start();
    let created = create(&hub, "shown");
    let shown = ok_json(&hub.cli(&["device-identity", "show", "--device-id", "shown"]));
    assert_eq!(shown, created);

    let out = hub.cli(&["device-identity", "show", "--device-id", "nope"]);
    let err = fails(&out);
    assert!(err.contains("DeviceNotFound"), "{err}");
    assert!(out.stdout.is_empty());
    let err = fails(&hub.cli(&["device-twin", "show", "-d", "nope"]));
    assert!(err.contains("DeviceNotFound"), "{err}");
    let err = fails(&hub.cli(&["device-identity", "delete", "-d", "nope"]));
    assert!(err.contains("DeviceNotFound"), "{err}");
    let err = fails(&hub.cli(&["generate-sas-token", "-d", "nope"]));
    assert!(err.contains("DeviceNotFound"), "{err}");
}

#[test]
fn list_honours_top_and_every_output_format() {
    let hub = TestHub::start();
    for id in ["l1", "l2", "l3"] {
        create(&hub, id);
    }
    let all = ok_json(&hub.cli(&["device-identity", "list"]));
    let mut ids: Vec<&str> =
        all.as_array().unwrap().iter().map(|d| d["deviceId"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["l1", "l2", "l3"]);
    let two = ok_json(&hub.cli(&["device-identity", "list", "--top", "2"]));
    assert_eq!(two.as_array().unwrap().len(), 2);
    let unlimited = ok_json(&hub.cli(&["device-identity", "list", "--top", "-1"]));
    assert_eq!(unlimited.as_array().unwrap().len(), 3);
    fails(&hub.cli(&["device-identity", "list", "--top", "0"]));

    // az's JSON is indented by two spaces.
    let text = ok(&hub.cli(&["device-identity", "list", "-o", "json"]));
    assert!(text.starts_with("[\n  {\n    \"deviceId\""), "{text}");

    let tsv = ok(&hub.cli(&["device-identity", "list", "-o", "tsv"]));
    let lines: Vec<&str> = tsv.lines().collect();
    assert_eq!(lines.len(), 3, "{tsv}");
    for line in &lines {
        let cells: Vec<&str> = line.split('\t').collect();
        assert!(cells.iter().any(|c| c.starts_with('l') && c.len() == 2), "{line}");
        assert!(cells.contains(&"enabled") && cells.contains(&"Disconnected"), "{line}");
    }

    let table = ok(&hub.cli(&["device-identity", "list", "--output", "table"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[0].contains("DeviceId") && lines[0].contains("Status"), "{table}");
    assert!(!lines[0].contains("Etag"), "az leaves etag out of tables: {table}");
    assert!(lines[1].chars().all(|c| c == '-' || c == ' '), "{table}");
    assert!(lines[2..].iter().all(|l| l.contains("enabled")), "{table}");
}

#[test]
fn update_supports_generic_set_and_flags_with_etags() {
    let hub = TestHub::start();
    let created = create(&hub, "upd");
    let d = ok_json(&hub.cli(&[
        "device-identity",
        "update",
        "-d",
        "upd",
        "--set",
        "status=disabled",
        "--set",
        "statusReason=maintenance",
        "--set",
        "capabilities.iotEdge=true",
    ]));
    assert_eq!(d["status"], "disabled");
    assert_eq!(d["statusReason"], "maintenance");
    assert_eq!(d["capabilities"]["iotEdge"], true);
    assert_eq!(d["authentication"], created["authentication"], "keys are kept");
    assert_ne!(d["etag"], created["etag"]);

    let d2 = ok_json(&hub.cli(&[
        "device-identity",
        "update",
        "-d",
        "upd",
        "--status",
        "enabled",
        "--status-reason",
        "back",
        "--ee",
        "false",
        "--etag",
        d["etag"].as_str().unwrap(),
    ]));
    assert_eq!((d2["status"].as_str(), d2["statusReason"].as_str()), (Some("enabled"), Some("back")));
    assert_eq!(d2["capabilities"]["iotEdge"], false);

    // The first update's etag is stale now.
    let err = fails(&hub.cli(&[
        "device-identity",
        "update",
        "-d",
        "upd",
        "--status",
        "disabled",
        "--etag",
        d["etag"].as_str().unwrap(),
    ]));
    assert!(err.contains("PreconditionFailed"), "{err}");
    let shown = ok_json(&hub.cli(&["device-identity", "show", "-d", "upd"]));
    assert_eq!(shown["status"], "enabled");

    let err = fails(&hub.cli(&["device-identity", "update", "-d", "upd", "--set", "status=sleepy"]));
    assert!(err.contains("--set"), "{err}");
    let err = fails(&hub.cli(&["device-identity", "update", "-d", "upd", "--set", "noequals"]));
    assert!(err.contains("PATH=VALUE"), "{err}");
}

#[test]
fn delete_honours_etags_and_prints_nothing() {
    let hub = TestHub::start();
    let d = create(&hub, "del");
    ok(&hub.cli(&["device-identity", "update", "-d", "del", "--status", "disabled"]));
    let err =
        fails(&hub.cli(&["device-identity", "delete", "-d", "del", "--etag", d["etag"].as_str().unwrap()]));
    assert!(err.contains("PreconditionFailed"), "{err}");
    let current = ok_json(&hub.cli(&["device-identity", "show", "-d", "del"]));
    let out = ok(&hub.cli(&[
        "device-identity",
        "delete",
        "-d",
        "del",
        "--etag",
        current["etag"].as_str().unwrap(),
    ]));
    assert_eq!(out, "");
    let err = fails(&hub.cli(&["device-identity", "show", "-d", "del"]));
    assert!(err.contains("DeviceNotFound"), "{err}");

    create(&hub, "del2");
    assert_eq!(ok(&hub.cli(&["device-identity", "delete", "-d", "del2"])), "");
    assert_eq!(ok_json(&hub.cli(&["device-identity", "list"])), json!([]));
}

#[test]
fn device_connection_strings_in_both_spellings_and_key_types() {
    let hub = TestHub::start();
    let d = create(&hub, "csdev");
    let keys = &d["authentication"]["symmetricKey"];
    let expect =
        |key: &Value| format!("HostName=localhost;DeviceId=csdev;SharedAccessKey={}", key.as_str().unwrap());
    let a = ok_json(&hub.cli(&["device-identity", "connection-string", "show", "--device-id", "csdev"]));
    let b = ok_json(&hub.cli(&["device-identity", "show-connection-string", "--device-id", "csdev"]));
    assert_eq!(a, b);
    assert_eq!(a["connectionString"], expect(&keys["primaryKey"]));
    let s = ok_json(&hub.cli(&[
        "device-identity",
        "connection-string",
        "show",
        "-d",
        "csdev",
        "--key-type",
        "secondary",
    ]));
    assert_eq!(s["connectionString"], expect(&keys["secondaryKey"]));
    let tsv = ok(&hub.cli(&["device-identity", "show-connection-string", "-d", "csdev", "-o", "tsv"]));
    assert_eq!(tsv, format!("{}\n", expect(&keys["primaryKey"])));
}

#[test]
fn renew_key_regenerates_or_swaps_with_the_etag() {
    let hub = TestHub::start();
    let d0 = create(&hub, "rk");
    let k = |d: &Value, which: &str| d["authentication"]["symmetricKey"][which].as_str().unwrap().to_owned();

    let d1 = ok_json(&hub.cli(&["device-identity", "renew-key", "-d", "rk", "--key-type", "primary"]));
    assert_ne!(k(&d1, "primaryKey"), k(&d0, "primaryKey"));
    assert_eq!(k(&d1, "secondaryKey"), k(&d0, "secondaryKey"));
    assert_eq!(base64_len(&k(&d1, "primaryKey")), 32);
    assert_ne!(d1["etag"], d0["etag"]);

    let d2 = ok_json(&hub.cli(&["device-identity", "renew-key", "-d", "rk", "--key-type", "secondary"]));
    assert_eq!(k(&d2, "primaryKey"), k(&d1, "primaryKey"));
    assert_ne!(k(&d2, "secondaryKey"), k(&d1, "secondaryKey"));

    let d3 = ok_json(&hub.cli(&["device-identity", "renew-key", "-d", "rk", "--key-type", "swap"]));
    assert_eq!(k(&d3, "primaryKey"), k(&d2, "secondaryKey"));
    assert_eq!(k(&d3, "secondaryKey"), k(&d2, "primaryKey"));

    let shown = ok_json(&hub.cli(&["device-identity", "show", "-d", "rk"]));
    assert_eq!(shown["authentication"], d3["authentication"], "the renewal was stored");

    let x = ok_json(&hub.cli(&[
        "device-identity",
        "create",
        "-d",
        "rk-x509",
        "--ptp",
        "aabbccddeeff00112233445566778899aabbccdd",
    ]));
    assert_eq!(x["authentication"]["type"], "selfSigned");
    let err = fails(&hub.cli(&["device-identity", "renew-key", "-d", "rk-x509", "--key-type", "primary"]));
    assert!(err.contains("sas"), "{err}");
}

fn base64_len(key: &str) -> usize {
    // 44 base64 characters with one '=' pad encode 32 bytes.
    let pad = key.chars().rev().take_while(|c| *c == '=').count();
    key.len() / 4 * 3 - pad
}

#[test]
fn twin_update_merges_set_desired_and_tags_and_checks_etags() {
    let hub = TestHub::start();
    create(&hub, "tw");
    let t0 = ok_json(&hub.cli(&["device-twin", "show", "-d", "tw"]));
    assert_eq!(t0["deviceId"], "tw");

    let t1 = ok_json(&hub.cli(&[
        "device-twin",
        "update",
        "-d",
        "tw",
        "--desired",
        r#"{"fw":{"version":"1.1"}}"#,
        "--tags",
        r#"{"site":"north"}"#,
    ]));
    assert_eq!(t1["properties"]["desired"]["fw"]["version"], "1.1");
    assert_eq!(t1["tags"]["site"], "north");

    let t2 = ok_json(&hub.cli(&[
        "device-twin",
        "update",
        "-d",
        "tw",
        "--set",
        "properties.desired.interval=30",
        "--set",
        r#"tags.floor=2"#,
        "--etag",
        t1["etag"].as_str().unwrap(),
    ]));
    assert_eq!(t2["properties"]["desired"]["interval"], 30);
    assert_eq!(t2["properties"]["desired"]["fw"]["version"], "1.1", "other desired properties stay");
    assert_eq!(t2["tags"], json!({"site": "north", "floor": 2}));

    // null deletes, through --set as through --tags.
    let t3 = ok_json(&hub.cli(&["device-twin", "update", "-d", "tw", "--set", "tags.floor=null"]));
    assert_eq!(t3["tags"], json!({"site": "north"}));

    let err = fails(&hub.cli(&[
        "device-twin",
        "update",
        "-d",
        "tw",
        "--tags",
        r#"{"x":1}"#,
        "--etag",
        t1["etag"].as_str().unwrap(),
    ]));
    assert!(err.contains("PreconditionFailed"), "{err}");
    let err = fails(&hub.cli(&["device-twin", "update", "-d", "tw", "--set", "properties.reported.x=1"]));
    assert!(err.contains("properties.desired"), "{err}");
    let err = fails(&hub.cli(&["device-twin", "update", "-d", "tw"]));
    assert!(err.contains("nothing to update"), "{err}");
    let err = fails(&hub.cli(&["device-twin", "update", "-d", "tw", "--desired", "{not json"]));
    assert!(err.contains("--desired"), "{err}");
}

#[test]
fn twin_replace_takes_a_file_or_inline_json() {
    let hub = TestHub::start();
    create(&hub, "rep");
    ok(&hub.cli(&[
        "device-twin",
        "update",
        "-d",
        "rep",
        "--tags",
        r#"{"old":true}"#,
        "--desired",
        r#"{"a":1}"#,
    ]));

    let t = ok_json(&hub.cli(&[
        "device-twin",
        "replace",
        "-d",
        "rep",
        "--json",
        r#"{"tags":{"new":"yes"},"properties":{"desired":{"b":2}}}"#,
    ]));
    assert_eq!(t["tags"], json!({"new": "yes"}));
    assert_eq!(t["properties"]["desired"]["b"], 2);
    assert!(t["properties"]["desired"].get("a").is_none(), "replace drops what is not given: {t}");

    let file = hub.data_dir().parent().unwrap().join("twin.json");
    std::fs::write(&file, r#"{"tags":{"fromfile":1},"properties":{"desired":{}}}"#).unwrap();
    let t = ok_json(&hub.cli(&["device-twin", "replace", "-d", "rep", "--json", file.to_str().unwrap()]));
    assert_eq!(t["tags"], json!({"fromfile": 1}));

    let err = fails(&hub.cli(&["device-twin", "replace", "-d", "rep", "--json", "{nope", "--etag", "\"x\""]));
    assert!(err.contains("--json"), "{err}");
    let err = fails(&hub.cli(&["device-twin", "replace", "-d", "rep", "--json", "{}", "--etag", "stale"]));
    assert!(err.contains("PreconditionFailed"), "{err}");
}

#[test]
fn hub_connection_strings_for_any_policy() {
    let hub = TestHub::start();
    let owner = ok_json(&hub.cli(&["connection-string", "show"]));
    assert_eq!(owner["connectionString"], hub.connection_string());
    let alias = ok_json(&hub.cli(&["show-connection-string", "--policy-name", "iothubowner"]));
    assert_eq!(alias, owner);
    let tsv = ok(&hub.cli(&["connection-string", "show", "-o", "tsv"]));
    assert_eq!(tsv, format!("{}\n", hub.connection_string()));

    let service = ok_json(&hub.cli(&["connection-string", "show", "--policy-name", "service"]));
    assert_eq!(
        service["connectionString"],
        format!(
            "HostName=localhost;SharedAccessKeyName=service;SharedAccessKey={}",
            policy_key(&hub, "service")
        )
    );
    let table = ok(&hub.cli(&["connection-string", "show", "-o", "table"]));
    assert!(table.starts_with("ConnectionString\n---"), "{table}");

    let err = fails(&hub.cli(&["connection-string", "show", "--policy-name", "nosuch"]));
    assert!(err.contains("nosuch") && err.contains("registryRead"), "{err}");
}

#[test]
fn sas_tokens_for_policies_and_devices_verify_and_are_accepted() {
    let hub = TestHub::start();
    let d = create(&hub, "sasdev");

    let policy = ok_json(&hub.cli(&["generate-sas-token"]));
    let token = policy["sas"].as_str().unwrap().to_owned();
    let parsed = SasToken::parse(&token).unwrap();
    assert_eq!(parsed.skn(), Some("iothubowner"));
    assert_eq!(parsed.raw_resource(), "localhost");
    assert!(parsed.verify(&policy_key(&hub, "iothubowner")));
    assert!((parsed.expiry() - (now() + 3600)).abs() < 60, "default duration is an hour");

    let service =
        ok_json(&hub.cli(&["generate-sas-token", "--policy-name", "registryRead", "--duration", "120"]));
    let parsed = SasToken::parse(service["sas"].as_str().unwrap()).unwrap();
    assert_eq!(parsed.skn(), Some("registryRead"));
    assert!(parsed.verify(&policy_key(&hub, "registryRead")));
    assert!((parsed.expiry() - (now() + 120)).abs() < 60);

    let device = ok_json(&hub.cli(&["generate-sas-token", "--device-id", "sasdev"]));
    let parsed = SasToken::parse(device["sas"].as_str().unwrap()).unwrap();
    assert_eq!(parsed.skn(), None);
    assert_eq!(parsed.raw_resource(), "localhost%2Fdevices%2Fsasdev");
    assert!(parsed.verify(d["authentication"]["symmetricKey"]["primaryKey"].as_str().unwrap()));

    // The hub accepts the policy token on the service API.
    let ca = std::fs::read(hub.ca_file()).unwrap();
    let url = format!("https://localhost:{}/statistics/devices?api-version=2021-04-12", hub.https_port());
    let status = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        http.get(&url).header("authorization", &token).send().await.unwrap().status()
    });
    assert_eq!(status, 200);
}

#[test]
fn env_prints_exports_that_make_a_plain_shell_find_the_hub() {
    let hub = TestHub::start();
    let text = ok(&hub.cli(&["env"]));
    let dir = std::path::absolute(hub.data_dir()).unwrap();
    let ca = dir.join("ca.pem").display().to_string();
    let bundle = dir.join("ca-bundle.pem").display().to_string();
    for expected in [
        format!("export NODE_EXTRA_CA_CERTS={ca}"),
        format!("export FERROHUB_CA={ca}"),
        format!("export REQUESTS_CA_BUNDLE={bundle}"),
        format!("export SSL_CERT_FILE={bundle}"),
        format!("export IOTHUB_CONNECTION_STRING='{}'", hub.connection_string()),
        format!("export FERROHUB_HTTPS_PORT={}", hub.https_port()),
        format!("export FERROHUB_MQTT_PORT={}", hub.mqtt_port()),
    ] {
        assert!(text.lines().any(|l| l == expected), "missing `{expected}` in:\n{text}");
    }

    // In a shell that evaluated them, commands work without --data-dir or
    // ports: credentials, port and CA all come from the environment (the
    // default data dir is an empty one).
    let empty_home = hub.data_dir().parent().unwrap().join("home");
    std::fs::create_dir_all(&empty_home).unwrap();
    let script = r#"eval "$("$FH" env --data-dir "$DIR")" && "$FH" device-identity create -d via-env >/dev/null && "$FH" device-identity list -o tsv"#;
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &empty_home)
        .env("FH", common::BIN)
        .env("DIR", hub.data_dir())
        .output()
        .unwrap();
    let listed = ok(&out);
    assert!(listed.contains("via-env"), "{listed}");

    hub_json_is_required_by_env(&hub);
}

fn hub_json_is_required_by_env(hub: &TestHub) {
    let elsewhere = hub.data_dir().parent().unwrap().join("no-hub-here");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = hub.command().args(["env", "--data-dir"]).arg(&elsewhere).output().unwrap();
    let err = fails(&out);
    assert!(err.contains("hub.json"), "{err}");
}

#[test]
fn healthcheck_passes_while_the_hub_runs_and_fails_after() {
    let mut hub = TestHub::start();
    let health = ok_json(&hub.cli(&["healthcheck"]));
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["httpsPort"], hub.https_port());
    let quiet = hub.cli(&["healthcheck", "-o", "none"]);
    assert_eq!(ok(&quiet), "");

    let port = hub.https_port().to_string();
    let data_dir = hub.data_dir().to_path_buf();
    hub.sigkill();
    let out = hub
        .command()
        .args(["healthcheck", "--https-port", &port, "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    let err = fails(&out);
    assert!(err.contains("cannot reach the hub"), "{err}");
}

#[test]
fn login_beats_the_environment_which_beats_the_data_dir() {
    let hub = TestHub::start();
    create(&hub, "cred");
    let owner_key = policy_key(&hub, "iothubowner");
    let wrong = "HostName=localhost;SharedAccessKeyName=iothubowner;SharedAccessKey=d3JvbmdrZXl3cm9uZ2tleXdyb25na2V5d3Jvbmc=";
    let read_only = format!(
        "HostName=localhost;SharedAccessKeyName=registryRead;SharedAccessKey={}",
        policy_key(&hub, "registryRead")
    );
    let base = |cmd: &mut std::process::Command| {
        cmd.arg("--data-dir").arg(hub.data_dir()).args(["--https-port", &hub.https_port().to_string()]);
    };

    // The data dir's iothubowner works when nothing else is given.
    let mut c = hub.command();
    c.args(["device-identity", "show", "-d", "cred"]);
    base(&mut c);
    ok(&c.output().unwrap());

    // IOTHUB_CONNECTION_STRING is used before the data dir: a wrong key fails.
    let mut c = hub.command();
    c.env("IOTHUB_CONNECTION_STRING", wrong).args(["device-identity", "show", "-d", "cred"]);
    base(&mut c);
    let err = fails(&c.output().unwrap());
    assert!(err.contains("IotHubUnauthorizedAccess") || err.contains("HTTP 401"), "{err}");

    // --login is used before the environment.
    let mut c = hub.command();
    c.env("IOTHUB_CONNECTION_STRING", wrong).args([
        "device-identity",
        "show",
        "-d",
        "cred",
        "--login",
        &read_only,
    ]);
    base(&mut c);
    assert_eq!(ok_json(&c.output().unwrap())["deviceId"], "cred");

    // ... and acts with that policy's rights only.
    let err = fails(&hub.cli(&["device-identity", "create", "-d", "nope", "--login", &read_only]));
    assert!(err.contains("HTTP 401") || err.contains("HTTP 403"), "{err}");

    // A policy the login string is not: its key comes from policies.json of
    // this hub's data dir.
    let cs = ok_json(&hub.cli(&["connection-string", "show", "--login", &read_only]));
    assert_eq!(
        cs["connectionString"],
        format!("HostName=localhost;SharedAccessKeyName=iothubowner;SharedAccessKey={owner_key}")
    );
}

#[test]
fn ports_and_ca_come_from_flags_then_env_then_a_matching_hub_json() {
    let hub = TestHub::start();
    let show = ["device-identity", "list"];
    let dir = hub.data_dir().to_path_buf();
    let port = hub.https_port().to_string();
    let closed = free_port().to_string();

    // hub.json alone (no port flags, no env).
    let out = hub.command().args(show).arg("--data-dir").arg(&dir).output().unwrap();
    ok(&out);

    // The environment beats hub.json ...
    let out = hub
        .command()
        .env("FERROHUB_HTTPS_PORT", &closed)
        .args(show)
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let err = fails(&out);
    assert!(err.contains(&format!(":{closed}/")), "{err}");

    // ... and the flag beats the environment.
    let out = hub
        .command()
        .env("FERROHUB_HTTPS_PORT", &closed)
        .args(show)
        .args(["--https-port", &port, "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    ok(&out);

    // hub.json is not used for a host it does not list: 127.0.0.1 is served
    // (the certificate names it) but hub.json lists only localhost, so
    // neither its port nor its CA apply ...
    let by_ip = hub.connection_string().replace("HostName=localhost", "HostName=127.0.0.1");
    let out = hub.command().args(show).args(["--login", &by_ip, "--data-dir"]).arg(&dir).output().unwrap();
    let err = fails(&out);
    assert!(err.contains("https://127.0.0.1/"), "default port 443 expected: {err}");

    // ... without the CA the hub's certificate is not trusted ...
    let out = hub
        .command()
        .args(show)
        .args(["--login", &by_ip, "--https-port", &port, "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = fails(&out);
    assert!(err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"), "{err}");

    // ... and with --ca (or FERROHUB_CA) it is.
    let out = hub
        .command()
        .env("FERROHUB_CA", hub.ca_file())
        .args(show)
        .args(["--login", &by_ip, "--https-port", &port, "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    ok(&out);
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn restart_keeps_the_data_dir_and_its_devices() {
    let mut hub = TestHub::start();
    let d = create(&hub, "durable");
    hub.sigkill();
    assert!(hub.pid().is_none());
    hub.restart();
    assert_ne!(hub.https_port(), 0);
    let shown = ok_json(&hub.cli(&["device-identity", "show", "-d", "durable"]));
    assert_eq!(shown["authentication"], d["authentication"]);
    let info = hub.hub_json().unwrap();
    assert_eq!(info["httpsPort"], hub.https_port());
}

#[test]
fn usage_errors_exit_non_zero() {
    let hub = TestHub::start();
    let out = hub.cli(&["device-identity", "create"]);
    // 1 like every other error: 2 and 3 are what a `--watch` ended in.
    assert_eq!(out.status.code(), Some(1), "clap usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--device-id"));
    let out = hub.cli(&["device-identity", "show", "-d", "x", "-o", "yaml-ish"]);
    assert!(!out.status.success());
    let out = hub.cli(&["generate-sas-token", "-d", "x", "--policy-name", "service"]);
    assert!(!out.status.success());
}
