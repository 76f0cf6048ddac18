//! Fuzzing entry points, shared by the targets in `fuzz/fuzz_targets/`
//! (`credentials`, `twin`, `configuration`) and the corpus replay test
//! (`tests/corpus.rs`), so CI replays exactly what the fuzzer ran.
//!
//! Each must never panic on any input; the `assert`s check invariants whose
//! failure is a bug.

use serde_json::{json, Value};

use crate::configuration::{
    apply_configurations, test_queries, Configuration, ConfigurationRequest, QueryChecks, TestQueriesRequest,
};
use crate::connection_string::ConnectionString;
use crate::sas::{authorize, generate_token, KeyLookup, Rights, SasToken, SharedAccessPolicy};
use crate::time::Timestamp;
use crate::twin::{limits, merge_into, TwinState};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const HOST: &str = "hub.example.net";

/// Knows one policy and every device, all under [`KEY`], so `authorize`
/// runs its whole path on a parsed token.
struct Keys(SharedAccessPolicy);

impl KeyLookup for Keys {
    fn policy(&self, name: &str) -> Option<&SharedAccessPolicy> {
        (name == self.0.key_name).then_some(&self.0)
    }
    fn device_keys(&self, _: &str) -> Option<(String, String)> {
        Some((KEY.to_owned(), KEY.to_owned()))
    }
    fn module_keys(&self, _: &str, _: &str) -> Option<(String, String)> {
        Some((KEY.to_owned(), KEY.to_owned()))
    }
}

/// The bytes (as text) as a SAS token and as a connection string.
///
/// A parsed token's path is normalised and covers itself, and a token
/// generated for its decoded resource, `skn` and expiry parses back to the
/// same resource and verifies. A parsed connection string survives
/// `Display` and, when it can sign, its token verifies under its key.
pub fn fuzz_credentials(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let keys = Keys(SharedAccessPolicy::new("iothubowner", Rights::ALL, &mut || KEY.to_owned()));
    let hosts = [HOST.to_owned()];
    for target in ["", "/devices/dev1", "/devices/dev1/modules/m1"] {
        let _ = authorize(&text, 1_700_000_000, &hosts, target, &keys);
    }
    if let Ok(token) = SasToken::parse(&text) {
        check_token(&token);
    }
    // Also as the fields of a token, the way a connection string's value
    // or a hand-made password often arrives.
    if let Ok(token) = SasToken::parse(&format!("SharedAccessSignature {text}")) {
        check_token(&token);
    }
    if let Ok(cs) = text.parse::<ConnectionString>() {
        let again = cs.to_string().parse::<ConnectionString>();
        assert_eq!(again.as_ref().ok(), Some(&cs), "a connection string survives Display");
        if let (Ok(token), Some(key)) = (cs.sas_token(1_900_000_000), &cs.shared_access_key) {
            if cs.shared_access_signature.is_none() {
                let parsed = SasToken::parse(&token);
                assert!(parsed.is_ok_and(|t| t.verify(key)), "a connection string's token verifies");
            }
        }
    }
}

fn check_token(token: &SasToken) {
    let (host, path) = token.resource();
    assert!(path.is_empty() || path.starts_with('/'), "path is rooted");
    assert!(!path.ends_with('/') && !path.contains("//"), "path is normalised");
    assert!(!host.contains('/'), "host holds no slash");
    let hosts = [host.clone()];
    assert!(token.covers(&hosts, &path), "a token covers its own resource");
    let uri = format!("{host}{path}");
    if uri.is_empty() {
        return;
    }
    let made = generate_token(&uri, KEY, token.skn(), token.expiry());
    let made = made.as_deref().map(SasToken::parse);
    let Ok(Ok(made)) = made else { panic!("a token for a parsed resource is generated and parses") };
    assert!(made.verify(KEY), "a generated token verifies");
    assert_eq!(made.resource(), (host, path), "the resource survives encoding");
    assert_eq!(made.skn(), token.skn().filter(|s| !s.is_empty()), "skn survives encoding");
    assert_eq!(made.expiry(), token.expiry());
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_unix_millis(seconds * 1000)
}

/// A twin with something in every section, for patches to meet.
fn sample_twin() -> TwinState {
    let mut twin = TwinState::new(at(1_700_000_000));
    let seed = json!({
        "tags": {"site": "a", "nested": {"x": 1, "y": [1, 2]}},
        "properties": {"desired": {"fw": "1.0", "cfg": {"rate": 5, "mode": "eco"}}}
    });
    let _ = twin.apply_service_patch(&seed, at(1_700_000_001));
    let _ = twin.apply_reported_patch(&json!({"fw": "1.0", "battery": {"level": 90}}), at(1_700_000_002));
    twin
}

/// The bytes as JSON, applied to a sample twin as a service PATCH, a
/// service PUT and a device's reported patch.
///
/// A refused operation leaves the twin untouched; an accepted one moves the
/// version and etag by at most one (exactly one when it says it changed),
/// keeps every section within IoT Hub's limits, survives the store's JSON
/// round trip, and its desired notification merged into the old desired
/// gives the new desired.
pub fn fuzz_twin(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<Value>(data) else { return };
    let base = sample_twin();
    let now = at(1_700_000_100);
    let ops: [fn(&mut TwinState, &Value, Timestamp) -> _; 3] =
        [TwinState::apply_service_patch, TwinState::replace, TwinState::apply_reported_patch];
    for op in ops {
        let mut twin = base.clone();
        let Ok(change) = op(&mut twin, &body, now) else {
            assert_eq!(twin, base, "a refused operation changes nothing");
            continue;
        };
        let moved = twin.version - base.version;
        assert_eq!(moved, i64::from(change.changed), "version moves once per change");
        assert_eq!(twin.etag_seq - base.etag_seq, moved as u64, "etag moves with the version");
        for (section, name) in
            [(&twin.tags, "tags"), (&twin.desired.props, "desired"), (&twin.reported.props, "reported")]
        {
            assert!(limits::validate_props(section, name).is_ok(), "stored {name} passes the limits");
        }
        if let Some(Value::Object(mut patch)) = change.desired_patch {
            let version = patch.shift_remove("$version");
            assert_eq!(version, Some(Value::from(twin.desired.version)), "notification carries $version");
            let mut device = base.desired.props.clone();
            merge_into(&mut device, &patch);
            assert_eq!(device, twin.desired.props, "the notification brings a device up to date");
        }
        let stored = serde_json::to_vec(&twin).ok();
        let loaded = stored.and_then(|s| serde_json::from_slice::<TwinState>(&s).ok());
        assert_eq!(loaded.as_ref(), Some(&twin), "a twin survives the store's JSON");
        let _ = twin.to_device_json();
    }
}

/// The bytes as a configuration: an optional first line is the id in the
/// path (else `cfg1`), the rest the JSON body of `PUT
/// /configurations/{id}`. `checks` are the query language's (the target
/// passes `ferrohub_query`'s parsers, as the hub does).
///
/// An accepted configuration survives the store's JSON round trip, its
/// content parses, the same request as an update changes nothing, and
/// applying it to a sample twin either fails cleanly or stores a twin that
/// survives the round trip too.
pub fn fuzz_configuration(data: &[u8], checks: &QueryChecks<'_>) {
    let text = String::from_utf8_lossy(data);
    let (id, body) = match text.split_once('\n') {
        Some((id, body)) if !id.trim_start().starts_with(['{', '[']) => (id, body),
        _ => ("cfg1", &*text),
    };
    let Ok(body) = serde_json::from_str::<Value>(body) else { return };
    if let Ok(req) = serde_json::from_value::<TestQueriesRequest>(body.clone()) {
        let _ = test_queries(&req, checks);
    }
    let Ok(req) = ConfigurationRequest::from_json(&body) else { return };
    let Ok(config) = Configuration::create(id, req.clone(), at(1_700_000_000), "e1".into(), checks) else {
        return;
    };
    let stored = serde_json::to_vec(&config).ok();
    let loaded = stored.and_then(|s| serde_json::from_slice::<Configuration>(&s).ok());
    assert_eq!(loaded.as_ref(), Some(&config), "a configuration survives the store's JSON");
    let same = config.updated(req, at(1_700_000_500), "e2".into(), checks);
    assert_eq!(same.as_ref().ok(), Some(&config), "repeating the create as an update changes nothing");
    let content = config.device_content();
    let Ok(content) = content else { panic!("a created configuration's content parses") };
    let mut twin = sample_twin();
    let before = twin.clone();
    match apply_configurations(&mut twin, &[config.targeting(&content)], at(1_700_000_900)) {
        Ok(_) => {
            let stored = serde_json::to_vec(&twin).ok();
            let loaded = stored.and_then(|s| serde_json::from_slice::<TwinState>(&s).ok());
            assert_eq!(loaded.as_ref(), Some(&twin), "a configured twin survives the store's JSON");
        }
        Err(_) => assert_eq!(twin, before, "a refused evaluation changes nothing"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_assorted_inputs() {
        let accept = |_: &str| Ok(());
        let checks = QueryChecks { target_condition: &accept, metric_query: &accept };
        for data in [
            &b""[..],
            b"SharedAccessSignature sr=hub.example.net%2Fdevices%2Fdev1&sig=AAAA&se=1",
            b"sr=%2F&sig=&se=1&skn=a",
            b"HostName=h;DeviceId=d;SharedAccessKey=MDEy",
            b"HostName=h;SharedAccessKeyName=p;SharedAccessKey= a=b ",
            br#"{"tags":{"a":null},"properties":{"desired":{"x":{"y":null}}}}"#,
            br#"{"fw":"2.0","battery":null}"#,
            br#"{"content":{"deviceContent":{"properties.desired.fw":"2"}},"targetCondition":"*"}"#,
            b"Bad.Id\n{}",
        ] {
            fuzz_credentials(data);
            fuzz_twin(data);
            fuzz_configuration(data, &checks);
        }
    }
}
