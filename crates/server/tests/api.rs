//! The service API in-process (router + `oneshot`, no sockets): every route,
//! its status codes, Azure's error shape, and that refused requests change
//! nothing.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use ferrohub_core::sas::{builtin_policies, generate_token, SharedAccessPolicy};
use ferrohub_server::api::router;
use ferrohub_server::hub::{Hub, HubConfig};
use ferrohub_store::SqliteStore;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Api {
    app: Router,
    policies: Vec<SharedAccessPolicy>,
    _dir: tempfile::TempDir,
}

struct Reply {
    status: StatusCode,
    error_code: Option<String>,
    content_type: Option<String>,
    body: Value,
}

fn key(n: u8) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([n; 32])
}

impl Api {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("hub.db")).unwrap();
        let mut n = 0;
        let policies = builtin_policies(&mut || {
            n += 1;
            key(n)
        });
        let hub = Hub::open(HubConfig {
            data_dir: dir.path().to_owned(),
            store: Arc::new(store),
            policies: policies.clone(),
            host_names: vec!["localhost".into()],
            full_pass: std::time::Duration::from_secs(3600),
            firmware_base_uri: "https://localhost".into(),
            rollout_step: std::time::Duration::from_secs(3600),
            firmware_limits: Default::default(),
            quotas: Default::default(),
            daily_quota: None,
        })
        .await
        .unwrap();
        Self { app: router(hub), policies, _dir: dir }
    }

    fn token(&self, policy: &str) -> String {
        let p = self.policies.iter().find(|p| p.key_name == policy).unwrap();
        generate_token("localhost", &p.primary_key, Some(policy), 4_000_000_000).unwrap()
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let header = |n: &str| res.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
        let error_code = header("iothub-errorcode");
        let content_type = header("content-type");
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        Reply { status, error_code, content_type, body }
    }

    async fn call(&self, method: &str, path: &str, if_match: Option<&str>, body: Option<Value>) -> Reply {
        self.call_as("iothubowner", method, path, if_match, body).await
    }

    async fn call_as(
        &self,
        policy: &str,
        method: &str,
        path: &str,
        if_match: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{path}?api-version=2021-04-12"))
            .header("authorization", self.token(policy))
            .header("content-type", "application/json; charset=utf-8");
        if let Some(m) = if_match {
            b = b.header("if-match", m);
        }
        let body = body.map(|v| Body::from(v.to_string())).unwrap_or_else(Body::empty);
        self.send(b.body(body).unwrap()).await
    }
}

fn assert_azure_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{:?}", r.body);
    assert_eq!(r.error_code.as_deref(), Some(code));
    let msg = r.body["Message"].as_str().unwrap();
    assert!(msg.starts_with(&format!("ErrorCode:{code};")), "{msg}");
    assert!(r.body["ExceptionMessage"].as_str().unwrap().starts_with("Tracking ID:"));
    assert_eq!(r.content_type.as_deref(), Some("application/json; charset=utf-8"));
}

#[tokio::test]
async fn device_lifecycle_matches_azure() {
    let api = Api::new().await;
    let created = api.call("PUT", "/devices/dev1", None, Some(json!({"deviceId":"dev1"}))).await;
    assert_eq!(created.status, StatusCode::OK);
    assert_eq!(created.content_type.as_deref(), Some("application/json; charset=utf-8"));
    let d = &created.body;
    assert_eq!(d["deviceId"], "dev1");
    assert_eq!(d["status"], "enabled");
    assert_eq!(d["connectionState"], "Disconnected");
    assert_eq!(d["authentication"]["type"], "sas");
    assert_eq!(d["authentication"]["symmetricKey"]["primaryKey"].as_str().unwrap().len(), 44);
    let etag = d["etag"].as_str().unwrap().to_owned();

    let again = api.call("PUT", "/devices/dev1", None, Some(json!({}))).await;
    assert_azure_error(&again, 409, "DeviceAlreadyExists");

    let got = api.call("GET", "/devices/dev1", None, None).await;
    assert_eq!(got.body, created.body);

    let stale =
        api.call("PUT", "/devices/dev1", Some("\"bm9wZQ==\""), Some(json!({"status":"disabled"}))).await;
    assert_azure_error(&stale, 412, "PreconditionFailed");
    let updated = api
        .call(
            "PUT",
            "/devices/dev1",
            Some(&format!("\"{etag}\"")),
            Some(json!({"deviceId":"dev1","status":"disabled"})),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(updated.body["status"], "disabled");
    assert_ne!(updated.body["etag"], created.body["etag"]);
    assert_eq!(updated.body["authentication"], created.body["authentication"]);

    let stats = api.call("GET", "/statistics/devices", None, None).await;
    assert_eq!(stats.body, json!({"totalDeviceCount":1,"enabledDeviceCount":0,"disabledDeviceCount":1}));

    let listed = api.call("GET", "/devices", None, None).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1);

    let del_stale = api.call("DELETE", "/devices/dev1", Some(&format!("\"{etag}\"")), None).await;
    assert_azure_error(&del_stale, 412, "PreconditionFailed");
    let del = api.call("DELETE", "/devices/dev1", Some("\"*\""), None).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let gone = api.call("GET", "/devices/dev1", None, None).await;
    assert_azure_error(&gone, 404, "DeviceNotFound");
    let gone_twin = api.call("GET", "/twins/dev1", None, None).await;
    assert_azure_error(&gone_twin, 404, "DeviceNotFound");
}

#[tokio::test]
async fn list_honours_top_and_ids_are_percent_decoded() {
    let api = Api::new().await;
    for id in ["a", "b", "c:d$1"] {
        let path = format!("/devices/{}", id.replace(':', "%3A").replace('$', "%24"));
        assert_eq!(api.call("PUT", &path, None, Some(json!({}))).await.status, StatusCode::OK);
    }
    let got = api.call("GET", "/devices/c%3Ad%241", None, None).await;
    assert_eq!(got.body["deviceId"], "c:d$1");
    let slash = api.call("GET", "/devices/", None, None).await;
    assert_eq!(slash.body.as_array().unwrap().len(), 3, "the Node SDK lists at /devices/");
    let all = api
        .send(
            Request::get("/devices?top=2&api-version=2021-04-12")
                .header("authorization", api.token("registryRead"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(all.body.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn twin_patch_and_replace_with_etags() {
    let api = Api::new().await;
    api.call("PUT", "/devices/t1", None, Some(json!({}))).await;
    let twin = api.call("GET", "/twins/t1", None, None).await.body;
    assert_eq!(twin["deviceId"], "t1");
    assert_eq!(twin["properties"]["desired"]["$version"], 1);
    let etag = twin["etag"].as_str().unwrap().to_owned();

    let patch = json!({"tags":{"devicetype":"chiller"},"properties":{"desired":{"fw":{"v":"1.0"}}}});
    let patched = api.call("PATCH", "/twins/t1", Some(&format!("\"{etag}\"")), Some(patch.clone())).await;
    assert_eq!(patched.status, StatusCode::OK);
    assert_eq!(patched.body["tags"]["devicetype"], "chiller");
    assert_eq!(patched.body["properties"]["desired"]["fw"]["v"], "1.0");
    assert_eq!(patched.body["properties"]["desired"]["$version"], 2);

    // The old etag is stale now; nothing changes.
    let stale =
        api.call("PATCH", "/twins/t1", Some(&format!("\"{etag}\"")), Some(json!({"tags":{"x":1}}))).await;
    assert_azure_error(&stale, 412, "PreconditionFailed");
    let same = api.call("GET", "/twins/t1", None, None).await.body;
    assert_eq!(same, patched.body);

    // Service writes to reported properties are refused.
    let reported =
        api.call("PATCH", "/twins/t1", None, Some(json!({"properties":{"reported":{"a":1}}}))).await;
    assert_azure_error(&reported, 400, "ArgumentInvalid");

    let replaced = api
        .call(
            "PUT",
            "/twins/t1",
            Some("*"),
            Some(json!({"tags":{"k":"v"},"properties":{"desired":{"mode":"eco"}}})),
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK);
    assert_eq!(replaced.body["tags"], json!({"k":"v"}));
    assert!(replaced.body["properties"]["desired"].get("fw").is_none());
    assert_eq!(replaced.body["properties"]["desired"]["mode"], "eco");
}

#[tokio::test]
async fn bulk_reports_each_failure_and_validates_the_batch_first() {
    let api = Api::new().await;
    api.call("PUT", "/devices/exists", None, Some(json!({}))).await;
    let r = api
        .call(
            "POST",
            "/devices",
            None,
            Some(json!([
                {"id":"new1","importMode":"create","tags":{"devicetype":"chiller"}},
                {"id":"exists","importMode":"Create"},
                {"id":"exists2","importMode":"delete"}
            ])),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["isSuccessful"], false);
    let errors = r.body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["deviceId"], "exists");
    assert_eq!(errors[0]["errorCode"], "DeviceAlreadyExists");
    assert_eq!(errors[1]["errorCode"], "DeviceNotFound");
    let twin = api.call("GET", "/twins/new1", None, None).await.body;
    assert_eq!(twin["tags"]["devicetype"], "chiller");

    let ok = api.call("POST", "/devices", None, Some(json!([{"id":"new1","importMode":"delete"}]))).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body["isSuccessful"], true);

    let dup = api
        .call(
            "POST",
            "/devices",
            None,
            Some(json!([{"id":"z","importMode":"create"},{"id":"z","importMode":"create"}])),
        )
        .await;
    assert_azure_error(&dup, 400, "DeviceDefinedMultipleTimes");
    let too_many: Vec<Value> =
        (0..101).map(|i| json!({"id": format!("d{i}"), "importMode":"create"})).collect();
    let big = api.call("POST", "/devices", None, Some(Value::Array(too_many))).await;
    assert_azure_error(&big, 413, "TooManyDevices");
    assert_azure_error(&api.call("GET", "/devices/z", None, None).await, 404, "DeviceNotFound");
}

#[tokio::test]
async fn permissions_are_enforced_per_operation() {
    let api = Api::new().await;
    let w = api.call_as("registryRead", "PUT", "/devices/p", None, Some(json!({}))).await;
    assert_azure_error(&w, 401, "IotHubUnauthorized");
    assert_eq!(
        api.call_as("registryReadWrite", "PUT", "/devices/p", None, Some(json!({}))).await.status,
        StatusCode::OK
    );
    assert_eq!(api.call_as("registryRead", "GET", "/devices/p", None, None).await.status, StatusCode::OK);
    assert_azure_error(
        &api.call_as("registryRead", "GET", "/twins/p", None, None).await,
        401,
        "IotHubUnauthorized",
    );
    assert_eq!(api.call_as("service", "GET", "/twins/p", None, None).await.status, StatusCode::OK);
    assert_azure_error(
        &api.call_as("device", "GET", "/devices/p", None, None).await,
        401,
        "IotHubUnauthorized",
    );
    assert_azure_error(
        &api.call_as("service", "DELETE", "/devices/p", None, None).await,
        401,
        "IotHubUnauthorized",
    );
    assert_eq!(api.call("GET", "/devices/p", None, None).await.status, StatusCode::OK);
}

/// Item 6 of the issue: each bad input gets its own Azure error, and none of
/// them changes the stored device.
#[tokio::test]
async fn bad_inputs_get_azure_errors_and_change_nothing() {
    let api = Api::new().await;
    api.call("PUT", "/devices/keep", None, Some(json!({}))).await;
    let before_dev = api.call("GET", "/devices/keep", None, None).await.body;
    let before_twin = api.call("GET", "/twins/keep", None, None).await.body;
    let raw = |method: &str, path: &str, body: &str, extra: Option<(&str, &str)>| {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{path}?api-version=2021-04-12"))
            .header("authorization", api.token("iothubowner"))
            .header("content-type", "application/json");
        if let Some((k, v)) = extra {
            b = b.header(k, v);
        }
        b.body(Body::from(body.to_owned())).unwrap()
    };
    let cases: Vec<(Request<Body>, u16, &str)> = vec![
        (raw("PATCH", "/twins/keep", "{not json", None), 400, "IotHubFormatError"),
        (raw("PATCH", "/twins/keep", "{\"tags\":{}} trailing", None), 400, "IotHubFormatError"),
        (
            raw("PUT", "/devices/keep", "{\"status\":\"sideways\"}", Some(("if-match", "*"))),
            400,
            "IotHubFormatError",
        ),
        (raw("PUT", "/devices/keep", "{\"status\":3}", Some(("if-match", "*"))), 400, "IotHubFormatError"),
        (raw("PATCH", "/twins/keep", "[1,2]", None), 400, "IotHubFormatError"),
        (raw("PATCH", "/twins/keep", "", None), 400, "ArgumentNull"),
        (
            raw("PATCH", "/twins/keep", &format!("{{\"tags\":{{\"a\":\"{}\"}}}}", "x".repeat(300_000)), None),
            413,
            "MessageTooLarge",
        ),
        (raw("PATCH", "/twins/keep", "{\"tags\":{\"a.b\":1}}", None), 400, "ArgumentInvalid"),
        (
            raw("PATCH", "/twins/keep", "{\"tags\":{\"a\":1}}", Some(("if-match", "\"unbalanced"))),
            400,
            "ArgumentInvalid",
        ),
        (raw("PUT", "/devices/bad%20id", "{}", None), 400, "ArgumentInvalid"),
        (raw("PUT", &format!("/devices/{}", "x".repeat(129)), "{}", None), 400, "ArgumentInvalid"),
        (
            raw("PUT", "/devices/keep", "{\"deviceId\":\"other\"}", Some(("if-match", "*"))),
            400,
            "ArgumentInvalid",
        ),
        (raw("GET", "/devices/unknown", "", None), 404, "DeviceNotFound"),
        (raw("PATCH", "/twins/unknown", "{\"tags\":{}}", None), 404, "DeviceNotFound"),
        (raw("GET", "/no/such/route", "", None), 404, "IotHubNotFound"),
        (raw("POST", "/twins/keep", "{}", None), 400, "InvalidOperation"),
    ];
    for (req, status, code) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let r = api.send(req).await;
        assert_eq!(r.status.as_u16(), status, "{what}: {:?}", r.body);
        assert_azure_error(&r, status, code);
    }
    // Unauthenticated and forged requests.
    let forged = api.token("iothubowner").replacen("sig=", "sig=AA", 1);
    for auth in [None, Some("SharedAccessSignature sr=localhost"), Some(forged.as_str())] {
        let mut b = Request::get("/devices/keep");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        assert_azure_error(&api.send(b.body(Body::empty()).unwrap()).await, 401, "IotHubUnauthorizedAccess");
    }
    assert_eq!(api.call("GET", "/devices/keep", None, None).await.body, before_dev);
    assert_eq!(api.call("GET", "/twins/keep", None, None).await.body, before_twin);
}

/// A body that records being polled and then never ends: a handler that
/// reads it before answering would hang (the test's timeout) and set the
/// flag; one that authenticates first answers without touching it.
fn untouchable_body(polled: Arc<std::sync::atomic::AtomicBool>) -> Body {
    let stream = futures_util::stream::poll_fn(move |_| {
        polled.store(true, std::sync::atomic::Ordering::SeqCst);
        std::task::Poll::<Option<Result<bytes::Bytes, std::io::Error>>>::Pending
    });
    Body::from_stream(stream)
}

async fn send_untouched(api: &Api, req: axum::http::request::Builder) -> Reply {
    let polled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let req = req.body(untouchable_body(polled.clone())).unwrap();
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), api.send(req))
        .await
        .expect("the handler waited for a body it should never have read");
    assert!(!polled.load(std::sync::atomic::Ordering::SeqCst), "the body was polled before the answer");
    r
}

#[tokio::test]
async fn callers_are_authenticated_before_any_body_byte_is_read() {
    let api = Api::new().await;
    // Anonymous, with bad JSON: 401, not the parser's 400.
    let bad_json = Request::put("/devices/x?api-version=2021-04-12")
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    assert_azure_error(&api.send(bad_json).await, 401, "IotHubUnauthorizedAccess");
    // Anonymous, oversized (declared far beyond the cap) and on every
    // route that takes a body: 401 without the body being polled.
    let posts = [
        ("PUT", "/devices/x"),
        ("POST", "/devices"),
        ("POST", "/devices/query"),
        ("PATCH", "/twins/x"),
        ("PUT", "/twins/x"),
        ("POST", "/twins/x/methods"),
        ("PUT", "/configurations/c"),
        ("POST", "/configurations/testQueries"),
        ("POST", "/devices/x/messages/deviceBound"),
        ("POST", "/devices/x/messages/events"),
        ("POST", "/firmware-images?version=1"),
        ("POST", "/firmware-rollouts"),
    ];
    for (method, path) in posts {
        let sep = if path.contains('?') { '&' } else { '?' };
        let req = Request::builder()
            .method(method)
            .uri(format!("{path}{sep}api-version=2021-04-12"))
            .header("content-type", "application/json")
            .header("content-length", "10000000");
        let r = send_untouched(&api, req).await;
        assert_azure_error(&r, 401, "IotHubUnauthorizedAccess");
    }
    // A valid token without the route's permission: its 401
    // IotHubUnauthorized, also before the body.
    for (policy, method, path) in [
        ("registryRead", "PUT", "/devices/x"),
        ("registryRead", "POST", "/devices"),
        ("registryReadWrite", "PATCH", "/twins/x"),
        ("registryRead", "POST", "/twins/x/methods"),
        ("device", "PUT", "/configurations/c"),
        ("registryRead", "POST", "/firmware-rollouts"),
        ("service", "POST", "/devices/x/messages/events"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(format!("{path}?api-version=2021-04-12"))
            .header("authorization", api.token(policy))
            .header("content-length", "100");
        let r = send_untouched(&api, req).await;
        let code = if path.ends_with("/events") { "IotHubUnauthorizedAccess" } else { "IotHubUnauthorized" };
        assert_azure_error(&r, 401, code);
    }
    // Nothing was created by any of it.
    let r = api.call("GET", "/devices/x", None, None).await;
    assert_azure_error(&r, 404, "DeviceNotFound");
}

#[tokio::test]
async fn a_malformed_escape_in_any_path_segment_is_refused_and_creates_nothing() {
    let api = Api::new().await;
    for (method, path, body) in [
        ("PUT", "/devices/a%ZZ", Some(json!({}))),
        ("PUT", "/devices/a%2", Some(json!({}))),
        ("PUT", "/devices/a%2Fb", Some(json!({}))),
        ("GET", "/twins/a%ZZ", None),
        ("PUT", "/configurations/c%G1", Some(json!({}))),
        ("DELETE", "/messages/serviceBound/feedback/t%ZZ", None),
        ("GET", "/firmware-rollouts/r%ZZ", None),
    ] {
        let r = api.call(method, path, None, body).await;
        assert_azure_error(&r, 400, "ArgumentInvalid");
    }
    let listed = api.call("GET", "/devices", None, None).await;
    assert_eq!(listed.body, json!([]), "nothing was created");
    // A well-formed escape still decodes: `a%25ZZ` is the device `a%ZZ`.
    let r = api.call("PUT", "/devices/a%25ZZ", None, Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["deviceId"], "a%ZZ");
    // Anonymous callers learn nothing about the path: 401 first.
    let anon = Request::put("/devices/a%ZZ?api-version=2021-04-12").body(Body::from("{}")).unwrap();
    assert_azure_error(&api.send(anon).await, 401, "IotHubUnauthorizedAccess");
}

#[tokio::test]
async fn iot_hub_routes_need_a_known_api_version_and_ferrohub_routes_do_not() {
    let api = Api::new().await;
    let get = |uri: &str| {
        Request::get(uri).header("authorization", api.token("iothubowner")).body(Body::empty()).unwrap()
    };
    for uri in [
        "/devices",
        "/devices?top=1",
        "/devices?api-version=",
        "/devices?api-version=1",
        "/devices?api-version=2099-01-01",
        "/twins/x?api-version=2021-04-12x",
        "/statistics/devices",
        "/configurations",
    ] {
        let r = api.send(get(uri)).await;
        assert_azure_error(&r, 400, "InvalidProtocolVersion");
        assert_eq!(r.body["Message"], "ErrorCode:InvalidProtocolVersion;BadRequest", "{uri}");
    }
    for version in ["2021-04-12", "2020-09-30", "2019-10-01", "2016-11-14"] {
        let r = api.send(get(&format!("/devices?api-version={version}"))).await;
        assert_eq!(r.status, StatusCode::OK, "{version}: {:?}", r.body);
    }
    // ferrohub's own routes are not IoT Hub's and are not versioned by it.
    for uri in ["/firmware-images", "/firmware-rollouts"] {
        let r = api.send(get(uri)).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {:?}", r.body);
    }
    // The version is checked after the caller: anonymous is 401 either way.
    let r = api.send(Request::get("/devices").body(Body::empty()).unwrap()).await;
    assert_azure_error(&r, 401, "IotHubUnauthorizedAccess");
    // The device HTTPS routes are IoT Hub's too.
    let created = api.call("PUT", "/devices/dv", None, Some(json!({}))).await;
    let key = created.body["authentication"]["symmetricKey"]["primaryKey"].as_str().unwrap().to_owned();
    let device = generate_token("localhost/devices/dv", &key, None, 4_000_000_000).unwrap();
    let post = |uri: &str| {
        Request::post(uri).header("authorization", device.clone()).body(Body::from("hi")).unwrap()
    };
    let r = api.send(post("/devices/dv/messages/events")).await;
    assert_azure_error(&r, 400, "InvalidProtocolVersion");
    let r = api.send(post("/devices/dv/messages/events?api-version=2021-04-12")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
}

#[tokio::test]
async fn a_policy_token_scoped_to_a_device_reaches_only_that_device() {
    let api = Api::new().await;
    for id in ["d1", "d10", "d2"] {
        api.call("PUT", &format!("/devices/{id}"), None, Some(json!({}))).await;
    }
    let owner = api.policies.iter().find(|p| p.key_name == "iothubowner").unwrap();
    let scoped =
        generate_token("localhost/devices/d1", &owner.primary_key, Some("iothubowner"), 4_000_000_000)
            .unwrap();
    let call = |method: &str, path: &str, body: Option<Value>| {
        let b = Request::builder()
            .method(method)
            .uri(format!("{path}?api-version=2021-04-12"))
            .header("authorization", scoped.clone())
            .header("content-type", "application/json");
        b.body(body.map(|v| Body::from(v.to_string())).unwrap_or_else(Body::empty)).unwrap()
    };
    // What it covers: the device, its twin, its C2D queue.
    let r = api.send(call("GET", "/devices/d1", None)).await;
    assert_eq!((r.status, &r.body["deviceId"]), (StatusCode::OK, &json!("d1")));
    let r = api.send(call("GET", "/twins/d1", None)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = api.send(call("PATCH", "/twins/d1", Some(json!({"tags": {"scoped": true}})))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = api.send(call("POST", "/devices/d1/messages/deviceBound", Some(json!({"hi": 1})))).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    // Its methods: reached (the device is offline, which is the hub's
    // answer, not the authorizer's).
    let r = api.send(call("POST", "/twins/d1/methods", Some(json!({"methodName": "m"})))).await;
    assert_azure_error(&r, 404, "DeviceNotOnline");
    // What it does not: other devices (a longer id included), their twins,
    // and anything hub-wide.
    for (method, path, body) in [
        ("GET", "/devices/d2", None),
        ("GET", "/devices/d10", None),
        ("DELETE", "/devices/d2", None),
        ("GET", "/twins/d2", None),
        ("PATCH", "/twins/d10", Some(json!({"tags": {"scoped": true}}))),
        ("POST", "/twins/d2/methods", Some(json!({"methodName": "m"}))),
        ("POST", "/devices/d2/messages/deviceBound", Some(json!({}))),
        ("GET", "/devices", None),
        ("POST", "/devices/query", Some(json!({"query": "SELECT * FROM devices"}))),
        ("GET", "/configurations", None),
        ("GET", "/statistics/devices", None),
        ("GET", "/messages/serviceBound/feedback", None),
    ] {
        let r = api.send(call(method, path, body)).await;
        assert_azure_error(&r, 401, "IotHubUnauthorizedAccess");
    }
    let d2 = api.call("GET", "/twins/d10", None, None).await;
    assert_eq!(d2.body["tags"], json!({}), "the refused patch changed nothing");
    // The scope does not lift the policy's permissions: `registryRead`
    // scoped to d1 still cannot write it.
    let read = api.policies.iter().find(|p| p.key_name == "registryRead").unwrap();
    let scoped_read =
        generate_token("localhost/devices/d1", &read.primary_key, Some("registryRead"), 4_000_000_000)
            .unwrap();
    let r = api
        .send(
            Request::delete("/devices/d1?api-version=2021-04-12")
                .header("authorization", scoped_read)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_azure_error(&r, 401, "IotHubUnauthorized");
}
