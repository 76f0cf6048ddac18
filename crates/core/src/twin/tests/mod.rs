//! Tests of the twin operations: merges, versions, etags, metadata, repeated values,
//! replace and the service/device split. Limit boundaries are in `limits.rs`.

#![allow(clippy::unwrap_used)]

mod hub;
mod limits;

use serde_json::{json, Value};

use super::*;
use crate::error::ErrorCode;
use crate::identity::{
    Authentication, AuthenticationType, Capabilities, ConnectionState, Device, DeviceStatus, SymmetricKey,
    X509Thumbprint,
};
use crate::time::UNSET_TIME;

/// `n` seconds after a fixed instant.
fn t(n: i128) -> Timestamp {
    Timestamp::from_unix_nanos(1_700_000_000_000_000_000 + n * 1_000_000_000)
}

fn iso(n: i128) -> String {
    t(n).to_iso()
}

fn device() -> Device {
    Device {
        device_id: "dev1".into(),
        generation_id: "g".into(),
        etag: "MQ==".into(),
        connection_state: ConnectionState::Disconnected,
        status: DeviceStatus::Enabled,
        status_reason: None,
        connection_state_updated_time: UNSET_TIME.into(),
        status_updated_time: UNSET_TIME.into(),
        last_activity_time: UNSET_TIME.into(),
        cloud_to_device_message_count: 0,
        authentication: Authentication {
            kind: AuthenticationType::Sas,
            symmetric_key: SymmetricKey::default(),
            x509_thumbprint: X509Thumbprint::default(),
        },
        capabilities: Capabilities::default(),
    }
}

fn desired(patch: Value) -> Value {
    json!({"properties": {"desired": patch}})
}

fn obj(v: &Props) -> Value {
    Value::Object(v.clone())
}

/// A twin with tags, desired and reported content written at t(1).
fn populated() -> TwinState {
    let mut twin = TwinState::new(t(0));
    twin.apply_service_patch(
        &json!({
            "tags": {"site": {"building": "43", "floor": 1}},
            "properties": {"desired": {"cfg": {"rate": 5, "mode": "eco"}, "fw": "1.0"}},
        }),
        t(1),
    )
    .unwrap();
    twin.apply_reported_patch(&json!({"temp": 21.5, "net": {"kind": "wifi"}}), t(1)).unwrap();
    twin
}

/// Found by the `twin` fuzz target (fuzz/corpus/twin/regression-float-
/// round-trip): serde_json's default float parsing may land one ULP off,
/// so a number the store wrote read back as another and a twin changed
/// across a restart. The workspace enables `float_roundtrip`.
#[test]
fn numbers_read_back_from_the_store_unchanged() {
    let mut twin = TwinState::new(t(1));
    let big = "299999999999999999999999999999999999999999999999999";
    let patch: Value =
        serde_json::from_str(&format!(r#"{{"a": {big}, "b": 55550000000000000000001777927353}}"#)).unwrap();
    twin.apply_reported_patch(&patch, t(2)).unwrap();
    let stored = serde_json::to_string(&twin).unwrap();
    assert_eq!(serde_json::from_str::<TwinState>(&stored).unwrap(), twin);
}

#[test]
fn a_fresh_twin_starts_at_version_one() {
    let twin = TwinState::new(t(0));
    assert_eq!((twin.version, twin.etag_seq, twin.desired.version, twin.reported.version), (1, 1, 1, 1));
    assert_eq!(twin.etag(), "AAAAAAAAAAE=");
    assert!(twin.tags.is_empty() && twin.configurations.is_empty());
    assert_eq!(obj(&twin.desired.metadata), json!({"$lastUpdated": iso(0), "$lastUpdatedVersion": 1}));
    assert_eq!(obj(&twin.reported.metadata), json!({"$lastUpdated": iso(0)}));
}

#[test]
fn etag_is_base64_of_the_big_endian_counter() {
    let mut twin = TwinState::new(t(0));
    for (seq, etag) in [(4, "AAAAAAAAAAQ="), (256, "AAAAAAAAAQA="), (u64::MAX, "//////////8=")] {
        twin.etag_seq = seq;
        assert_eq!(twin.etag(), etag);
    }
}

#[test]
fn service_patch_merges_tags_and_desired_recursively() {
    let mut twin = populated();
    let change = twin
        .apply_service_patch(
            &json!({
                "tags": {"site": {"floor": 2, "room": "b"}},
                "properties": {"desired": {"cfg": {"rate": 10}, "new": true}},
            }),
            t(2),
        )
        .unwrap();
    assert!(change.changed);
    assert_eq!(obj(&twin.tags), json!({"site": {"building": "43", "floor": 2, "room": "b"}}));
    assert_eq!(
        obj(&twin.desired.props),
        json!({"cfg": {"rate": 10, "mode": "eco"}, "fw": "1.0", "new": true})
    );
}

#[test]
fn one_patch_moves_each_counter_by_exactly_one() {
    let mut twin = populated();
    let before = twin.clone();
    twin.apply_service_patch(&json!({"tags": {"a": 1}, "properties": {"desired": {"b": 2}}}), t(2)).unwrap();
    assert_eq!(twin.version, before.version + 1, "tags + desired in one PATCH is one change");
    assert_eq!(twin.etag_seq, before.etag_seq + 1);
    assert_eq!(twin.desired.version, before.desired.version + 1);
    assert_eq!(twin.reported.version, before.reported.version);

    let before = twin.clone();
    let change = twin.apply_service_patch(&json!({"tags": {"a": 2}}), t(3)).unwrap();
    assert_eq!(change, TwinChange { changed: true, desired_patch: None });
    assert_eq!((twin.version, twin.etag_seq), (before.version + 1, before.etag_seq + 1));
    assert_eq!(twin.desired, before.desired, "a tags-only patch leaves desired alone");

    let before = twin.clone();
    let change = twin.apply_reported_patch(&json!({"temp": 22}), t(4)).unwrap();
    assert_eq!(change, TwinChange { changed: true, desired_patch: None });
    assert_eq!(twin.reported.version, before.reported.version + 1);
    assert_eq!((twin.version, twin.etag_seq), (before.version + 1, before.etag_seq + 1));
    assert_ne!(twin.etag(), before.etag(), "reported changes move the etag too");
    assert_eq!(twin.desired, before.desired);
}

#[test]
fn desired_notification_is_the_patch_plus_the_new_version() {
    let mut twin = populated();
    // "fw" keeps its value but is still forwarded, like Azure does.
    let patch = json!({"fw": "1.0", "cfg": {"rate": null}, "x": {"y": 1}});
    let change = twin.apply_service_patch(&desired(patch), t(2)).unwrap();
    assert_eq!(
        change.desired_patch.unwrap(),
        json!({"fw": "1.0", "cfg": {"rate": null}, "x": {"y": 1}, "$version": twin.desired.version})
    );
}

#[test]
fn a_desired_section_repeating_current_values_is_still_an_update() {
    let bodies = [
        desired(json!({"fw": "1.0", "cfg": {"mode": "eco"}})),
        desired(json!({"missing": null, "cfg": {"missing": null}})),
        json!({"tags": {"site": {"building": "43"}}, "properties": {"desired": {"fw": "1.0"}, "reported": {}}}),
        desired(json!({"fw": "1.0", "$version": 2, "$metadata": {"fw": {}}})),
    ];
    for body in bodies {
        let mut twin = populated();
        let before = twin.clone();
        let change = twin.apply_service_patch(&body, t(9)).unwrap();
        assert!(change.changed, "{body}");
        assert_eq!(twin.desired.version, before.desired.version + 1, "{body}");
        assert_eq!((twin.version, twin.etag_seq), (before.version + 1, before.etag_seq + 1), "{body}");
        assert_ne!(twin.etag(), before.etag(), "{body}");
        assert_eq!((&twin.tags, &twin.desired.props), (&before.tags, &before.desired.props), "{body}");
        assert_eq!(twin.reported, before.reported, "{body}");
        // The section root records the write; leaves keep the stamps of the
        // write that last set their value.
        let (m, old) = (obj(&twin.desired.metadata), obj(&before.desired.metadata));
        assert_eq!(m["$lastUpdated"], iso(9), "{body}");
        assert_eq!(m["$lastUpdatedVersion"], twin.desired.version, "{body}");
        assert_eq!((&m["fw"], &m["cfg"]), (&old["fw"], &old["cfg"]), "{body}");
        // The device gets the patch as sent, without the echoed system keys.
        let mut sent = body["properties"]["desired"].as_object().unwrap().clone();
        sent.shift_remove("$metadata");
        sent.insert("$version".into(), json!(twin.desired.version));
        assert_eq!(change.desired_patch, Some(Value::Object(sent)), "{body}");
    }
}

#[test]
fn a_reported_patch_repeating_current_values_is_still_an_update() {
    for patch in [json!({"temp": 21.5, "net": {"kind": "wifi", "x": null}}), json!({})] {
        let mut twin = populated();
        let before = twin.clone();
        let change = twin.apply_reported_patch(&patch, t(9)).unwrap();
        assert_eq!(change, TwinChange { changed: true, desired_patch: None }, "{patch}");
        assert_eq!(twin.reported.version, before.reported.version + 1, "{patch}");
        assert_eq!((twin.version, twin.etag_seq), (before.version + 1, before.etag_seq + 1), "{patch}");
        assert_eq!(twin.reported.props, before.reported.props, "{patch}");
        let m = obj(&twin.reported.metadata);
        assert_eq!(m["$lastUpdated"], iso(9), "{patch}");
        assert_eq!(m["temp"], json!({"$lastUpdated": iso(1)}), "{patch}: the leaf keeps its stamp");
        assert_eq!(twin.desired, before.desired, "{patch}");
    }
}

#[test]
fn writes_without_a_desired_section_count_only_when_tags_differ() {
    let unchanged = [
        json!({}),
        json!({"tags": {}}),
        json!({"tags": {"site": {"floor": 1}}}),
        json!({"tags": {"nope": null}}),
        desired(json!({})),
        // What a GET of a fresh twin shows: only echoed system keys.
        desired(json!({"$metadata": {"$lastUpdated": iso(0)}, "$version": 2})),
        json!({"tags": {"site": {"building": "43"}}, "properties": {"desired": {"$version": 2}, "reported": {}}}),
    ];
    for body in unchanged {
        let mut twin = populated();
        let before = twin.clone();
        let change = twin.apply_service_patch(&body, t(9)).unwrap();
        assert_eq!(change, TwinChange { changed: false, desired_patch: None }, "{body}");
        assert_eq!(twin, before, "{body}");
    }
    // A PUT whose omitted desired was already empty, with the same tags.
    let mut twin = TwinState::new(t(0));
    twin.replace(&json!({"tags": {"a": 1}}), t(1)).unwrap();
    let before = twin.clone();
    assert!(!twin.replace(&json!({"tags": {"a": 1}}), t(2)).unwrap().changed);
    assert_eq!(twin, before);
}

#[test]
fn echoing_a_get_back_is_an_update_that_changes_no_value() {
    let mut twin = populated();
    let got = twin.to_json(&device());
    let before = twin.clone();
    let change = twin.apply_service_patch(&desired(got["properties"]["desired"].clone()), t(9)).unwrap();
    assert_eq!(twin.desired.version, before.desired.version + 1);
    assert_eq!(twin.desired.props, before.desired.props);
    assert_eq!(
        change.desired_patch.unwrap(),
        json!({"cfg": {"rate": 5, "mode": "eco"}, "fw": "1.0", "$version": 3})
    );

    let before = twin.clone();
    let change = twin.replace(&got, t(10)).unwrap();
    assert_eq!((twin.version, twin.desired.version), (before.version + 1, before.desired.version + 1));
    assert_eq!(
        (&twin.tags, &twin.desired.props, &twin.reported),
        (&before.tags, &before.desired.props, &before.reported)
    );
    assert_eq!(
        change.desired_patch.unwrap(),
        json!({"cfg": {"rate": 5, "mode": "eco"}, "fw": "1.0", "$version": 4}),
        "PUT of the twin as read: the whole desired, nothing removed"
    );
}

#[test]
fn null_deletes_nested_keys_and_their_metadata() {
    let mut twin = populated();
    twin.apply_service_patch(&desired(json!({"cfg": {"rate": null}, "nope": null})), t(2)).unwrap();
    assert_eq!(obj(&twin.desired.props), json!({"cfg": {"mode": "eco"}, "fw": "1.0"}));
    let m = obj(&twin.desired.metadata);
    assert!(m["cfg"].get("rate").is_none(), "deleted leaf loses its node");
    assert_eq!(m["cfg"]["$lastUpdated"], iso(2), "the parent records the deletion");
    assert_eq!(m["cfg"]["$lastUpdatedVersion"], 3);
    assert_eq!(m["$lastUpdated"], iso(2));
    assert_eq!(m["cfg"]["mode"], json!({"$lastUpdated": iso(1), "$lastUpdatedVersion": 2}));

    twin.apply_service_patch(&desired(json!({"cfg": null})), t(3)).unwrap();
    assert_eq!(obj(&twin.desired.props), json!({"fw": "1.0"}));
    assert!(twin.desired.metadata.get("cfg").is_none(), "a deleted subtree loses all its nodes");

    twin.apply_service_patch(&json!({"tags": {"site": {"floor": null}}}), t(3)).unwrap();
    assert_eq!(obj(&twin.tags), json!({"site": {"building": "43"}}));
    twin.apply_reported_patch(&json!({"net": null}), t(3)).unwrap();
    assert_eq!(obj(&twin.reported.props), json!({"temp": 21.5}));
    assert_eq!(
        obj(&twin.reported.metadata),
        json!({"$lastUpdated": iso(3), "temp": {"$lastUpdated": iso(1)}})
    );
}

#[test]
fn metadata_tracks_every_level_and_spares_untouched_siblings() {
    let mut twin = TwinState::new(t(0));
    twin.apply_service_patch(&desired(json!({"a": {"b": {"c": 1, "d": 2}, "e": 3}, "f": 4})), t(1)).unwrap();
    twin.apply_service_patch(&desired(json!({"a": {"b": {"c": 10}}})), t(2)).unwrap();
    let v1 = json!({"$lastUpdated": iso(1), "$lastUpdatedVersion": 2});
    let v2 = json!({"$lastUpdated": iso(2), "$lastUpdatedVersion": 3});
    assert_eq!(
        obj(&twin.desired.metadata),
        json!({
            "$lastUpdated": iso(2), "$lastUpdatedVersion": 3,
            "a": {
                "$lastUpdated": iso(2), "$lastUpdatedVersion": 3,
                "b": {"$lastUpdated": iso(2), "$lastUpdatedVersion": 3, "c": v2, "d": v1},
                "e": v1,
            },
            "f": v1,
        })
    );
    twin.apply_reported_patch(&json!({"x": {"y": 1, "z": 2}}), t(3)).unwrap();
    twin.apply_reported_patch(&json!({"x": {"y": 5}}), t(4)).unwrap();
    assert_eq!(
        obj(&twin.reported.metadata),
        json!({
            "$lastUpdated": iso(4),
            "x": {"$lastUpdated": iso(4), "y": {"$lastUpdated": iso(4)}, "z": {"$lastUpdated": iso(3)}},
        })
    );
}

#[test]
fn service_patch_may_not_write_reported() {
    let mut twin = populated();
    let before = twin.clone();
    let body = json!({"tags": {"a": 1}, "properties": {"desired": {"b": 1}, "reported": {"temp": 99}}});
    let e = twin.apply_service_patch(&body, t(2)).unwrap_err();
    assert_eq!(e.code, ErrorCode::ArgumentInvalid);
    assert!(e.message.contains("reported"), "{}", e.message);
    assert_eq!(twin, before, "nothing applied, not even tags or desired");
    // An empty reported section as a GET shows it is not a write.
    let echo = json!({"properties": {"desired": {"b": 1}, "reported": {"$metadata": {}, "$version": 2}}});
    assert!(twin.apply_service_patch(&echo, t(2)).unwrap().changed);
}

#[test]
fn read_only_fields_in_a_patch_are_ignored() {
    let mut twin = populated();
    let body = json!({
        "deviceId": "other", "etag": "bogus", "version": 99, "status": "disabled",
        "properties": {"desired": {"fw": "2.0", "$version": 42, "$metadata": {"x": 1}}},
    });
    let change = twin.apply_service_patch(&body, t(2)).unwrap();
    assert_eq!(twin.version, 4);
    assert_eq!(twin.desired.version, 3);
    assert_eq!(change.desired_patch.unwrap(), json!({"fw": "2.0", "$version": 3}));
}

#[test]
fn replace_swaps_tags_and_desired_and_ignores_reported() {
    let mut twin = populated();
    let before = twin.clone();
    let body = json!({
        "deviceId": "dev1",
        "tags": {"owner": "ops"},
        "properties": {
            "desired": {"cfg": {"rate": 7}, "added": 1, "$metadata": {}, "$version": 2},
            "reported": {"temp": -40, "hacked": true},
        },
    });
    let change = twin.replace(&body, t(2)).unwrap();
    assert!(change.changed);
    assert_eq!(obj(&twin.tags), json!({"owner": "ops"}));
    assert_eq!(obj(&twin.desired.props), json!({"cfg": {"rate": 7}, "added": 1}));
    assert_eq!(twin.reported, before.reported, "reported in a PUT is ignored");
    assert_eq!((twin.version, twin.desired.version), (before.version + 1, before.desired.version + 1));
    assert_eq!(twin.etag_seq, before.etag_seq + 1);
    assert_eq!(
        change.desired_patch.unwrap(),
        json!({"cfg": {"rate": 7, "mode": null}, "added": 1, "fw": null, "$version": twin.desired.version})
    );
    let m = obj(&twin.desired.metadata);
    assert!(m.get("fw").is_none() && m["cfg"].get("mode").is_none());
    assert_eq!(m["cfg"]["rate"], json!({"$lastUpdated": iso(2), "$lastUpdatedVersion": 3}));
}

#[test]
fn replace_treats_omitted_parts_as_empty() {
    let mut twin = populated();
    let change = twin.replace(&json!({"properties": {}}), t(2)).unwrap();
    assert!(twin.tags.is_empty() && twin.desired.props.is_empty());
    assert_eq!(change.desired_patch.unwrap(), json!({"cfg": null, "fw": null, "$version": 3}));
    assert!(!twin.reported.props.is_empty());
    // Replacing only tags (desired already empty) notifies nobody.
    let change = twin.replace(&json!({"tags": {"a": 1}}), t(3)).unwrap();
    assert_eq!(change, TwinChange { changed: true, desired_patch: None });
}

#[test]
fn nulls_in_a_replace_mean_absent() {
    let mut twin = populated();
    twin.replace(
        &json!({"tags": {"a": null, "b": {"c": null}}, "properties": {"desired": {"d": null}}}),
        t(2),
    )
    .unwrap();
    assert_eq!(obj(&twin.tags), json!({"b": {}}));
    assert!(twin.desired.props.is_empty());
}

#[test]
fn reported_patch_merges_and_never_notifies() {
    let mut twin = populated();
    let change = twin.apply_reported_patch(&json!({"net": {"rssi": -60}, "up": true}), t(2)).unwrap();
    assert_eq!(change.desired_patch, None);
    assert_eq!(
        obj(&twin.reported.props),
        json!({"temp": 21.5, "net": {"kind": "wifi", "rssi": -60}, "up": true})
    );
    assert_eq!(twin.reported.version, 3);
}

#[test]
fn malformed_bodies_are_format_errors_and_touch_nothing() {
    let mut twin = populated();
    let before = twin.clone();
    for body in [json!(null), json!([1]), json!({"tags": "x"}), desired(json!([1])), json!({"properties": 3})]
    {
        assert_eq!(twin.apply_service_patch(&body, t(2)).unwrap_err().code, ErrorCode::IotHubFormatError);
        assert_eq!(twin.replace(&body, t(2)).unwrap_err().code, ErrorCode::IotHubFormatError, "{body}");
    }
    for patch in [json!(null), json!("x"), json!([])] {
        assert_eq!(twin.apply_reported_patch(&patch, t(2)).unwrap_err().code, ErrorCode::IotHubFormatError);
    }
    assert_eq!(twin, before);
}

#[test]
fn stored_form_round_trips_and_tolerates_missing_configurations() {
    let twin = populated();
    let text = serde_json::to_string(&twin).unwrap();
    assert_eq!(serde_json::from_str::<TwinState>(&text).unwrap(), twin);
    let mut stored: Value = serde_json::from_str(&text).unwrap();
    stored.as_object_mut().unwrap().remove("configurations");
    assert_eq!(serde_json::from_value::<TwinState>(stored).unwrap(), twin);
}

#[test]
fn into_json_renders_exactly_what_to_json_does() {
    let mut twin = populated();
    let doc = twin.to_json(&device());
    assert_eq!(twin.clone().into_json(&device()).to_string(), doc.to_string(), "same keys, same order");
    twin.configurations.insert("c1".into(), json!({"status": "Applied"}));
    assert_eq!(twin.clone().into_json(&device()), twin.to_json(&device()));
}
