//! The golden corpus: (query, expected result) over one fixed fleet of twins
//! rendered in the hub's exact twin shape. `SELECT *` results are compared
//! by device id (the rows are the twins themselves); projections and
//! aggregates are compared row by row, key order included.

#![allow(clippy::unwrap_used)]

mod common;

use common::{desired_firmware, firmware, twin};
use ferrohub_query::{execute, parse_query, ItemType};
use serde_json::{json, Value};

fn fleet() -> Vec<Value> {
    let mut d1_reported = firmware("current", "2.8.5");
    d1_reported["temperature"] = json!(21.5);
    let mut d2_reported = firmware("downloading", "1.0.0");
    d2_reported["temperature"] = json!(19);
    [
        twin("d1")
            .tags(json!({"devicetype": "chiller", "location": {"region": "US", "plant": "Redmond"}, "floor": 3}))
            .desired(desired_firmware())
            .reported(d1_reported)
            .config("firmware285", "Applied")
            .connected()
            .c2d(2),
        twin("d2")
            .tags(json!({"devicetype": "chiller", "location": {"region": "EU"}, "floor": 1}))
            .desired(desired_firmware())
            .reported(d2_reported)
            .config("firmware285", "Applied"),
        twin("d3").tags(json!({"devicetype": "sensor", "floor": "ground"})).reported(json!({"temperature": 25})),
        twin("d4")
            .tags(json!({"devicetype": "chiller", "floor": 3}))
            .reported(firmware("error", "1.0.0"))
            .config("firmware285", "Targeted")
            .status("disabled"),
        twin("d5"),
        twin("d6")
            .tags(json!({"devicetype": 5, "group": "a", "fw-version": "1.0", "Devicetype": "chiller"}))
            .reported(json!({"temperature": "hot", "list": [1, null]})),
    ]
    .iter()
    .map(|t| t.render())
    .collect()
}

/// `SELECT * FROM devices WHERE …` cases: the device ids returned, in order.
const TWIN_CASES: &[(&str, &[&str])] = &[
    ("SELECT * FROM devices", &["d1", "d2", "d3", "d4", "d5", "d6"]),
    ("select * from DEVICES", &["d1", "d2", "d3", "d4", "d5", "d6"]),
    ("SELECT * FROM devices WHERE tags.devicetype = 'chiller'", &["d1", "d2", "d4"]),
    ("sElEcT * fRoM devices wHeRe Tags.devicetype = \"chiller\"", &["d1", "d2", "d4"]),
    // Keys under tags are case-sensitive.
    ("SELECT * FROM devices WHERE tags.Devicetype = 'chiller'", &["d6"]),
    ("SELECT * FROM devices WHERE tags.DEVICETYPE = 'chiller'", &[]),
    // Type mismatches and missing values are undefined, for != too.
    ("SELECT * FROM devices WHERE tags.devicetype != 'chiller'", &["d3"]),
    ("SELECT * FROM devices WHERE tags.devicetype <> 'chiller'", &["d3"]),
    ("SELECT * FROM devices WHERE NOT tags.devicetype = 'chiller'", &["d3"]),
    ("SELECT * FROM devices WHERE NOT (tags.devicetype = 'chiller')", &["d3"]),
    ("SELECT * FROM devices WHERE NOT NOT tags.devicetype = 'chiller'", &["d1", "d2", "d4"]),
    ("SELECT * FROM devices WHERE tags.devicetype = 5", &["d6"]),
    ("SELECT * FROM devices WHERE tags.devicetype = '5'", &[]),
    ("SELECT * FROM devices WHERE tags.devicetype IN ['sensor', 5]", &["d3", "d6"]),
    ("SELECT * FROM devices WHERE tags.devicetype NIN ['chiller']", &["d3", "d6"]),
    ("SELECT * FROM devices WHERE tags.devicetype NOT IN ['chiller', 5]", &["d3"]),
    ("SELECT * FROM devices WHERE tags.devicetype IN []", &[]),
    ("SELECT * FROM devices WHERE tags.location IN ['US']", &[]),
    ("SELECT * FROM devices WHERE tags.location NIN ['US']", &[]),
    ("SELECT * FROM devices WHERE IS_DEFINED(tags.devicetype)", &["d1", "d2", "d3", "d4", "d6"]),
    ("SELECT * FROM devices WHERE NOT IS_DEFINED(tags.devicetype)", &["d5"]),
    ("SELECT * FROM devices WHERE is_defined(properties.reported.firmware)", &["d1", "d2", "d4"]),
    ("SELECT * FROM devices WHERE tags.location.region = 'US'", &["d1"]),
    // Ordering: numbers with numbers, strings with strings.
    ("SELECT * FROM devices WHERE tags.floor > 1", &["d1", "d4"]),
    ("SELECT * FROM devices WHERE tags.floor >= 1", &["d1", "d2", "d4"]),
    ("SELECT * FROM devices WHERE tags.floor < 'h'", &["d3"]),
    ("SELECT * FROM devices WHERE tags.floor <= 3 AND tags.floor >= 3", &["d1", "d4"]),
    ("SELECT * FROM devices WHERE deviceId >= 'd4'", &["d4", "d5", "d6"]),
    ("SELECT * FROM devices WHERE 'chiller' = tags.devicetype", &["d1", "d2", "d4"]),
    ("SELECT * FROM devices WHERE properties.reported.temperature > 20", &["d1", "d3"]),
    // Arithmetic.
    ("SELECT * FROM devices WHERE properties.reported.temperature * 2 > 40", &["d1", "d3"]),
    ("SELECT * FROM devices WHERE properties.reported.temperature + 1 = 20", &["d2"]),
    ("SELECT * FROM devices WHERE properties.reported.temperature % 2 = 1", &["d2", "d3"]),
    ("SELECT * FROM devices WHERE -tags.floor = -3", &["d1", "d4"]),
    ("SELECT * FROM devices WHERE tags.floor / 0 = 1 OR deviceId = 'd2'", &["d2"]),
    // Precedence: AND binds tighter than OR; parentheses override.
    (
        "SELECT * FROM devices WHERE tags.devicetype = 'chiller' OR tags.devicetype = 'sensor' AND tags.floor = 'ground'",
        &["d1", "d2", "d3", "d4"],
    ),
    (
        "SELECT * FROM devices WHERE (tags.devicetype = 'chiller' OR tags.devicetype = 'sensor') AND tags.floor = 3",
        &["d1", "d4"],
    ),
    // Configurations.
    ("SELECT * FROM devices WHERE configurations.[[firmware285]].status = 'Applied'", &["d1", "d2"]),
    ("SELECT * FROM devices WHERE configurations.[[firmware285]].Status = 'Targeted'", &["d4"]),
    ("SELECT * FROM devices WHERE configurations.firmware285.status = 'Applied'", &["d1", "d2"]),
    ("SELECT * FROM devices WHERE configurations.[[Firmware285]].status = 'Applied'", &[]),
    // System properties (names case-insensitive, values case-sensitive).
    ("SELECT * FROM devices WHERE status = 'disabled'", &["d4"]),
    ("SELECT * FROM devices WHERE STATUS = 'disabled'", &["d4"]),
    ("SELECT * FROM devices WHERE Status = 'DISABLED'", &[]),
    ("SELECT * FROM devices WHERE connectionState = 'Connected'", &["d1"]),
    ("SELECT * FROM devices WHERE cloudToDeviceMessageCount = 0x2", &["d1"]),
    ("SELECT * FROM devices WHERE cloudToDeviceMessageCount > 1e0", &["d1"]),
    ("SELECT * FROM devices WHERE cloudToDeviceMessageCount > 1.5E-1", &["d1"]),
    ("SELECT * FROM devices WHERE capabilities.iotEdge = false", &["d1", "d2", "d3", "d4", "d5", "d6"]),
    ("SELECT * FROM devices WHERE version = 4 AND etag = 'AAAAAAAAAAM='", &["d1", "d2", "d3", "d4", "d5", "d6"]),
    ("SELECT * FROM devices WHERE authenticationType = 'sas' AND modelId = ''", &["d1", "d2", "d3", "d4", "d5", "d6"]),
    // null and undefined.
    ("SELECT * FROM devices WHERE x509Thumbprint.primaryThumbprint = null", &["d1", "d2", "d3", "d4", "d5", "d6"]),
    ("SELECT * FROM devices WHERE IS_NULL(x509Thumbprint.primaryThumbprint)", &["d1", "d2", "d3", "d4", "d5", "d6"]),
    ("SELECT * FROM devices WHERE IS_DEFINED(X509Thumbprint.PrimaryThumbprint)", &["d1", "d2", "d3", "d4", "d5", "d6"]),
    ("SELECT * FROM devices WHERE x509Thumbprint.primaryThumbprint != null", &[]),
    ("SELECT * FROM devices WHERE x509Thumbprint.primaryThumbprint != 'AB'", &[]),
    ("SELECT * FROM devices WHERE IS_DEFINED(statusReason)", &[]),
    ("SELECT * FROM devices WHERE IS_NULL(statusReason)", &[]),
    ("SELECT * FROM devices WHERE tags.missing = undefined", &[]),
    ("SELECT * FROM devices WHERE tags.missing != 'x'", &[]),
    ("SELECT * FROM devices WHERE NOT tags.missing = 'x'", &[]),
    ("SELECT * FROM devices WHERE tags.missing = 'x' OR deviceId = 'd5'", &["d5"]),
    ("SELECT * FROM devices WHERE tags.missing = 'x' AND deviceId = 'd5'", &[]),
    ("SELECT * FROM devices WHERE NOT (tags.missing = 'x' AND deviceId = 'd5')", &["d1", "d2", "d3", "d4", "d6"]),
    ("SELECT * FROM devices WHERE NOT (tags.missing = 'x' OR deviceId != 'd5')", &[]),
    ("SELECT * FROM devices WHERE tags.floor = tags.floor", &["d1", "d2", "d3", "d4"]),
    ("SELECT * FROM devices WHERE tags.location = tags.location", &[]),
    ("SELECT * FROM devices WHERE properties.reported.list = [1, null]", &[]),
    // Conditions that are not booleans exclude every row.
    ("SELECT * FROM devices WHERE tags.devicetype", &[]),
    ("SELECT * FROM devices WHERE null", &[]),
    ("SELECT * FROM devices WHERE undefined", &[]),
    ("SELECT * FROM devices WHERE 1", &[]),
    ("SELECT * FROM devices WHERE true", &["d1", "d2", "d3", "d4", "d5", "d6"]),
    ("SELECT * FROM devices WHERE false", &[]),
    ("SELECT * FROM devices WHERE capabilities.iotEdge = false AND NOT capabilities.iotEdge", &["d1", "d2", "d3", "d4", "d5", "d6"]),
    // Functions.
    ("SELECT * FROM devices WHERE STARTSWITH(devices.deviceId, 'd')", &["d1", "d2", "d3", "d4", "d5", "d6"]),
    ("SELECT * FROM devices WHERE STARTSWITH(deviceId, 'D')", &[]),
    ("SELECT * FROM devices WHERE ENDSWITH(deviceId, '3')", &["d3"]),
    ("SELECT * FROM devices WHERE ends_with(deviceId, '3')", &["d3"]),
    ("SELECT * FROM devices WHERE CONTAINS(tags.location.plant, 'edm')", &["d1"]),
    ("SELECT * FROM devices WHERE LOWER(tags.location.plant) = 'redmond'", &["d1"]),
    ("SELECT * FROM devices WHERE UPPER(tags.location.region) = 'EU'", &["d2"]),
    ("SELECT * FROM devices WHERE LENGTH(tags.floor) = 6", &["d3"]),
    ("SELECT * FROM devices WHERE IS_STRING(tags.floor)", &["d3"]),
    ("SELECT * FROM devices WHERE IS_NUMBER(tags.floor)", &["d1", "d2", "d4"]),
    ("SELECT * FROM devices WHERE IS_OBJECT(tags.location)", &["d1", "d2"]),
    ("SELECT * FROM devices WHERE IS_ARRAY(properties.reported.list)", &["d6"]),
    ("SELECT * FROM devices WHERE IS_BOOL(capabilities.iotEdge) AND NOT IS_BOOL(tags)", &["d1", "d2", "d3", "d4", "d5", "d6"]),
    ("SELECT * FROM devices WHERE IS_PRIMITIVE(tags.location)", &[]),
    ("SELECT * FROM devices WHERE IS_PRIMITIVE(tags.floor)", &["d1", "d2", "d3", "d4"]),
    ("SELECT * FROM devices WHERE CONCAT(deviceId, '-', status) = 'd4-disabled'", &["d4"]),
    ("SELECT * FROM devices WHERE SUBSTRING(tags.location.plant, 0, 3) = 'Red'", &["d1"]),
    ("SELECT * FROM devices WHERE INDEX_OF(tags.floor, 'o') = 2", &["d3"]),
    ("SELECT * FROM devices WHERE AS_NUMBER(tags.[[fw-version]]) = 1", &["d6"]),
    ("SELECT * FROM devices WHERE ABS(tags.floor - 5) = 2 AND FLOOR(properties.reported.temperature) = 21", &["d1"]),
    // Quoted segments and keywords after a dot.
    ("SELECT * FROM devices WHERE tags.[[fw-version]] = '1.0'", &["d6"]),
    ("SELECT * FROM devices WHERE tags.group = 'a'", &["d6"]),
    ("SELECT * FROM devices WHERE tags.[[group]] = 'a'", &["d6"]),
    ("SELECT * FROM devices WHERE [[tags]].[[group]] = 'a'", &["d6"]),
    // $metadata and $version.
    ("SELECT * FROM devices WHERE properties.desired.$version = 2", &["d1", "d2", "d3", "d4", "d5", "d6"]),
    (
        "SELECT * FROM devices WHERE IS_DEFINED(properties.reported.$metadata.firmware.fwUpdateStatus.$lastUpdated)",
        &["d1", "d2", "d4"],
    ),
    (
        "SELECT * FROM devices WHERE properties.reported.$metadata.$lastUpdated = '2024-05-01T10:00:00.0000000Z'",
        &["d1", "d2", "d3", "d4", "d5", "d6"],
    ),
    (
        "SELECT * FROM devices WHERE properties.desired.firmware.fwVersion = properties.reported.firmware.currentFwVersion",
        &["d1"],
    ),
    // TOP.
    ("SELECT TOP 2 * FROM devices WHERE tags.devicetype = 'chiller'", &["d1", "d2"]),
    ("SELECT TOP 100 * FROM devices WHERE tags.devicetype = 'chiller'", &["d1", "d2", "d4"]),
    ("SELECT TOP 0 * FROM devices", &[]),
];

/// Projection and aggregate cases: the exact rows.
fn raw_cases() -> Vec<(&'static str, Value)> {
    let firmware_d4 = firmware("error", "1.0.0")["firmware"].clone();
    vec![
        (
            "SELECT deviceId FROM devices WHERE tags.devicetype = 'chiller'",
            json!([{"deviceId": "d1"}, {"deviceId": "d2"}, {"deviceId": "d4"}]),
        ),
        ("SELECT DeviceId, Status FROM devices WHERE deviceId = 'd4'", json!([{"deviceId": "d4", "status": "disabled"}])),
        (
            "SELECT deviceId, tags.location.region FROM devices WHERE deviceId <= 'd3'",
            json!([{"deviceId": "d1", "region": "US"}, {"deviceId": "d2", "region": "EU"}, {"deviceId": "d3"}]),
        ),
        ("SELECT tags.location.region AS r FROM devices WHERE deviceId = 'd1'", json!([{"r": "US"}])),
        ("SELECT tags.location.region AS [[group]] FROM devices WHERE deviceId = 'd1'", json!([{"group": "US"}])),
        ("SELECT tags.missing FROM devices WHERE deviceId = 'd1'", json!([{}])),
        ("SELECT properties.reported.firmware FROM devices WHERE deviceId = 'd4'", json!([{"firmware": firmware_d4}])),
        ("SELECT x509Thumbprint.primaryThumbprint FROM devices WHERE deviceId = 'd4'", json!([{"primaryThumbprint": null}])),
        ("SELECT devices.deviceId FROM devices WHERE deviceId = 'd4'", json!([{"deviceId": "d4"}])),
        (
            "SELECT deviceId, UPPER(deviceId), tags.floor * 10 AS f FROM devices WHERE deviceId IN ['d1', 'd3']",
            json!([{"deviceId": "d1", "$1": "D1", "f": 30}, {"deviceId": "d3", "$1": "D3"}]),
        ),
        (
            "SELECT deviceId, 'x' AS k, [1, 'a'] AS arr, null AS z, undefined AS u, 2.5 AS n FROM devices WHERE deviceId = 'd5'",
            json!([{"deviceId": "d5", "k": "x", "arr": [1, "a"], "z": null, "n": 2.5}]),
        ),
        (
            "SELECT configurations.[[firmware285]].status FROM devices WHERE IS_DEFINED(configurations)",
            json!([{"status": "Applied"}, {"status": "Applied"}, {"status": "Targeted"}]),
        ),
        ("SELECT tags.location FROM devices WHERE deviceId = 'd2'", json!([{"location": {"region": "EU"}}])),
        ("SELECT TOP 1 deviceId FROM devices", json!([{"deviceId": "d1"}])),
        ("SELECT TOP 0 deviceId FROM devices", json!([])),
        // Aggregates.
        ("SELECT COUNT() AS n FROM devices", json!([{"n": 6}])),
        ("SELECT COUNT() AS total FROM devices WHERE tags.devicetype = 'chiller'", json!([{"total": 3}])),
        ("SELECT count() FROM devices", json!([{"$1": 6}])),
        ("SELECT COUNT() AS n FROM devices WHERE false", json!([{"n": 0}])),
        ("SELECT TOP 1 COUNT() AS n FROM devices", json!([{"n": 6}])),
        ("SELECT TOP 0 COUNT() AS n FROM devices", json!([])),
        (
            "SELECT COUNT() AS n, SUM(tags.floor) AS s, AVG(tags.floor) AS a, MIN(properties.reported.temperature) AS lo, \
             MAX(properties.reported.temperature) AS hi FROM devices",
            json!([{"n": 6, "s": 7, "a": 7.0 / 3.0, "lo": 19, "hi": 25}]),
        ),
        ("SELECT SUM(tags.floor), COUNT() FROM devices WHERE deviceId = 'd1'", json!([{"$1": 3, "$2": 1}])),
        (
            "SELECT SUM(tags.floor) AS s, AVG(tags.floor) AS a, MIN(tags.floor) AS lo, MAX(tags.floor) AS hi FROM devices WHERE deviceId = 'd5'",
            json!([{"s": 0}]),
        ),
        // GROUP BY: undefined is a group of its own whose row leaves the key out.
        (
            "SELECT tags.devicetype AS type, COUNT() AS n FROM devices GROUP BY tags.devicetype",
            json!([{"type": "chiller", "n": 3}, {"type": "sensor", "n": 1}, {"n": 1}, {"type": 5, "n": 1}]),
        ),
        (
            "SELECT COUNT() AS n, tags.devicetype FROM devices GROUP BY tags.devicetype",
            json!([{"n": 3, "devicetype": "chiller"}, {"n": 1, "devicetype": "sensor"}, {"n": 1}, {"n": 1, "devicetype": 5}]),
        ),
        (
            "SELECT tags.devicetype, tags.floor, COUNT() AS n FROM devices WHERE tags.devicetype = 'chiller' \
             GROUP BY tags.devicetype, tags.floor",
            json!([{"devicetype": "chiller", "floor": 3, "n": 2}, {"devicetype": "chiller", "floor": 1, "n": 1}]),
        ),
        (
            "SELECT tags.floor FROM devices GROUP BY tags.floor",
            json!([{"floor": 3}, {"floor": 1}, {"floor": "ground"}, {}]),
        ),
        (
            "SELECT TOP 2 tags.devicetype, COUNT() AS n FROM devices GROUP BY tags.devicetype",
            json!([{"devicetype": "chiller", "n": 3}, {"devicetype": "sensor", "n": 1}]),
        ),
        ("SELECT COUNT() AS n FROM devices WHERE tags.devicetype = 'nothing' GROUP BY tags.devicetype", json!([])),
        ("SELECT COUNT() AS n FROM devices GROUP BY status", json!([{"n": 5}, {"n": 1}])),
        (
            "SELECT MAX(tags.floor) AS m, tags.devicetype FROM devices GROUP BY tags.devicetype",
            json!([{"m": 3, "devicetype": "chiller"}, {"devicetype": "sensor"}, {}, {"devicetype": 5}]),
        ),
        (
            "SELECT tags.location AS l, COUNT() AS n FROM devices WHERE IS_DEFINED(tags.location) GROUP BY tags.location",
            json!([{"l": {"region": "US", "plant": "Redmond"}, "n": 1}, {"l": {"region": "EU"}, "n": 1}]),
        ),
    ]
}

#[test]
fn twin_queries_return_the_matching_twins_whole() {
    let rows = fleet();
    let mut failures = Vec::new();
    for &(query, expected) in TWIN_CASES {
        let parsed = parse_query(query).unwrap_or_else(|e| panic!("{query}: {e}"));
        let result = execute(&parsed, rows.iter()).unwrap();
        assert_eq!(result.item_type, ItemType::Twin, "{query}");
        let ids: Vec<&str> = result.items.iter().map(|t| t["deviceId"].as_str().unwrap()).collect();
        if ids != expected {
            failures.push(format!("{query}\n  expected {expected:?}\n  got      {ids:?}"));
        }
        // Whole, unchanged twins.
        for item in &result.items {
            assert!(rows.contains(item), "{query}");
        }
    }
    assert!(failures.is_empty(), "{} failing cases:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn projections_and_aggregates_return_raw_rows() {
    let rows = fleet();
    let mut failures = Vec::new();
    for (query, expected) in raw_cases() {
        let parsed = parse_query(query).unwrap_or_else(|e| panic!("{query}: {e}"));
        let result = execute(&parsed, rows.iter()).unwrap();
        assert_eq!(result.item_type, ItemType::Raw, "{query}");
        let got = Value::Array(result.items);
        // Compare the text too, so the order of keys counts.
        if got != expected
            || serde_json::to_string(&got).unwrap() != serde_json::to_string(&expected).unwrap()
        {
            failures.push(format!("{query}\n  expected {expected}\n  got      {got}"));
        }
    }
    assert!(failures.is_empty(), "{} failing cases:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn item_type_strings_are_what_the_sdks_parse() {
    assert_eq!(ItemType::Twin.as_str(), "Twin");
    assert_eq!(ItemType::Raw.as_str(), "Raw");
}

#[test]
fn numbers_group_by_value_and_rows_are_not_touched() {
    let rows = vec![
        json!({"deviceId": "a", "tags": {"n": 1}}),
        json!({"deviceId": "b", "tags": {"n": 1.0}}),
        json!({"deviceId": "c", "tags": {"n": -0.0}}),
        json!({"deviceId": "d", "tags": {"n": 0}}),
        json!({"deviceId": "e", "tags": {"n": "1"}}),
        json!({"deviceId": "f", "tags": {"n": true}}),
        json!({"deviceId": "g", "tags": {"n": null}}),
    ];
    let before = rows.clone();
    let q = parse_query("SELECT tags.n, COUNT() AS c FROM devices GROUP BY tags.n").unwrap();
    let result = execute(&q, rows.iter()).unwrap();
    assert_eq!(
        Value::Array(result.items),
        json!([{"n": 1, "c": 2}, {"n": -0.0, "c": 2}, {"n": "1", "c": 1}, {"n": true, "c": 1}, {"n": null, "c": 1}])
    );
    assert_eq!(rows, before);
}

#[test]
fn module_twins_are_queried_the_same_way() {
    let modules = [
        json!({"deviceId": "d1", "moduleId": "m1", "properties": {"reported": {"status": "scanning"}}}),
        json!({"deviceId": "d2", "moduleId": "m1", "properties": {"reported": {"status": "scanning"}}}),
        json!({"deviceId": "d3", "moduleId": "m2", "properties": {"reported": {"status": "idle"}}}),
    ];
    let q = parse_query(
        "SELECT * FROM devices.modules WHERE properties.reported.status = 'scanning' AND deviceId IN ['d1', 'd3']",
    )
    .unwrap();
    let result = execute(&q, modules.iter()).unwrap();
    assert_eq!(result.item_type, ItemType::Twin);
    assert_eq!(result.items, vec![modules[0].clone()]);
    let q =
        parse_query("SELECT deviceId, devices.modules.moduleId FROM devices.modules WHERE moduleId = 'm1'")
            .unwrap();
    let result = execute(&q, modules.iter()).unwrap();
    assert_eq!(result.item_type, ItemType::Raw);
    assert_eq!(
        result.items,
        vec![json!({"deviceId": "d1", "moduleId": "m1"}), json!({"deviceId": "d2", "moduleId": "m1"})]
    );
}

#[test]
fn device_jobs_parse_but_are_not_supported() {
    let q = parse_query("SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'j1'").unwrap();
    let err = execute(&q, std::iter::empty()).unwrap_err();
    assert_eq!(err.message, "Not supported: FROM devices.jobs (ferrohub does not keep device job rows yet)");
    assert_eq!(err.position, 0);
}

#[test]
fn row_matches_follows_the_where_clause() {
    let rows = fleet();
    let q = parse_query("SELECT deviceId FROM devices WHERE tags.devicetype = 'chiller'").unwrap();
    let matching: Vec<bool> = rows.iter().map(|r| q.row_matches(r)).collect();
    assert_eq!(matching, [true, true, false, true, false, false]);
    let all = parse_query("SELECT deviceId FROM devices").unwrap();
    assert!(rows.iter().all(|r| all.row_matches(r)));
}
