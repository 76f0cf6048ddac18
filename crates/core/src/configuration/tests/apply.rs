//! Which configuration wins which desired path, what is written, and what
//! is left alone.

use serde_json::{json, Value};

use super::{props, t};
use crate::configuration::{
    apply_configurations, content_digest, ConfigStatus, DeviceContent, Evaluation, TargetingConfig,
};
use crate::error::ErrorCode;
use crate::twin::{TwinChange, TwinState};

struct Cfg {
    id: &'static str,
    priority: i64,
    created: i128,
    content: DeviceContent,
}

fn cfg(id: &'static str, priority: i64, created: i128, content: Value) -> Cfg {
    Cfg { id, priority, created, content: DeviceContent::parse(&props(content)).unwrap() }
}

fn fw(version: &str) -> Value {
    json!({"fwVersion": version, "fwPackageURI": "https://secureuri/package.bin", "fwPackageCheckValue": "123456abcde"})
}

/// A configuration setting `properties.desired.firmware` to [`fw`].
fn firmware(id: &'static str, priority: i64, created: i128, version: &str) -> Cfg {
    cfg(id, priority, created, json!({ "properties.desired.firmware": fw(version) }))
}

fn eval(twin: &mut TwinState, cfgs: &[&Cfg], at: i128) -> Evaluation {
    let targeting: Vec<TargetingConfig<'_>> = cfgs
        .iter()
        .map(|c| TargetingConfig {
            id: c.id,
            priority: c.priority,
            created: t(c.created),
            content: &c.content,
        })
        .collect();
    apply_configurations(twin, &targeting, t(at)).unwrap()
}

fn desired(twin: &TwinState) -> Value {
    Value::Object(twin.desired.props.clone())
}

fn meta<'a>(twin: &'a TwinState, path: &[&str]) -> &'a Value {
    let mut node = &twin.desired.metadata[path[0]];
    for key in &path[1..] {
        node = &node[*key];
    }
    node
}

fn owner(twin: &TwinState, path: &[&str]) -> Value {
    meta(twin, path).get("$lastUpdatedBy").cloned().unwrap_or(Value::Null)
}

fn statuses(e: &Evaluation) -> Value {
    serde_json::to_value(&e.statuses).unwrap()
}

fn service_desired(twin: &mut TwinState, patch: Value, at: i128) {
    twin.apply_service_patch(&json!({"properties": {"desired": patch}}), t(at)).unwrap();
}

/// A twin whose service wrote `{"other": 1}` at t(1).
fn base() -> TwinState {
    let mut twin = TwinState::new(t(0));
    service_desired(&mut twin, json!({"other": 1}), 1);
    twin
}

#[test]
fn the_winner_is_written_with_last_updated_by_on_each_leaf() {
    let mut twin = base();
    let c = firmware("firmware285", 20, 5, "2.8.5");
    let e = eval(&mut twin, &[&c], 10);
    assert_eq!(desired(&twin), json!({"other": 1, "firmware": fw("2.8.5")}));
    assert_eq!((twin.desired.version, twin.version, twin.etag_seq), (3, 3, 3));
    let digest = content_digest(t(5));
    assert_eq!(digest.len(), 18);
    assert_eq!(
        meta(&twin, &["firmware", "fwVersion"]),
        &json!({
            "$lastUpdated": t(10).to_iso(), "$lastUpdatedVersion": 3,
            "$lastUpdatedBy": "firmware285", "$lastUpdatedByDigest": digest,
        })
    );
    assert_eq!(owner(&twin, &["firmware", "fwPackageURI"]), "firmware285");
    assert!(
        meta(&twin, &["firmware"]).get("$lastUpdatedBy").is_none(),
        "objects are not marked, their leaves are"
    );
    assert_eq!(meta(&twin, &["other"]), &json!({"$lastUpdated": t(1).to_iso(), "$lastUpdatedVersion": 2}));
    assert_eq!(Value::Object(twin.configurations.clone()), json!({"firmware285": {"status": "Applied"}}));
    assert_eq!(statuses(&e), json!({"firmware285": "Applied"}));
    assert_eq!(
        e.change,
        TwinChange { changed: true, desired_patch: Some(json!({"firmware": fw("2.8.5"), "$version": 3})) }
    );
}

#[test]
fn a_service_write_repeating_a_configured_value_bumps_once_and_the_evaluation_after_it_writes_nothing() {
    let mut twin = base();
    let c = firmware("firmware285", 20, 5, "2.8.5");
    eval(&mut twin, &[&c], 10);
    // The service writes the value the configuration set: an update of its
    // own (the service asked for it), which leaves the leaves' ownership.
    let before = twin.clone();
    service_desired(&mut twin, json!({ "firmware": fw("2.8.5") }), 11);
    assert_eq!((twin.desired.version, twin.version), (before.desired.version + 1, before.version + 1));
    assert_eq!(owner(&twin, &["firmware", "fwVersion"]), "firmware285");
    // The engine re-evaluates after every service write; finding its value
    // in place it must not bump again (else every pass bumps every twin).
    let before = twin.clone();
    let e = eval(&mut twin, &[&c], 12);
    assert_eq!(e.change, TwinChange { changed: false, desired_patch: None });
    assert_eq!(twin, before);
}

#[test]
fn digest_is_dotnet_ticks_of_the_creation_time() {
    // 2018-12-20T20:37:20.3275207Z in .NET ticks.
    let created = crate::time::Timestamp::from_unix_nanos(1_545_338_240_327_520_700);
    assert_eq!(content_digest(created), "636809350403275207");
}

#[test]
fn re_evaluating_changes_nothing() {
    let mut twin = base();
    let (a, b) = (firmware("a", 10, 1, "1.0"), firmware("b", 20, 2, "2.0"));
    let mode = cfg("m", 5, 3, json!({"properties.desired.mode": "eco", "properties.desired.gone": null}));
    eval(&mut twin, &[&a, &b, &mode], 10);
    let before = twin.clone();
    for order in [[&a, &b, &mode], [&mode, &b, &a]] {
        let e = eval(&mut twin, &order, 20);
        assert_eq!(e.change, TwinChange { changed: false, desired_patch: None });
        assert_eq!(statuses(&e), json!({"a": "Targeted", "b": "Applied", "m": "Applied"}));
        assert_eq!(twin, before, "not even metadata moves");
    }
    // The stored form carries everything the next evaluation needs.
    let mut restored: TwinState = serde_json::from_str(&serde_json::to_string(&twin).unwrap()).unwrap();
    assert!(!eval(&mut restored, &[&a, &b, &mode], 30).change.changed);
    // A twin nothing ever targeted stays as it is.
    let mut plain = TwinState::new(t(0));
    let before = plain.clone();
    assert!(!eval(&mut plain, &[], 5).change.changed);
    assert_eq!(plain, before);
}

#[test]
fn the_highest_priority_wins_whatever_the_list_order() {
    let (low, high) = (firmware("low", 10, 2, "1.0"), firmware("high", 20, 1, "2.0"));
    for order in [[&low, &high], [&high, &low]] {
        let mut twin = base();
        let e = eval(&mut twin, &order, 10);
        assert_eq!(desired(&twin)["firmware"], fw("2.0"));
        assert_eq!(owner(&twin, &["firmware", "fwVersion"]), "high");
        assert_eq!(statuses(&e), json!({"high": "Applied", "low": "Targeted"}));
        assert_eq!(
            Value::Object(twin.configurations.clone()),
            json!({"low": {"status": "Targeted"}, "high": {"status": "Applied"}})
        );
        let keys: Vec<_> = twin.configurations.keys().cloned().collect();
        assert_eq!(keys, order.map(|c| c.id), "new entries in the order given");
    }
}

#[test]
fn equal_priorities_go_to_the_most_recently_created_then_the_greater_id() {
    let (older, newer) = (firmware("older", 10, 1, "1.0"), firmware("newer", 10, 2, "2.0"));
    let mut twin = base();
    let e = eval(&mut twin, &[&newer, &older], 10);
    assert_eq!(desired(&twin)["firmware"]["fwVersion"], "2.0");
    assert_eq!(statuses(&e), json!({"newer": "Applied", "older": "Targeted"}));

    let (a, b) = (firmware("a", 10, 1, "a"), firmware("b", 10, 1, "b"));
    for order in [[&a, &b], [&b, &a]] {
        let mut twin = base();
        eval(&mut twin, &order, 10);
        assert_eq!(desired(&twin)["firmware"]["fwVersion"], "b");
    }
}

#[test]
fn partial_wins_count_as_applied() {
    let high = cfg("high", 20, 1, json!({"properties.desired.mode": "eco"}));
    let low = cfg("low", 10, 1, json!({"properties.desired.mode": "turbo", "properties.desired.rate": 5}));
    let lowest = cfg("lowest", 5, 1, json!({"properties.desired.mode": "off"}));
    let mut twin = base();
    let e = eval(&mut twin, &[&lowest, &low, &high], 10);
    assert_eq!(desired(&twin), json!({"other": 1, "mode": "eco", "rate": 5}));
    assert_eq!(statuses(&e), json!({"high": "Applied", "low": "Applied", "lowest": "Targeted"}));
    assert_eq!(owner(&twin, &["mode"]), "high");
    assert_eq!(owner(&twin, &["rate"]), "low");
    // A configuration without settings (moduleContent only) wins nothing.
    let empty = cfg("empty", 99, 1, json!({}));
    let e = eval(&mut twin, &[&lowest, &low, &high, &empty], 20);
    assert_eq!(e.statuses["empty"], ConfigStatus::Targeted);
    assert_eq!(e.change.desired_patch, None, "only configurations changed");
}

#[test]
fn a_value_already_in_place_is_applied_without_a_write() {
    let mut twin = base();
    service_desired(&mut twin, json!({"firmware": fw("2.8.5")}), 2);
    let before = twin.clone();
    let e = eval(&mut twin, &[&firmware("firmware285", 20, 5, "2.8.5")], 10);
    assert_eq!(statuses(&e), json!({"firmware285": "Applied"}));
    assert_eq!(
        e.change,
        TwinChange { changed: true, desired_patch: None },
        "configurations changed, desired did not"
    );
    assert_eq!(twin.desired, before.desired, "no $version bump, no metadata change");
    assert_eq!((twin.version, twin.etag_seq), (before.version + 1, before.etag_seq + 1));
    assert_eq!(owner(&twin, &["firmware", "fwVersion"]), Value::Null, "still the service's value");
}

#[test]
fn a_twin_that_stops_matching_loses_the_settings_but_keeps_service_keys() {
    let c = firmware("firmware285", 20, 5, "2.8.5");
    // Without service keys inside: the whole property goes.
    let mut twin = base();
    eval(&mut twin, &[&c], 10);
    let e = eval(&mut twin, &[], 20);
    assert_eq!(desired(&twin), json!({"other": 1}));
    assert!(twin.configurations.is_empty());
    assert!(e.statuses.is_empty());
    assert_eq!(e.change.desired_patch, Some(json!({"firmware": null, "$version": 4})));
    assert!(twin.desired.metadata.get("firmware").is_none());
    assert_eq!(meta(&twin, &["other"])["$lastUpdated"], t(1).to_iso(), "untouched");

    // A key the service put inside the configuration's object stays.
    let mut twin = base();
    eval(&mut twin, &[&c], 10);
    service_desired(&mut twin, json!({"firmware": {"note": "service"}}), 11);
    assert!(!eval(&mut twin, &[&c], 12).change.changed, "the service key is not drift");
    let e = eval(&mut twin, &[], 20);
    assert_eq!(desired(&twin), json!({"other": 1, "firmware": {"note": "service"}}));
    assert_eq!(
        e.change.desired_patch,
        Some(
            json!({"firmware": {"fwVersion": null, "fwPackageURI": null, "fwPackageCheckValue": null}, "$version": 5})
        )
    );
}

#[test]
fn deleting_the_winner_hands_its_paths_back_to_the_next_configuration() {
    let (a, b) = (firmware("firmware285", 20, 1, "2.8.5"), firmware("hotfix", 30, 2, "2.8.6"));
    let mut twin = base();
    eval(&mut twin, &[&a], 10);
    let e = eval(&mut twin, &[&a, &b], 20);
    assert_eq!(desired(&twin)["firmware"], fw("2.8.6"));
    assert_eq!(statuses(&e), json!({"firmware285": "Targeted", "hotfix": "Applied"}));
    // Only fwVersion differs, but the device gets the whole object.
    assert_eq!(e.change.desired_patch, Some(json!({"firmware": fw("2.8.6"), "$version": 4})));
    assert_eq!(owner(&twin, &["firmware", "fwVersion"]), "hotfix");
    assert_eq!(
        owner(&twin, &["firmware", "fwPackageURI"]),
        "firmware285",
        "unchanged values keep their metadata"
    );

    let e = eval(&mut twin, &[&a], 30);
    assert_eq!(desired(&twin)["firmware"], fw("2.8.5"));
    assert_eq!(statuses(&e), json!({"firmware285": "Applied"}));
    assert_eq!(Value::Object(twin.configurations.clone()), json!({"firmware285": {"status": "Applied"}}));
    assert_eq!(e.change.desired_patch, Some(json!({"firmware": fw("2.8.5"), "$version": 5})));
    assert_eq!(owner(&twin, &["firmware", "fwVersion"]), "firmware285");
    assert_eq!(meta(&twin, &["firmware", "fwVersion"])["$lastUpdatedVersion"], 5);
    assert_eq!(meta(&twin, &["firmware", "fwPackageURI"])["$lastUpdatedVersion"], 3);
    let keys: Vec<_> = twin.desired.props.keys().cloned().collect();
    assert_eq!(keys, ["other", "firmware"], "re-applying keeps the key order");
}

#[test]
fn a_winner_replacing_an_object_nulls_the_keys_it_lacks_in_the_notification() {
    let (low, high) = (
        firmware("low", 10, 1, "1.0"),
        cfg("high", 20, 2, json!({"properties.desired.firmware": {"fwVersion": "2"}})),
    );
    let mut twin = base();
    eval(&mut twin, &[&low], 10);
    let e = eval(&mut twin, &[&low, &high], 20);
    assert_eq!(desired(&twin)["firmware"], json!({"fwVersion": "2"}), "the loser's leaves are gone");
    assert_eq!(
        e.change.desired_patch,
        Some(
            json!({"firmware": {"fwVersion": "2", "fwPackageURI": null, "fwPackageCheckValue": null}, "$version": 4})
        )
    );
    let mut device = serde_json::Map::new();
    device.insert("firmware".into(), fw("1.0"));
    let mut patch = e.change.desired_patch.unwrap().as_object().unwrap().clone();
    patch.remove("$version");
    crate::twin::merge_into(&mut device, &patch);
    assert_eq!(device["firmware"], desired(&twin)["firmware"], "a device merging the patch ends up right");
}

#[test]
fn drift_is_overwritten_by_the_next_evaluation() {
    let c = firmware("firmware285", 20, 5, "2.8.5");
    let mut twin = base();
    eval(&mut twin, &[&c], 10);
    service_desired(&mut twin, json!({"firmware": {"fwVersion": "9.9.9"}}), 20);
    assert_eq!(owner(&twin, &["firmware", "fwVersion"]), Value::Null, "a service write takes the leaf over");
    let e = eval(&mut twin, &[&c], 21);
    assert_eq!(desired(&twin)["firmware"], fw("2.8.5"));
    assert_eq!(owner(&twin, &["firmware", "fwVersion"]), "firmware285");
    assert_eq!(meta(&twin, &["firmware", "fwVersion"])["$lastUpdated"], t(21).to_iso());
    assert_eq!(meta(&twin, &["firmware", "fwPackageURI"])["$lastUpdated"], t(10).to_iso());
    assert_eq!(e.change.desired_patch, Some(json!({"firmware": fw("2.8.5"), "$version": 5})));
    // Deleting the property is drift too.
    service_desired(&mut twin, json!({"firmware": null}), 30);
    eval(&mut twin, &[&c], 31);
    assert_eq!(desired(&twin)["firmware"], fw("2.8.5"));
}

#[test]
fn properties_nobody_sets_are_left_alone() {
    let c = cfg("c", 1, 1, json!({"properties.desired.a.b": 1}));
    let mut twin = base();
    service_desired(&mut twin, json!({"a": {"x": true}, "z": [1, 2]}), 2);
    eval(&mut twin, &[&c], 10);
    assert_eq!(desired(&twin), json!({"other": 1, "a": {"x": true, "b": 1}, "z": [1, 2]}));
    assert_eq!(meta(&twin, &["a", "x"])["$lastUpdated"], t(2).to_iso());
    assert_eq!(meta(&twin, &["z"])["$lastUpdated"], t(2).to_iso());
    eval(&mut twin, &[], 20);
    assert_eq!(desired(&twin), json!({"other": 1, "a": {"x": true}, "z": [1, 2]}));
}

#[test]
fn null_settings_remove_properties() {
    let c = cfg(
        "cleanup",
        1,
        1,
        json!({"properties.desired.legacy": null, "properties.desired.none.deeper": null}),
    );
    let mut twin = base();
    service_desired(&mut twin, json!({"legacy": {"a": 1}}), 2);
    let e = eval(&mut twin, &[&c], 10);
    assert_eq!(desired(&twin), json!({"other": 1}), "parents of a removal are not created");
    assert_eq!(statuses(&e), json!({"cleanup": "Applied"}));
    assert_eq!(e.change.desired_patch, Some(json!({"legacy": null, "$version": 4})));
    assert!(!eval(&mut twin, &[&c], 11).change.changed);
    // A removal is re-asserted like any setting.
    service_desired(&mut twin, json!({"legacy": 2}), 12);
    eval(&mut twin, &[&c], 13);
    assert_eq!(desired(&twin), json!({"other": 1}));
    // Nothing to give back when the configuration goes.
    let e = eval(&mut twin, &[], 20);
    assert_eq!(desired(&twin), json!({"other": 1}));
    assert_eq!(e.change.desired_patch, None);
}

#[test]
fn overlapping_paths_compose_by_rank() {
    let mut twin = base();
    // A higher object path overrides the lower leaf it names…
    let high = cfg("high", 20, 1, json!({"properties.desired.firmware": {"fwVersion": "2"}}));
    let low = cfg("low", 10, 1, json!({"properties.desired.firmware.fwVersion": "1"}));
    let e = eval(&mut twin, &[&low, &high], 10);
    assert_eq!(desired(&twin)["firmware"], json!({"fwVersion": "2"}));
    assert_eq!(statuses(&e), json!({"high": "Applied", "low": "Targeted"}));

    // …a higher leaf path overrides one key of a lower object…
    let mut twin = base();
    let high = cfg("high", 20, 1, json!({"properties.desired.firmware.fwVersion": "3"}));
    let low = firmware("low", 10, 1, "1.0");
    let e = eval(&mut twin, &[&low, &high], 10);
    assert_eq!(desired(&twin)["firmware"], fw("3"));
    assert_eq!(statuses(&e), json!({"high": "Applied", "low": "Applied"}));
    assert_eq!(owner(&twin, &["firmware", "fwVersion"]), "high");
    assert_eq!(owner(&twin, &["firmware", "fwPackageURI"]), "low");
    // The notification carries the whole object at each winning path.
    assert_eq!(e.change.desired_patch, Some(json!({"firmware": fw("3"), "$version": 3})));

    // …and non-objects replace whatever is on the other side.
    for (high_value, low_value, expect, low_status) in [
        (
            json!({"properties.desired.firmware": "off"}),
            json!({"properties.desired.firmware.fwVersion": "1"}),
            json!("off"),
            "Targeted",
        ),
        (
            json!({"properties.desired.firmware.fwVersion": "1"}),
            json!({"properties.desired.firmware": "off"}),
            json!({"fwVersion": "1"}),
            "Targeted",
        ),
        (
            json!({"properties.desired.firmware": {"other": 1}}),
            json!({"properties.desired.firmware.fwVersion": "1"}),
            json!({"fwVersion": "1", "other": 1}),
            "Applied",
        ),
    ] {
        let mut twin = base();
        let (high, low) = (cfg("high", 20, 1, high_value), cfg("low", 10, 1, low_value));
        let e = eval(&mut twin, &[&high, &low], 10);
        assert_eq!(desired(&twin)["firmware"], expect);
        assert_eq!(statuses(&e), json!({"high": "Applied", "low": low_status}));
        assert!(!eval(&mut twin, &[&low, &high], 11).change.changed, "stable");
    }
}

#[test]
fn configurations_keep_their_order_and_leave_when_they_stop_targeting() {
    let (a, b, c) = (
        cfg("a", 1, 1, json!({"properties.desired.x": 1})),
        cfg("b", 2, 1, json!({"properties.desired.y": 1})),
        cfg("c", 3, 1, json!({"properties.desired.z": 1})),
    );
    let mut twin = base();
    eval(&mut twin, &[&b, &a], 10);
    eval(&mut twin, &[&c, &a, &b], 20);
    let keys: Vec<_> = twin.configurations.keys().cloned().collect();
    assert_eq!(keys, ["b", "a", "c"]);
    let e = eval(&mut twin, &[&c, &a], 30);
    assert_eq!(
        Value::Object(twin.configurations.clone()),
        json!({"a": {"status": "Applied"}, "c": {"status": "Applied"}})
    );
    assert_eq!(desired(&twin), json!({"other": 1, "x": 1, "z": 1}));
    assert_eq!(e.change.desired_patch, Some(json!({"y": null, "$version": 5})));
}

#[test]
fn an_empty_object_setting_is_owned_like_a_leaf() {
    let c = cfg("c", 1, 1, json!({"properties.desired.slot": {}}));
    let mut twin = base();
    eval(&mut twin, &[&c], 10);
    assert_eq!(desired(&twin)["slot"], json!({}));
    assert_eq!(owner(&twin, &["slot"]), "c");
    // The service fills it; the configuration's {} merges nothing, and its
    // departure leaves the service's keys.
    service_desired(&mut twin, json!({"slot": {"k": 1}}), 11);
    assert!(!eval(&mut twin, &[&c], 12).change.changed);
    eval(&mut twin, &[], 13);
    assert_eq!(desired(&twin)["slot"], json!({"k": 1}));
}

#[test]
fn bad_inputs_are_refused_and_change_nothing() {
    let mut twin = base();
    let c = firmware("dup", 1, 1, "1");
    let before = twin.clone();
    let targeting = [
        TargetingConfig { id: "dup", priority: 1, created: t(1), content: &c.content },
        TargetingConfig { id: "dup", priority: 2, created: t(1), content: &c.content },
    ];
    let e = apply_configurations(&mut twin, &targeting, t(5)).unwrap_err();
    assert_eq!(e.code, ErrorCode::ServerError);
    assert_eq!(twin, before);

    // Service content and configuration content fit alone, not together.
    let mut twin = TwinState::new(t(0));
    let filler: serde_json::Map<String, Value> =
        (0..8).map(|i| (format!("s{i}"), json!("x".repeat(3990)))).collect();
    service_desired(&mut twin, Value::Object(filler), 1);
    let before = twin.clone();
    let big = cfg("big", 1, 1, json!({"properties.desired.big": "y".repeat(4000)}));
    let targeting = [TargetingConfig { id: "big", priority: 1, created: t(1), content: &big.content }];
    let e = apply_configurations(&mut twin, &targeting, t(5)).unwrap_err();
    assert_eq!(e.code, ErrorCode::ArgumentInvalid);
    assert_eq!(twin, before);
}
