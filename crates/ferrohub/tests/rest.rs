//! The service API over real HTTPS against a real `ferrohub serve`: the
//! bad-input table (issue item 6), each answered with Azure's error, with
//! the server still serving and nothing stored touched.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::TestHub;
use ferrohub_core::connection_string::ConnectionString;
use ferrohub_core::sas::generate_token;
use reqwest::{Client, Method, StatusCode};

struct Raw {
    http: Client,
    base: String,
    cs: ConnectionString,
}

impl Raw {
    fn new(hub: &TestHub) -> Self {
        let ca = std::fs::read(hub.ca_file()).unwrap();
        let http = Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let cs: ConnectionString = hub.connection_string().parse().unwrap();
        Self { http, base: format!("https://localhost:{}", hub.https_port()), cs }
    }

    fn token_expiring(&self, se: i64) -> String {
        generate_token(
            &self.cs.host_name,
            self.cs.shared_access_key.as_deref().unwrap(),
            self.cs.shared_access_key_name.as_deref(),
            se,
        )
        .unwrap()
    }

    fn token(&self) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        self.token_expiring(now + 3600)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Option<String>,
        headers: &[(&str, &str)],
        body: Option<reqwest::Body>,
    ) -> (StatusCode, Option<String>, String) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let code = res.headers().get("iothub-errorcode").map(|v| v.to_str().unwrap().to_owned());
        (status, code, res.text().await.unwrap())
    }
}

#[tokio::test]
async fn bad_inputs_over_https_get_azure_errors_and_the_hub_keeps_serving() {
    let hub = TestHub::start();
    let raw = Raw::new(&hub);
    let t = || Some(raw.token());
    let (s, _, created) =
        raw.send(Method::PUT, "/devices/keep?api-version=2021-04-12", t(), &[], Some("{}".into())).await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, twin_before) = raw.send(Method::GET, "/twins/keep", t(), &[], None).await;

    let huge = format!("{{\"tags\":{{\"a\":\"{}\"}}}}", "x".repeat(400_000));
    // A body streamed without Content-Length must be cut off too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..100).map(|_| Ok(vec![b' '; 10_000])).collect();
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let cases: Vec<(Method, &str, Option<String>, Vec<(&str, &str)>, Option<reqwest::Body>, u16, &str)> = vec![
        (Method::PATCH, "/twins/keep", t(), vec![], Some("{oops".into()), 400, "IotHubFormatError"),
        (
            Method::PUT,
            "/devices/keep",
            t(),
            vec![("if-match", "*")],
            Some("{\"status\":7}".into()),
            400,
            "IotHubFormatError",
        ),
        (Method::PATCH, "/twins/keep", t(), vec![], Some(huge.into()), 413, "MessageTooLarge"),
        (Method::PATCH, "/twins/keep", t(), vec![], Some(streamed), 413, "MessageTooLarge"),
        (Method::PUT, "/devices/has%20space", t(), vec![], Some("{}".into()), 400, "ArgumentInvalid"),
        (
            Method::PATCH,
            "/twins/keep",
            t(),
            vec![("if-match", "\"x")],
            Some("{\"tags\":{\"a\":1}}".into()),
            400,
            "ArgumentInvalid",
        ),
        (
            Method::PATCH,
            "/twins/keep",
            t(),
            vec![("if-match", "\"stale\"")],
            Some("{\"tags\":{\"a\":1}}".into()),
            412,
            "PreconditionFailed",
        ),
        (Method::GET, "/devices/nobody", t(), vec![], None, 404, "DeviceNotFound"),
        (Method::GET, "/nowhere", t(), vec![], None, 404, "IotHubNotFound"),
        (Method::GET, "/devices/keep", None, vec![], None, 401, "IotHubUnauthorizedAccess"),
        (
            Method::GET,
            "/devices/keep",
            Some(raw.token_expiring(1_000_000_000)),
            vec![],
            None,
            401,
            "IotHubUnauthorizedAccess",
        ),
        (
            Method::GET,
            "/devices/keep",
            Some(raw.token().replace("sig=", "sig=Zm9v")),
            vec![],
            None,
            401,
            "IotHubUnauthorizedAccess",
        ),
    ];
    for (method, path, auth, headers, body, status, code) in cases {
        let what = format!("{method} {path}");
        let (s, c, text) = raw.send(method, path, auth, &headers, body).await;
        assert_eq!(s.as_u16(), status, "{what}: {text}");
        assert_eq!(c.as_deref(), Some(code), "{what}");
        assert!(text.contains(&format!("ErrorCode:{code};")), "{what}: {text}");
    }

    // Not TLS at all: the connection is dropped, the hub carries on.
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", hub.https_port())).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sock.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    let _ = sock.read(&mut buf);

    let (s, _, device_after) = raw.send(Method::GET, "/devices/keep", t(), &[], None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(device_after, created);
    let (_, _, twin_after) = raw.send(Method::GET, "/twins/keep", t(), &[], None).await;
    assert_eq!(twin_after, twin_before);
}
