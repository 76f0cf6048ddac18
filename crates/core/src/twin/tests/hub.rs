//! `apply_hub_desired`: what the hub writes for automatic configurations.

use serde_json::json;

use super::*;

fn path(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

fn hub_write(desired: Value, written: Vec<WrittenLeaf<'_>>, configurations: Value) -> HubDesired<'_> {
    HubDesired {
        notification: desired.as_object().unwrap().clone(),
        desired: desired.as_object().unwrap().clone(),
        written,
        configurations: configurations.as_object().unwrap().clone(),
    }
}

#[test]
fn marks_changed_leaves_and_bumps_once() {
    let mut twin = populated();
    let before = twin.clone();
    let (rate, cfg, fw) = (path(&["cfg", "rate"]), path(&["cfg"]), path(&["fw"]));
    let written = vec![
        WrittenLeaf { path: &rate, by: "c1", digest: "1" },
        WrittenLeaf { path: &cfg, by: "c1", digest: "1" },
        WrittenLeaf { path: &fw, by: "c1", digest: "1" },
    ];
    let desired = json!({"cfg": {"rate": 9, "mode": "eco"}, "fw": "1.0"});
    let change = twin
        .apply_hub_desired(hub_write(desired, written, json!({"c1": {"status": "Applied"}})), t(5))
        .unwrap();
    assert_eq!(
        (twin.version, twin.etag_seq, twin.desired.version),
        (before.version + 1, before.etag_seq + 1, 3)
    );
    assert_eq!(change.desired_patch.unwrap()["$version"], 3);
    let m = obj(&twin.desired.metadata);
    assert_eq!(
        m["cfg"]["rate"],
        json!({"$lastUpdated": iso(5), "$lastUpdatedVersion": 3, "$lastUpdatedBy": "c1", "$lastUpdatedByDigest": "1"})
    );
    assert!(m["cfg"].get(LAST_UPDATED_BY).is_none(), "a non-empty object is not a leaf");
    assert_eq!(m["fw"], json!({"$lastUpdated": iso(1), "$lastUpdatedVersion": 2}), "unchanged: untouched");
    assert_eq!(obj(&twin.configurations), json!({"c1": {"status": "Applied"}}));
}

#[test]
fn nothing_different_moves_nothing_and_configurations_alone_skip_desired() {
    let mut twin = populated();
    let same = obj(&twin.desired.props);
    let before = twin.clone();
    let change = twin.apply_hub_desired(hub_write(same.clone(), vec![], json!({})), t(5)).unwrap();
    assert_eq!(change, TwinChange { changed: false, desired_patch: None });
    assert_eq!(twin, before);
    let change =
        twin.apply_hub_desired(hub_write(same, vec![], json!({"c": {"status": "Targeted"}})), t(6)).unwrap();
    assert_eq!(change, TwinChange { changed: true, desired_patch: None });
    assert_eq!(twin.desired, before.desired);
    assert_eq!((twin.version, twin.etag_seq), (before.version + 1, before.etag_seq + 1));
}

#[test]
fn documents_over_the_limits_are_refused_untouched() {
    let mut twin = populated();
    let before = twin.clone();
    for desired in [json!({"$bad": 1}), json!({"big": "x".repeat(crate::twin::limits::MAX_STRING_BYTES + 1)})]
    {
        let e = twin.apply_hub_desired(hub_write(desired, vec![], json!({})), t(5)).unwrap_err();
        assert_eq!(e.code, ErrorCode::ArgumentInvalid);
        assert_eq!(twin, before);
    }
}

#[test]
fn service_writes_drop_the_mark_and_unchanged_siblings_keep_it() {
    let mut twin = TwinState::new(t(0));
    let (a, b) = (path(&["o", "a"]), path(&["o", "b"]));
    let written =
        vec![WrittenLeaf { path: &a, by: "c", digest: "d" }, WrittenLeaf { path: &b, by: "c", digest: "d" }];
    twin.apply_hub_desired(hub_write(json!({"o": {"a": 1, "b": 2}}), written, json!({})), t(1)).unwrap();
    twin.apply_service_patch(&desired(json!({"o": {"a": 5}})), t(2)).unwrap();
    let m = obj(&twin.desired.metadata);
    assert!(m["o"]["a"].get(LAST_UPDATED_BY).is_none());
    assert_eq!(m["o"]["b"][LAST_UPDATED_BY], "c");
    assert_eq!(m["o"]["b"][LAST_UPDATED_BY_DIGEST], "d");
}
