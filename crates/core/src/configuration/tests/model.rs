//! The configuration object: create, update, validation, wire form.

use std::cell::RefCell;

use serde_json::{json, Value};

use super::t;
use crate::configuration::{
    already_exists, check_count, not_found, test_queries, Configuration, ConfigurationKind,
    ConfigurationRequest, QueryChecks, TestQueriesRequest,
};
use crate::error::{ErrorCode, HubResult};

fn accept(_: &str) -> Result<(), String> {
    Ok(())
}

const ACCEPT: QueryChecks<'static> = QueryChecks { target_condition: &accept, metric_query: &accept };

/// The tutorial's configuration as the Node SDK sends it.
fn tutorial_body() -> Value {
    let q = |status: &str| {
        format!(
            "SELECT deviceId FROM devices WHERE configurations.[[firmware285]].status='Applied' AND \
             properties.reported.firmware.fwUpdateStatus='{status}'"
        )
    };
    json!({
        "id": "firmware285",
        "content": {"deviceContent": {"properties.desired.firmware": {
            "fwVersion": "2.8.5",
            "fwPackageURI": "https://secureuri/package.bin",
            "fwPackageCheckValue": "123456abcde",
        }}},
        "targetCondition": "tags.devicetype = 'chiller'",
        "priority": 20,
        "metrics": {"queries": {
            "current": q("current"),
            "applying": "SELECT deviceId FROM devices WHERE configurations.[[firmware285]].status='Applied' AND \
                         (properties.reported.firmware.fwUpdateStatus='downloading' OR \
                         properties.reported.firmware.fwUpdateStatus='verifying' OR \
                         properties.reported.firmware.fwUpdateStatus='applying')",
            "rebooting": q("rebooting"),
            "error": q("error"),
            "rolledback": q("rolledback"),
        }},
    })
}

fn request(body: Value) -> ConfigurationRequest {
    ConfigurationRequest::from_json(&body).unwrap()
}

fn create(body: Value) -> HubResult<Configuration> {
    Configuration::create("firmware285", request(body), t(1), "e1".into(), &ACCEPT)
}

fn with(mut body: Value, key: &str, value: Value) -> Value {
    body.as_object_mut().unwrap().insert(key.into(), value);
    body
}

fn code(r: HubResult<Configuration>) -> ErrorCode {
    r.unwrap_err().code
}

#[test]
fn create_fills_the_hub_fields_and_keeps_what_was_sent() {
    let sent = tutorial_body();
    let c = create(sent.clone()).unwrap();
    assert_eq!((c.schema_version.as_str(), c.priority, c.etag.as_str()), ("1.0", 20, "e1"));
    assert_eq!((c.created_time_utc, c.last_updated_time_utc), (t(1), t(1)));
    assert_eq!(c.kind(), ConfigurationKind::Device);
    let j = serde_json::to_value(&c).unwrap();
    let keys: Vec<_> = j.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        [
            "id",
            "schemaVersion",
            "labels",
            "content",
            "targetCondition",
            "createdTimeUtc",
            "lastUpdatedTimeUtc",
            "priority",
            "systemMetrics",
            "metrics",
            "etag",
        ]
    );
    assert_eq!(j["content"], sent["content"]);
    assert_eq!(j["content"].to_string(), sent["content"].to_string(), "byte for byte, key order included");
    assert_eq!(j["metrics"]["queries"].to_string(), sent["metrics"]["queries"].to_string());
    assert_eq!(j["metrics"]["results"], json!({}));
    assert_eq!(j["createdTimeUtc"], t(1).to_iso());
    assert_eq!(j["labels"], json!({}));
    assert_eq!(
        j["systemMetrics"],
        json!({"results": {}, "queries": {
            "targetedCount": "select deviceId from devices where tags.devicetype = 'chiller'",
            "appliedCount": "select deviceId from devices where configurations.[[firmware285]].status = 'Applied'",
        }})
    );
    let stored: Configuration = serde_json::from_value(j).unwrap();
    assert_eq!(stored, c);
    let names: Vec<_> = c.metrics.query_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["current", "applying", "rebooting", "error", "rolledback"]);
}

#[test]
fn read_only_fields_a_client_echoes_are_ignored() {
    // What the .NET SDK sends for a new configuration.
    let body = json!({
        "id": "firmware285", "schemaVersion": "1.0", "labels": {"team": "ops"},
        "content": {"deviceContent": {"properties.desired.x": 1}, "modulesContent": null, "moduleContent": {}},
        "targetCondition": "*", "createdTimeUtc": "0001-01-01T00:00:00", "lastUpdatedTimeUtc": "0001-01-01T00:00:00",
        "priority": 0,
        "systemMetrics": {"results": {"targetedCount": 9}, "queries": {"x": "y"}},
        "metrics": {"results": {"m": 3}, "queries": {"m": "SELECT deviceId FROM devices"}},
        "etag": "bogus",
    });
    let c = create(body).unwrap();
    assert_eq!(c.etag, "e1");
    assert_eq!(c.created_time_utc, t(1));
    assert_eq!(c.system_metrics.results, serde_json::Map::new());
    assert_eq!(c.system_metrics.queries["targetedCount"], "select deviceId from devices");
    assert!(c.metrics.results.is_empty());
    assert_eq!(c.labels["team"], "ops");
    assert!(c.targets_all() && !c.targets_nothing());
}

#[test]
fn ids_and_body_ids_are_checked() {
    let body = json!({"content": {"deviceContent": {"properties.desired.x": 1}}});
    let make = |id: &str, body: Value| Configuration::create(id, request(body), t(1), "e".into(), &ACCEPT);
    assert!(make("firmware285", body.clone()).is_ok(), "the body id may be absent");
    assert_eq!(code(make("Firmware285", body.clone())), ErrorCode::ArgumentInvalid);
    assert_eq!(code(make("a.b", body.clone())), ErrorCode::ArgumentInvalid);
    assert_eq!(code(make("a", with(body.clone(), "id", json!("b")))), ErrorCode::ArgumentInvalid);
    assert!(make("a", with(body, "id", json!(""))).is_ok());
}

#[test]
fn content_must_be_device_or_module_settings() {
    let device = json!({"properties.desired.x": 1});
    let body = |content: Value| json!({"content": content});
    let invalid = ErrorCode::InvalidConfigurationContent;
    assert_eq!(code(create(body(json!({"modulesContent": {"$edgeAgent": {}}})))), invalid);
    assert_eq!(
        code(create(body(json!({"deviceContent": device, "modulesContent": {"$edgeHub": {"x": 1}}})))),
        invalid
    );
    assert_eq!(code(create(body(json!({"deviceContent": device, "moduleContent": device})))), invalid);
    assert_eq!(code(create(body(json!({})))), invalid);
    assert_eq!(code(create(json!({}))), invalid);
    assert_eq!(code(create(body(json!({"deviceContent": {}})))), invalid);
    assert_eq!(code(create(body(json!({"deviceContent": {"properties.reported.x": 1}})))), invalid);
    assert_eq!(code(create(body(json!({"deviceContent": {"tags.x": 1}})))), invalid);
    assert!(create(body(json!({"deviceContent": device, "modulesContent": {}}))).is_ok());

    let module = create(json!({
        "content": {"moduleContent": {"properties.desired.y": 2}},
        "targetCondition": "FROM devices.modules WHERE moduleId = 'm'",
    }))
    .unwrap();
    assert_eq!(module.kind(), ConfigurationKind::Module);
    assert!(module.device_content().unwrap().is_empty(), "module configurations write no device twin");
    assert_eq!(
        module.system_metrics.queries["targetedCount"],
        "select deviceId, moduleId FROM devices.modules WHERE moduleId = 'm'"
    );
    let module_body = |cond: &str| json!({"content": {"moduleContent": {"properties.desired.y": 2}}, "targetCondition": cond});
    assert_eq!(code(create(module_body("*"))), ErrorCode::InvalidConfigurationTargetCondition);
    assert_eq!(code(create(module_body("tags.x = 1"))), ErrorCode::InvalidConfigurationTargetCondition);
    assert_eq!(
        code(create(module_body("FROM devices WHERE tags.x = 1"))),
        ErrorCode::InvalidConfigurationTargetCondition
    );
}

#[test]
fn conditions_and_metric_queries_go_to_the_query_checks() {
    let seen = RefCell::new(Vec::new());
    let record = |q: &str| {
        seen.borrow_mut().push(q.to_owned());
        if q.contains("bad") {
            Err("syntax error at 5: expected an expression".to_owned())
        } else {
            Ok(())
        }
    };
    let checks = QueryChecks { target_condition: &record, metric_query: &record };
    let make = |cond: &str, metrics: Value| {
        let body = json!({
            "content": {"deviceContent": {"properties.desired.x": 1}},
            "targetCondition": cond,
            "metrics": {"queries": metrics},
        });
        Configuration::create("c", request(body), t(1), "e".into(), &checks)
    };
    for skipped in ["", "  ", "*", " * "] {
        assert!(make(skipped, json!({})).is_ok());
    }
    assert!(seen.borrow().is_empty(), "empty and * need no parser");
    let nothing = make("", json!({})).unwrap();
    assert!(nothing.targets_nothing());
    assert!(nothing.system_metrics.queries.get("targetedCount").is_none());

    let e = make("tags.bad = ", json!({})).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidConfigurationTargetCondition);
    assert!(e.message.contains("syntax error at 5"), "{}", e.message);
    let e = make("tags.x = 1", json!({"m": "SELECT bad"})).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidConfigurationCustomMetricsQuery);
    assert_eq!(*seen.borrow(), ["tags.bad = ", "tags.x = 1", "SELECT bad"]);

    let six: serde_json::Map<String, Value> =
        (0..6).map(|i| (format!("m{i}"), json!("SELECT deviceId FROM devices"))).collect();
    assert_eq!(
        make("*", Value::Object(six)).unwrap_err().code,
        ErrorCode::InvalidConfigurationCustomMetricsQuery
    );
}

#[test]
fn priority_and_labels_are_checked() {
    let base = json!({"content": {"deviceContent": {"properties.desired.x": 1}}});
    assert_eq!(create(base.clone()).unwrap().priority, 0);
    assert_eq!(create(with(base.clone(), "priority", json!(null))).unwrap().priority, 0);
    for bad in [json!(-1), json!(2.5), json!("high"), json!(4_294_967_296_i64)] {
        assert_eq!(code(create(with(base.clone(), "priority", bad))), ErrorCode::ArgumentInvalid);
    }
    assert_eq!(code(create(with(base.clone(), "labels", json!({"$k": "v"})))), ErrorCode::ArgumentInvalid);
    assert_eq!(code(create(with(base, "labels", json!({"k": 1})))), ErrorCode::ArgumentInvalid);
}

#[test]
fn malformed_bodies_are_format_errors() {
    for body in
        [json!([]), json!("x"), json!({"content": "x"}), json!({"labels": []}), json!({"targetCondition": 1})]
    {
        assert_eq!(
            ConfigurationRequest::from_json(&body).unwrap_err().code,
            ErrorCode::IotHubFormatError,
            "{body}"
        );
    }
}

#[test]
fn updates_change_only_the_mutable_fields() {
    let c = create(tutorial_body()).unwrap();
    let mut c = c;
    c.metrics.set_result("current", 2);
    c.metrics.set_result("error", 1);
    c.system_metrics.set_result("targetedCount", 2);
    let mut body = serde_json::to_value(&c).unwrap();
    body["targetCondition"] = json!("tags.devicetype = 'chiller' AND tags.site = 'b'");
    body["priority"] = json!(30);
    body["labels"] = json!({"wave": "2"});
    body["schemaVersion"] = json!("2.0");
    body["createdTimeUtc"] = json!("2001-01-01T00:00:00Z");
    body["metrics"]["queries"]["error"] =
        json!("SELECT deviceId FROM devices WHERE properties.reported.x = 'err'");
    let u = c.updated(request(body), t(5), "e2".into(), &ACCEPT).unwrap();
    assert_eq!(u.target_condition, "tags.devicetype = 'chiller' AND tags.site = 'b'");
    assert_eq!((u.priority, u.labels["wave"].as_str()), (30, "2"));
    assert_eq!((u.etag.as_str(), u.last_updated_time_utc, u.created_time_utc), ("e2", t(5), t(1)));
    assert_eq!(u.schema_version, "1.0", "not a mutable field");
    assert_eq!(
        u.system_metrics.queries["targetedCount"],
        "select deviceId from devices where tags.devicetype = 'chiller' AND tags.site = 'b'"
    );
    assert_eq!(u.system_metrics.results["targetedCount"], 2, "the engine recomputes results");
    assert_eq!(
        Value::Object(u.metrics.results.clone()),
        json!({"current": 2}),
        "a changed query loses its result"
    );
    assert_eq!(u.content, c.content);
}

#[test]
fn content_is_immutable() {
    let c = create(tutorial_body()).unwrap();
    let mut changed = tutorial_body();
    changed["content"]["deviceContent"]["properties.desired.firmware"]["fwVersion"] = json!("2.8.6");
    let e = c.updated(request(changed), t(5), "e2".into(), &ACCEPT).unwrap_err();
    assert_eq!(e.code, ErrorCode::CannotModifyImmutableConfigurationContent);
    assert_eq!((e.code.http_status(), e.code.numeric()), (400, 400403));
    let added = with(tutorial_body(), "content", json!({"deviceContent": {"properties.desired.x": 1}}));
    assert_eq!(c.updated(request(added), t(5), "e".into(), &ACCEPT).unwrap_err().code, e.code);

    // The same content, however spelled, and no content at all are fine.
    let mut same = tutorial_body();
    same["content"] = json!({
        "modulesContent": {}, "moduleContent": null,
        "deviceContent": {"properties.desired.firmware": {
            "fwPackageCheckValue": "123456abcde", "fwPackageURI": "https://secureuri/package.bin", "fwVersion": "2.8.5",
        }},
    });
    assert!(c.updated(request(same), t(5), "e2".into(), &ACCEPT).is_ok());
    let u = c.updated(request(json!({"priority": 1})), t(5), "e2".into(), &ACCEPT).unwrap();
    assert_eq!((u.priority, u.content.clone()), (1, c.content.clone()));
    assert_eq!(u.target_condition, c.target_condition, "absent fields keep their value");
}

#[test]
fn an_update_that_changes_nothing_keeps_the_etag() {
    let c = create(tutorial_body()).unwrap();
    let echo = serde_json::to_value(&c).unwrap();
    let u = c.updated(request(echo), t(9), "e2".into(), &ACCEPT).unwrap();
    assert_eq!(u, c);
    // Invalid updates are refused as a whole.
    let bad = json!({"priority": 5, "labels": {"bad label": "x"}});
    assert_eq!(
        c.updated(request(bad), t(9), "e2".into(), &ACCEPT).unwrap_err().code,
        ErrorCode::ArgumentInvalid
    );
    let bad = json!({"targetCondition": "*", "content": {"moduleContent": {"properties.desired.x": 1}}});
    assert_eq!(
        c.updated(request(bad), t(9), "e2".into(), &ACCEPT).unwrap_err().code,
        ErrorCode::CannotModifyImmutableConfigurationContent
    );
}

#[test]
fn errors_carry_azures_codes() {
    assert!(check_count(99).is_ok());
    let e = check_count(100).unwrap_err();
    assert_eq!(
        (e.code, e.code.http_status(), e.code.numeric()),
        (ErrorCode::ConfigurationCountLimitExceeded, 413, 413101)
    );
    let e = not_found("x");
    assert_eq!(
        (e.code.name(), e.code.http_status(), e.code.numeric()),
        ("ConfigurationNotFound", 404, 404301)
    );
    let e = already_exists("x");
    assert_eq!(
        (e.code.name(), e.code.http_status(), e.code.numeric()),
        ("ConfigurationAlreadyExists", 409, 409401)
    );
}

#[test]
fn test_queries_reports_each_error_and_creates_nothing() {
    let check = |q: &str| if q.contains("bad") { Err(format!("cannot parse {q}")) } else { Ok(()) };
    let checks = QueryChecks { target_condition: &check, metric_query: &check };
    let req: TestQueriesRequest = serde_json::from_value(json!({
        "targetCondition": "tags.bad",
        "customMetricQueries": {"ok": "SELECT deviceId FROM devices", "broken": "SELECT bad", "empty": ""},
    }))
    .unwrap();
    let r = serde_json::to_value(test_queries(&req, &checks)).unwrap();
    assert_eq!(r["targetConditionError"], "The target condition is invalid: cannot parse tags.bad");
    assert_eq!(r["customMetricQueryErrors"]["ok"], "");
    assert_eq!(r["customMetricQueryErrors"]["broken"], "cannot parse SELECT bad");
    assert_ne!(r["customMetricQueryErrors"]["empty"], "");
    let r = test_queries(&TestQueriesRequest::default(), &checks);
    assert_eq!(
        serde_json::to_value(r).unwrap(),
        json!({"targetConditionError": "", "customMetricQueryErrors": {}})
    );
}

#[test]
fn a_stored_configuration_becomes_a_targeting_entry() {
    let c = create(tutorial_body()).unwrap();
    let content = c.device_content().unwrap();
    let t_cfg = c.targeting(&content);
    assert_eq!((t_cfg.id, t_cfg.priority, t_cfg.created), ("firmware285", 20, t(1)));
    assert_eq!(t_cfg.content.settings()[0].path, ["firmware"]);
}
