//! Crash consistency: a real `kartei serve` child process is killed with SIGKILL in the middle of a stream
//! of concurrent PUTs; after a restart every write it answered 2xx to is there, byte for byte, and the
//! database passes `PRAGMA integrity_check` (via `kartei check`).

use crate::support::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kartei");

fn kartei(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("--config").arg(config).args(args).output().expect("kartei runs")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

async fn start_server(config: &Path, base: &str) -> Child {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if client.get(format!("{base}/.well-known/carddav")).send().await.is_ok() {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server did not come up at {base}");
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("kartei.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[tls]\nmode = \"off\"\n[storage]\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    let out = kartei(&config, &["user", "add", "--username", "crash", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let account: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let password = account["password"].as_str().expect("password").to_string();

    let acknowledged: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let mut total_killed = 0;
    for round in 0..3 {
        let mut server = start_server(&config, &base).await;
        let client = reqwest::Client::new();
        let mut writers = Vec::new();
        for w in 0..4 {
            let (client, acked, password, base) =
                (client.clone(), acknowledged.clone(), password.clone(), base.clone());
            writers.push(tokio::spawn(async move {
                for i in 0..10_000 {
                    let name = format!("r{round}-w{w}-{i}.vcf");
                    let body = vcard(&format!("uid-{round}-{w}-{i}"), &format!("Person {round} {w} {i}"), "");
                    let sent = client
                        .put(format!("{base}/dav/addressbooks/crash/contacts/{name}"))
                        .basic_auth("crash", Some(&password))
                        .body(body.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            acked.lock().expect("lock").insert(name, body);
                        }
                        _ => break,
                    }
                }
            }));
        }
        // Kill at a different point in each round.
        tokio::time::sleep(Duration::from_millis(300 + 250 * round)).await;
        server.kill().expect("SIGKILL");
        let _ = server.wait();
        total_killed += 1;
        for w in writers {
            let _ = w.await;
        }
    }
    assert_eq!(total_killed, 3);

    let check = kartei(&config, &["check"]);
    assert!(
        check.status.success(),
        "kartei check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let mut server = start_server(&config, &base).await;
    let dav =
        Dav { http: reqwest::Client::new(), base: base.clone(), user: "crash".into(), password, user_agent: None };
    let acked = acknowledged.lock().expect("lock").clone();
    assert!(acked.len() > 50, "the writers got going ({} acknowledged)", acked.len());
    let listing = dav.sync(&dav.book(), "", "<d:getetag/>", None).await.multistatus();
    let stored: std::collections::HashSet<String> =
        listing.responses.iter().map(|r| r.href.rsplit('/').next().unwrap_or_default().to_string()).collect();
    for name in acked.keys() {
        assert!(stored.contains(name), "acknowledged card {name} is missing after the crash");
    }
    // Spot-check contents byte for byte (every 25th, to keep the test short).
    for (name, body) in acked.iter().step_by(25) {
        assert_eq!(dav.get(&format!("{}{name}", dav.book())).await.body, body.as_bytes(), "{name}");
        // The card and its origin are written in one transaction: an acknowledged card always has one.
        let uid = name.trim_start_matches('r').trim_end_matches(".vcf").replace('w', "");
        let history = dav
            .http
            .get(format!("{base}/api/v1/books/contacts/contacts/uid-{uid}/history"))
            .basic_auth("crash", Some(&dav.password))
            .send()
            .await
            .expect("history");
        let history: serde_json::Value =
            serde_json::from_slice(&history.bytes().await.expect("history body")).expect("history json");
        assert_eq!(history["origin"]["created_by"], "crash", "origin of {name}: {history}");
    }
    // The change log still gives correct deltas after the restarts.
    let token = listing.sync_token.expect("token");
    dav.put_card("after-crash.vcf", "after", "After", "").await;
    let delta = dav.sync(&dav.book(), &token, "<d:getetag/>", None).await.multistatus();
    assert_eq!(delta.hrefs(), ["/dav/addressbooks/crash/contacts/after-crash.vcf"]);
    server.kill().expect("stop");
    let _ = server.wait();
}
