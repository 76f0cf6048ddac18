//! Firmware hosting over real HTTPS: signed uploads, resumable downloads for
//! devices with their own token, and the refusals.
#![allow(clippy::unwrap_used)]

mod common;

use common::mqtt::{create_device, http, now_unix, token};
use common::TestHub;
use ed25519_dalek::pkcs8::DecodePublicKey;
use rand::RngCore;
use serde_json::{json, Value};
use sha2::Digest;

fn policy_token(hub: &TestHub, name: &str) -> String {
    let policies: Value =
        serde_json::from_slice(&std::fs::read(hub.data_dir().join("policies.json")).unwrap()).unwrap();
    let key =
        policies.as_array().unwrap().iter().find(|p| p["keyName"] == name).unwrap()["primaryKey"].clone();
    ferrohub_core::sas::generate_token("localhost", key.as_str().unwrap(), Some(name), now_unix() + 3600)
        .unwrap()
}

fn url(hub: &TestHub, path: &str) -> String {
    format!("https://localhost:{}{path}", hub.https_port())
}

#[tokio::test]
async fn images_are_signed_and_downloads_resume_for_devices_only() {
    let hub = TestHub::start();
    let c = http(&hub);
    let owner = policy_token(&hub, "iothubowner");
    let mut image = vec![0u8; 3 * 1024 * 1024 + 17];
    rand::thread_rng().fill_bytes(&mut image);
    let sha = hex::encode(sha2::Sha256::digest(&image));

    let res = c
        .post(url(&hub, "/firmware-images?version=2.8.5&deviceType=chiller"))
        .header("authorization", &owner)
        .body(image.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let record: Value = res.json().await.unwrap();
    assert_eq!(record["sha256"], sha);
    assert_eq!(record["size"], image.len());
    assert_eq!(record["version"], "2.8.5");

    // The manifest verifies with the hub's public key, and says what was
    // uploaded.
    let pem = c
        .get(url(&hub, "/firmware-key"))
        .header("authorization", &owner)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let key = ed25519_dalek::VerifyingKey::from_public_key_pem(&pem).unwrap();
    let manifest = ferrohub_core::firmware::verify_manifest(
        record["fwManifest"].as_str().unwrap(),
        record["fwSignature"].as_str().unwrap(),
        &key,
    )
    .unwrap();
    assert_eq!(manifest.sha256, sha);
    assert_eq!(manifest.size, image.len() as u64);
    assert_eq!(manifest.device_type, "chiller");
    let listed: Value = c
        .get(url(&hub, "/firmware-images"))
        .header("authorization", &owner)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // A device downloads half, then resumes with Range.
    let dev_key = create_device(&hub, "dl").await;
    let dev_token = token("dl", &dev_key, now_unix() + 600);
    let path = format!("/firmware/{sha}");
    let half = image.len() / 2;
    let first = c
        .get(url(&hub, &path))
        .header("authorization", &dev_token)
        .header("range", format!("bytes=0-{}", half - 1))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 206);
    assert_eq!(first.headers()["etag"], format!("\"{sha}\""));
    let mut got = first.bytes().await.unwrap().to_vec();
    let rest = c
        .get(url(&hub, &path))
        .header("authorization", &dev_token)
        .header("range", format!("bytes={half}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status().as_u16(), 206);
    got.extend_from_slice(&rest.bytes().await.unwrap());
    assert_eq!(hex::encode(sha2::Sha256::digest(&got)), sha);
    let whole = c.get(url(&hub, &path)).header("authorization", &dev_token).send().await.unwrap();
    assert_eq!(whole.status().as_u16(), 200);
    assert_eq!(whole.bytes().await.unwrap().len(), image.len());
    let beyond = c
        .get(url(&hub, &path))
        .header("authorization", &dev_token)
        .header("range", format!("bytes={}-", image.len() + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status().as_u16(), 416);

    // Refused: no token, an expired token, a token signed with another
    // device's key, a service token without DeviceConnect.
    let other_key = create_device(&hub, "other").await;
    let refusals = [
        None,
        Some(token("dl", &dev_key, now_unix() - 5)),
        Some(token("dl", &other_key, now_unix() + 600)),
        Some(policy_token(&hub, "service")),
    ];
    for auth in refusals {
        let mut req = c.get(url(&hub, &path));
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 401, "{auth:?}");
    }

    // A device may read the signing key with its own token (and nothing
    // else of the service API); a token signed with another key may not.
    let res = c.get(url(&hub, "/firmware-key")).header("authorization", &dev_token).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.text().await.unwrap(), pem);
    let forged = token("dl", &other_key, now_unix() + 600);
    let res = c.get(url(&hub, "/firmware-key")).header("authorization", &forged).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let res = c.get(url(&hub, "/firmware-images")).header("authorization", &dev_token).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let unknown = c
        .get(url(&hub, &format!("/firmware/{}", "0".repeat(64))))
        .header("authorization", &dev_token)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);

    // Deleting is refused while a configuration names the image.
    let config = json!({"id":"fw","content":{"deviceContent":{"properties.desired.firmware":{"fwVersion":"2.8.5","fwPackageURI":format!("https://localhost{path}"),"fwPackageCheckValue":sha}}},"targetCondition":"tags.devicetype = 'chiller'","priority":1});
    let res = c
        .put(url(&hub, "/configurations/fw?api-version=2021-04-12"))
        .header("authorization", &owner)
        .header("content-type", "application/json")
        .body(config.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = c
        .delete(url(&hub, &format!("/firmware-images/{sha}")))
        .header("authorization", &owner)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert_eq!(res.headers()["iothub-errorcode"], "InvalidOperation");
    let res = c
        .delete(url(&hub, "/configurations/fw?api-version=2021-04-12"))
        .header("authorization", &owner)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let res = c
        .delete(url(&hub, &format!("/firmware-images/{sha}")))
        .header("authorization", &owner)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let res = c.get(url(&hub, &path)).header("authorization", &dev_token).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 404);
}

#[tokio::test]
async fn the_signing_key_is_created_once_and_kept() {
    let mut hub = TestHub::start();
    let key_file = hub.data_dir().join("signing-key.pem");
    let first = std::fs::read(&key_file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    hub.restart();
    assert_eq!(std::fs::read(&key_file).unwrap(), first);
}

#[test]
fn firmware_cli_uploads_lists_shows_and_deletes() {
    let hub = TestHub::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("image.bin");
    let mut image = vec![0u8; 1024 * 1024];
    rand::thread_rng().fill_bytes(&mut image);
    std::fs::write(&file, &image).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&image));

    let record = common::ok_json(&hub.cli(&[
        "firmware",
        "upload",
        "--version",
        "2.8.5",
        "--device-type",
        "chiller",
        file.to_str().unwrap(),
        "--hub-name",
        "h",
    ]));
    assert_eq!(record["sha256"], sha);
    assert_eq!(record["size"], image.len());
    assert_eq!(record["fwPackageURI"], format!("https://localhost:{}/firmware/{sha}", hub.https_port()));
    let list = common::ok_json(&hub.cli(&["firmware", "list"]));
    assert_eq!(list[0]["sha256"], sha);
    let shown = common::ok_json(&hub.cli(&["firmware", "show", "--sha256", &sha]));
    assert_eq!(shown["fwSignature"], record["fwSignature"]);
    let pem = common::ok(&hub.cli(&["firmware", "public-key"]));
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    // The desired `firmware` property, by version: the tutorial's three
    // fields plus the signed manifest.
    let desired = common::ok_json(&hub.cli(&["firmware", "desired", "--version", "2.8.5"]));
    assert_eq!(desired["fwVersion"], "2.8.5");
    assert_eq!(desired["fwPackageCheckValue"], sha);
    assert_eq!(desired["fwPackageURI"], record["fwPackageURI"]);
    assert_eq!(desired["fwManifest"], record["fwManifest"]);
    assert_eq!(desired["fwSignature"], record["fwSignature"]);
    assert_eq!(desired.as_object().unwrap().len(), 5, "{desired}");
    let err = common::fails(&hub.cli(&["firmware", "desired", "--version", "0.0.1"]));
    assert!(err.contains("no firmware image has version 0.0.1"), "{err}");
    // The same bytes under another version are refused.
    let err = common::fails(&hub.cli(&["firmware", "upload", "--version", "9.9.9", file.to_str().unwrap()]));
    assert!(err.contains("InvalidOperation"), "{err}");
    assert_eq!(common::ok(&hub.cli(&["firmware", "delete", "--sha256", &sha])), "");
    let err = common::fails(&hub.cli(&["firmware", "show", "--sha256", &sha]));
    assert!(err.contains("not found"), "{err}");
}
