//! `ferrohub serve` as a process: first start, files and modes, hub.json,
//! clean shutdown, operator certificates, port errors and the unprivileged
//! 443 → 8443 fallback.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_ferrohub");

/// A `serve` child and the lines it printed up to `ready`.
struct Serve {
    child: Child,
    stdout: Vec<String>,
}

fn clean_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("FERROHUB_") || k == "IOTHUB_CONNECTION_STRING" {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Starts `bin serve args...` and waits for the ready line (or exit).
fn serve(bin: &Path, args: &[&str], wrap: Option<&[&str]>) -> Result<Serve, String> {
    let mut cmd = match wrap {
        Some(w) => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    clean_env(&mut cmd).arg("serve").args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let ready = line.starts_with("ready ");
        stdout.push(line);
        if ready {
            // The connection string follows the ready line.
            stdout.push(lines.next().unwrap().unwrap());
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(Serve { child, stdout });
        }
    }
    let out = child.wait_with_output().unwrap();
    Err(String::from_utf8_lossy(&out.stderr).into_owned())
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    // `unsafe` (libc::kill) is forbidden in this workspace; kill(1) will do.
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    child.wait().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_start_creates_everything_and_a_clean_exit_removes_hub_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let d = dir.to_str().unwrap();
    let mut s = serve(
        Path::new(BIN),
        &["--data-dir", d, "--https-port", "0", "--mqtt-port", "0", "--hostname", "hub.example"],
        None,
    )
    .unwrap();
    let ready = &s.stdout[s.stdout.len() - 2];
    let cs = &s.stdout[s.stdout.len() - 1];
    assert!(cs.starts_with("HostName=hub.example;SharedAccessKeyName=iothubowner;SharedAccessKey="), "{cs}");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("policies.json")), 0o600);
    assert_eq!(mode(&dir.join("hub.db")), 0o600);
    let policies: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("policies.json")).unwrap()).unwrap();
    let names: Vec<_> =
        policies.as_array().unwrap().iter().map(|p| p["keyName"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["iothubowner", "service", "device", "registryRead", "registryReadWrite"]);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("hub.json")).unwrap()).unwrap();
    assert_eq!(info["pid"], s.child.id());
    assert_eq!(info["hostNames"], serde_json::json!(["hub.example"]));
    assert_eq!(ready, &format!("ready https={} mqtt={}", info["httpsPort"], info["mqttPort"]));
    let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    assert!(std::fs::read_to_string(dir.join("ca-bundle.pem")).unwrap().contains(&ca));
    assert!(sigterm(&mut s.child).success());
    assert!(!dir.join("hub.json").exists());
    assert!(dir.join("hub.db").exists());

    // A second start keeps the keys and the CA.
    let mut again = serve(
        Path::new(BIN),
        &["--data-dir", d, "--https-port", "0", "--mqtt-port", "0", "--hostname", "hub.example"],
        None,
    )
    .unwrap();
    assert_eq!(again.stdout.last(), Some(cs));
    assert_eq!(std::fs::read_to_string(dir.join("ca.pem")).unwrap(), ca);
    assert!(sigterm(&mut again.child).success());
}

#[test]
fn an_explicit_port_that_cannot_be_bound_is_an_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let root = tempfile::tempdir().unwrap();
    // The hub makes its data dir owner-only (a temporary dir may not be).
    let tmp = root.path().join("data");
    let err = serve(
        Path::new(BIN),
        &["--data-dir", tmp.to_str().unwrap(), "--https-port", &port, "--mqtt-port", "0"],
        None,
    )
    .err()
    .expect("serve must fail");
    assert!(err.contains(&port), "{err}");
    assert!(!tmp.join("hub.json").exists());
}

#[test]
fn operator_certificates_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    // Make an operator certificate with a CA of our own (rcgen via the hub's
    // own generator would be circular; openssl is on every Debian).
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_owned();
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
        ])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-keyout", &p("op-key.pem"), "-out", &p("op.pem")])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let dir = p("data");
    let mut s = serve(
        Path::new(BIN),
        &[
            "--data-dir",
            &dir,
            "--https-port",
            "0",
            "--mqtt-port",
            "0",
            "--tls-cert",
            &p("op.pem"),
            "--tls-key",
            &p("op-key.pem"),
        ],
        None,
    )
    .unwrap();
    // ca.pem is the last certificate of the operator's chain (here the
    // self-signed leaf itself), and it verifies the served certificate.
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("data/ca.pem")).unwrap(),
        std::fs::read_to_string(p("op.pem")).unwrap()
    );
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("data/hub.json")).unwrap()).unwrap();
    let port = info["httpsPort"].to_string();
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-CAfile",
            &p("op.pem"),
            "-verify_return_error",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("CN=localhost") || text.contains("CN = localhost"), "{text}");
    assert!(sigterm(&mut s.child).success());
}

/// Without privilege, a `serve` with no `--https-port` falls back to 8443
/// and says why in one line. As root (CI), the test drops to `nobody` to get
/// a process that lacks the privilege.
#[test]
fn without_privilege_https_falls_back_to_8443() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let bin = tmp.path().join("ferrohub");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("data");
    let is_root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let wrap: Option<&[&str]> = if is_root {
        Some(&["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
    } else {
        None
    };
    let cmd_args = ["--data-dir", dir.to_str().unwrap(), "--mqtt-port", "0"];
    // stderr is needed for the warning: run it by hand rather than via serve().
    let mut cmd = match wrap {
        Some(w) => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    clean_env(&mut cmd)
        .arg("serve")
        .args(cmd_args)
        .env("HOME", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let ready = stdout.lines().map(|l| l.unwrap()).find(|l| l.starts_with("ready ")).expect("no ready line");
    assert!(ready.starts_with("ready https=8443 "), "{ready}");
    sigterm(&mut child);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let warning: Vec<_> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warning.len(), 1, "{err}");
    assert!(warning[0].contains("setcap cap_net_bind_service=+ep"), "{}", warning[0]);
    assert!(warning[0].contains("8443") && warning[0].contains("azure-iothub"), "{}", warning[0]);
}
