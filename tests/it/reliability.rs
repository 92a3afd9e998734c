//! Reliability under faults and load (issue 6): racing conditional writes, a full disk, SIGTERM while a
//! request is in flight, online backup while writing, secrets kept out of logs, repeated kill -9 and a
//! soak with a model of the expected state. Most tests run `kartei serve` as a child process (like
//! crash.rs) so that they can signal it, read its memory and its log. Figures are printed to stderr
//! (`cargo test --test it reliability:: -- --nocapture`) and recorded in RELIABILITY.md.

use crate::support::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_kartei");

// ---------------------------------------------------------------------------------------------------
// A kartei installation in a temporary directory, and its server as a child process.

struct Site {
    dir: tempfile::TempDir,
    /// Self-signed HTTPS (the base URL is then `https://localhost:PORT`) instead of plain HTTP.
    tls: bool,
    config: PathBuf,
    data: PathBuf,
    port: u16,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Site {
    fn new() -> Site {
        Self::with_data_dir(|root| root.join("data"))
    }

    fn new_tls() -> Site {
        let mut site = Self::new();
        site.tls = true;
        site.base = format!("https://localhost:{}", site.port);
        write_config_tls(&site.config, site.port, &site.data, true);
        site
    }

    /// `data` picks the data directory inside the site's root (it may be a mount point).
    fn with_data_dir(data: impl FnOnce(&Path) -> PathBuf) -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = data(dir.path());
        let port = free_port();
        let config = dir.path().join("kartei.toml");
        write_config(&config, port, &data);
        Site { base: format!("http://127.0.0.1:{port}"), dir, tls: false, config, data, port }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn db(&self) -> PathBuf {
        self.data.join("kartei.sqlite3")
    }

    fn kartei(&self, args: &[&str]) -> Output {
        Command::new(BIN).arg("--config").arg(&self.config).args(args).output().expect("kartei runs")
    }

    /// `kartei check` must pass; returns its report.
    fn check(&self) -> String {
        kartei_check(&self.config)
    }

    fn add_user(&self, name: &str) -> String {
        let out = self.kartei(&["user", "add", "--username", name, "--json"]);
        assert!(out.status.success(), "user add: {}", String::from_utf8_lossy(&out.stderr));
        let account: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        account["password"].as_str().expect("password").to_string()
    }

    fn dav(&self, user: &str, password: &str) -> Dav {
        Dav {
            http: self.client(),
            base: self.base.clone(),
            user: user.into(),
            password: password.into(),
            user_agent: None,
        }
    }

    /// An HTTP client for this site; with TLS it trusts the server's self-signed certificate only (so call
    /// it after the first start, which makes the certificate).
    fn client(&self) -> reqwest::Client {
        if !self.tls {
            return reqwest::Client::new();
        }
        let pem = std::fs::read(self.data.join("tls/cert.pem")).expect("the generated certificate");
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("pem")])
            .build()
            .expect("client")
    }

    async fn start(&self, log_name: &str, rust_log: &str) -> Srv {
        self.start_wrapped(log_name, rust_log, None).await
    }

    /// Starts `kartei serve`, its stdout and stderr going to `ROOT/LOG_NAME.log`. With `file_limit_kb`, the
    /// server runs under `ulimit -f` (no file it writes may grow past that size) with SIGXFSZ ignored.
    async fn start_wrapped(&self, log_name: &str, rust_log: &str, file_limit_kb: Option<u64>) -> Srv {
        let log = self.root().join(format!("{log_name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let mut cmd = match file_limit_kb {
            None => Command::new(BIN),
            Some(kb) => {
                let mut c = Command::new("bash");
                c.arg("-c").arg(format!("ulimit -f {kb} && trap '' XFSZ && exec \"$0\" \"$@\"")).arg(BIN);
                c
            }
        };
        cmd.arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out);
        let child = cmd.spawn().expect("server starts");
        let mut srv = Srv { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = srv.child.try_wait() {
                panic!("server exited at start ({status}): {}", srv.log());
            }
            // The listener is bound once the store, the admin token and TLS are ready.
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return srv;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server did not come up at {}: {}", self.base, srv.log());
    }
}

fn write_config(path: &Path, port: u16, data: &Path) {
    write_config_tls(path, port, data, false)
}

fn write_config_tls(path: &Path, port: u16, data: &Path, tls: bool) {
    let mode = if tls { "self-signed" } else { "off" };
    std::fs::write(
        path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[tls]\nmode = \"{mode}\"\n[storage]\ndata_dir = \"{}\"\n",
            data.display()
        ),
    )
    .expect("config");
}

fn kartei_check(config: &Path) -> String {
    let out = Command::new(BIN).arg("--config").arg(config).arg("check").output().expect("kartei check runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kartei check failed: {text}");
    assert!(text.contains("ok: integrity_check passed"), "kartei check: {text}");
    text
}

/// A server child process; killed when dropped.
struct Srv {
    child: Child,
    log: PathBuf,
}

impl Srv {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Resident memory in KiB, from /proc.
    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    fn term(&self) {
        let ok = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status().expect("kill runs");
        assert!(ok.success(), "kill -TERM failed");
    }

    async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// SIGTERM, then the process must exit 0 within 20 s.
    async fn stop(mut self) -> Duration {
        let started = Instant::now();
        self.term();
        let status = self.wait_exit(Duration::from_secs(20)).await;
        assert!(status.is_some_and(|s| s.success()), "graceful stop: {status:?}\n{}", self.log());
        started.elapsed()
    }
}

impl Drop for Srv {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// xorshift64*: reproducible randomness without depending on a crate's API.
struct Rng(u64);

impl Rng {
    fn seeded(label: &str) -> Rng {
        let seed = std::env::var("KARTEI_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7)
        });
        eprintln!("{label}: seed {seed} (KARTEI_TEST_SEED={seed} repeats it)");
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn fork(&mut self) -> Rng {
        Rng(self.next() | 1)
    }
}

fn is_404(r: &Response) -> bool {
    r.status.as_deref().is_some_and(|s| s.contains(" 404 "))
}

fn last_segment(href: &str) -> String {
    href.rsplit('/').next().unwrap_or_default().to_string()
}

/// XML text has its line ends normalized; compare card bodies on that footing.
fn lf(s: &str) -> String {
    s.replace("\r\n", "\n")
}

/// A full listing of the default book: name -> (etag, address data), and the sync token.
async fn listing(dav: &Dav) -> (BTreeMap<String, (String, String)>, String) {
    let ms = dav.sync(&dav.book(), "", "<d:getetag/><card:address-data/>", None).await.multistatus();
    let cards = ms
        .responses
        .iter()
        .filter(|r| !is_404(r))
        .map(|r| {
            let etag = r.text(DAV, "getetag").expect("getetag");
            let data = r.text(CARD, "address-data").expect("address-data");
            (last_segment(&r.href), (etag, lf(&data)))
        })
        .collect();
    (cards, ms.sync_token.expect("sync token"))
}

// ---------------------------------------------------------------------------------------------------
// 1. Lost updates.

/// N clients race to update one card with the same `If-Match` each round: exactly one wins, the rest get
/// 412, and the card afterwards is the winner's, byte for byte. Then they race to delete it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_if_match_updates_have_exactly_one_winner() {
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 25;
    let s = TestServer::start().await;
    let owner = s.user("racer").await;
    let path = format!("{}race.vcf", owner.book());
    let mut etag = owner.put_card("race.vcf", "race", "Race start", "").await;
    let clients: Vec<Arc<Dav>> = (0..CLIENTS)
        .map(|_| {
            Arc::new(Dav {
                http: s.http(),
                base: s.base.clone(),
                user: owner.user.clone(),
                password: owner.password.clone(),
                user_agent: None,
            })
        })
        .collect();
    let first_etag = etag.clone();
    let mut refused = 0;
    for round in 0..ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
        let mut tasks = Vec::new();
        for (c, dav) in clients.iter().enumerate() {
            let (dav, barrier, path, etag) = (dav.clone(), barrier.clone(), path.clone(), etag.clone());
            tasks.push(tokio::spawn(async move {
                let body = vcard("race", &format!("Race {round} {c}"), &format!("NOTE:round {round} client {c}\r\n"));
                barrier.wait().await;
                let r = dav.put(&path, &body, &[("if-match", &etag)]).await;
                (c, r.status.as_u16(), r.header("etag"), body)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (c, status, new_etag, body) = t.await.expect("join");
            match status {
                200..=299 => winners.push((c, new_etag.expect("etag on a successful PUT"), body)),
                412 => refused += 1,
                other => panic!("round {round}: client {c} got {other}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {:?}", winners.iter().map(|w| w.0).collect::<Vec<_>>());
        let (_, new_etag, body) = winners.pop().expect("one winner");
        let got = owner.get(&path).await;
        assert_eq!(got.status.as_u16(), 200);
        assert_eq!(got.body, body.as_bytes(), "round {round}: the stored card is the winner's");
        assert_eq!(got.header("etag").as_deref(), Some(new_etag.as_str()), "round {round}: ETag");
        etag = new_etag;
    }
    assert_eq!(refused, ROUNDS * (CLIENTS - 1));
    // A stale ETag from the start is refused too.
    let stale = owner.put(&path, &vcard("race", "Stale", ""), &[("if-match", &first_etag)]).await;
    assert_eq!(stale.status.as_u16(), 412);

    // Racing conditional deletes: one 204, the others 412 (or 404 once it is gone).
    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let mut tasks = Vec::new();
    for dav in &clients {
        let (dav, barrier, path, etag) = (dav.clone(), barrier.clone(), path.clone(), etag.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            dav.delete(&path, &[("if-match", &etag)]).await.status.as_u16()
        }));
    }
    let mut deleted = 0;
    for t in tasks {
        match t.await.expect("join") {
            200..=299 => deleted += 1,
            412 | 404 => {}
            other => panic!("racing DELETE got {other}"),
        }
    }
    assert_eq!(deleted, 1, "exactly one DELETE wins");
    assert_eq!(owner.get(&path).await.status.as_u16(), 404);
    eprintln!(
        "lost updates: {CLIENTS} clients x {ROUNDS} rounds = {} conditional PUTs, {ROUNDS} won, {refused} got 412, \
         0 lost",
        CLIENTS * ROUNDS
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// 2. Disk full.

/// A small tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        if std::env::var_os("KARTEI_TEST_NO_MOUNT").is_some() {
            return None;
        }
        std::fs::create_dir_all(path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` until it refuses more; returns the bytes written.
fn fill_disk(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("filler");
    let mut written = 0u64;
    for chunk in [1 << 16, 4096, 512, 1] {
        let buf = vec![0xA5u8; chunk];
        while f.write_all(&buf).and_then(|_| f.sync_data()).is_ok() {
            written += chunk as u64;
        }
    }
    written
}

/// Writes fail with 507 or 503 and a logged reason when the database cannot grow (a full tmpfs when the
/// test may mount one, else `ulimit -f` on the server); reads go on; once space is back writes work again;
/// nothing acknowledged is lost, nothing refused is stored, `kartei check` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_keeps_reads_and_data() {
    let mut tmpfs = None;
    let site = Site::with_data_dir(|root| {
        tmpfs = Tmpfs::mount(&root.join("mnt"), "8m");
        root.join("mnt").join("data")
    });
    let _unmount = tmpfs;
    let mode = if _unmount.is_some() { "tmpfs (8 MiB, filled up)" } else { "ulimit -f 96 (file size limit)" };
    let password = site.add_user("full");
    let dav = site.dav("full", &password);

    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut srv = site.start("seed", "info").await;
    for i in 0..20 {
        let body = vcard(&format!("seed-{i}"), &format!("Seed {i}"), "NOTE:before the disk filled up\r\n");
        let r = dav.put(&format!("{}seed-{i}.vcf", dav.book()), &body, &[]).await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.text());
        acked.insert(format!("seed-{i}.vcf"), body);
    }
    let filler = site.data.parent().expect("mount").join("filler");
    if _unmount.is_some() {
        let n = fill_disk(&filler);
        eprintln!("disk full: filled the tmpfs with {n} bytes");
    } else {
        srv.stop().await;
        srv = site.start_wrapped("limited", "info", Some(96)).await;
    }

    // Write until the storage refuses (the WAL may still have room for a few).
    let mut refused = Vec::new();
    let mut status_seen = 0;
    let mut late_ok = 0;
    for i in 0..300 {
        let name = format!("late-{i}.vcf");
        let body = vcard(&format!("late-{i}"), &format!("Late {i}"), &"NOTE:filling\r\n".repeat(20));
        let r = dav.put(&format!("{}{name}", dav.book()), &body, &[]).await;
        if r.status.is_success() {
            acked.insert(name, body);
            late_ok += 1;
        } else {
            status_seen = r.status.as_u16();
            assert!(matches!(status_seen, 503 | 507), "refused write: {} {}", r.status, r.text());
            assert!(r.header("retry-after").is_some(), "Retry-After on {}", r.status);
            refused.push(name);
            break;
        }
    }
    assert!(!refused.is_empty(), "the storage never refused a write ({mode})");
    // While it is full, every kind of write is refused the same way, and none half-happens.
    let victim = "seed-0.vcf";
    let update = dav.put(&format!("{}{victim}", dav.book()), &vcard("seed-0", "Changed", ""), &[]).await;
    assert!(matches!(update.status.as_u16(), 503 | 507), "update while full: {}", update.status);
    let delete = dav.delete(&format!("{}{victim}", dav.book()), &[]).await;
    assert!(matches!(delete.status.as_u16(), 503 | 507), "delete while full: {}", delete.status);
    let again = dav.put(&format!("{}late-x.vcf", dav.book()), &vcard("late-x", "Late X", ""), &[]).await;
    assert!(matches!(again.status.as_u16(), 503 | 507), "write while full: {}", again.status);
    refused.push("late-x.vcf".into());

    // Reads keep working: every acknowledged card, byte for byte, and a full sync listing.
    for (name, body) in &acked {
        let r = dav.get(&format!("{}{name}", dav.book())).await;
        assert_eq!(r.status.as_u16(), 200, "GET {name} while full");
        assert_eq!(r.body, body.as_bytes(), "{name}");
    }
    let (cards, _) = listing(&dav).await;
    assert_eq!(cards.keys().cloned().collect::<BTreeSet<_>>(), acked.keys().cloned().collect::<BTreeSet<_>>());
    let log = srv.log();
    assert!(log.contains("storage is not accepting writes"), "the reason is logged:\n{log}");

    // Space comes back: writes work again.
    if _unmount.is_some() {
        std::fs::remove_file(&filler).expect("remove filler");
    } else {
        srv.stop().await;
        srv = site.start("unlimited", "info").await;
    }
    let body = vcard("recovered", "Recovered", "");
    let r = dav.put(&format!("{}recovered.vcf", dav.book()), &body, &[]).await;
    assert_eq!(r.status.as_u16(), 201, "write after space is back: {}", r.text());
    acked.insert("recovered.vcf".into(), body);
    srv.stop().await;

    // Nothing corrupted, nothing lost, nothing refused stored.
    site.check();
    let srv = site.start("after", "info").await;
    let (cards, _) = listing(&dav).await;
    assert_eq!(cards.keys().cloned().collect::<BTreeSet<_>>(), acked.keys().cloned().collect::<BTreeSet<_>>());
    for (name, body) in &acked {
        assert_eq!(dav.get(&format!("{}{name}", dav.book())).await.body, body.as_bytes(), "{name}");
    }
    for name in &refused {
        assert_eq!(dav.get(&format!("{}{name}", dav.book())).await.status.as_u16(), 404, "{name} was refused");
    }
    srv.stop().await;
    eprintln!(
        "disk full ({mode}): 20 writes before the fault, {late_ok} more accepted while the WAL had room, then \
         refused with {status_seen}, 3 more writes (create, update, delete) refused, {} reads ok while full, 1 write \
         after space came back; {} acknowledged cards all present, {} refused ones absent; 0 lost",
        acked.len() - 1,
        acked.len(),
        refused.len()
    );
}

/// Files made immutable (`chattr +i`) for a test, made mutable again when dropped.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(files: &[PathBuf]) -> Option<Immutable> {
        let ok = Command::new("chattr")
            .arg("+i")
            .args(files)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let guard = Immutable(files.to_vec());
        ok.then_some(guard)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").args(&self.0).stderr(Stdio::null()).status();
    }
}

/// A database that turns read-only under a running server (its file and WAL made immutable, which even
/// root cannot write; needs root and a file system with `chattr`, else the test says so and passes):
/// writes answer 503/507 with a logged reason, reads go on, and when the files are writable again so is
/// the server; `kartei check` passes and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_refuses_writes_and_recovers() {
    let site = Site::new();
    let password = site.add_user("frozen");
    let dav = site.dav("frozen", &password);
    let srv = site.start("serve", "info").await;
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..20 {
        let body = vcard(&format!("f-{i}"), &format!("Frozen {i}"), "");
        let r = dav.put(&format!("{}f-{i}.vcf", dav.book()), &body, &[]).await;
        assert_eq!(r.status.as_u16(), 201);
        acked.insert(format!("f-{i}.vcf"), body);
    }
    let files = vec![site.db(), PathBuf::from(format!("{}-wal", site.db().display()))];
    let Some(frozen) = Immutable::set(&files) else {
        eprintln!("read-only database: chattr +i is not available here (not root?); skipped");
        return;
    };
    let mut statuses = BTreeSet::new();
    let attempts = [
        ("PUT", "new.vcf", vcard("new", "New", "")),
        ("PUT", "f-1.vcf", vcard("f-1", "Changed", "")),
        ("DELETE", "f-2.vcf", String::new()),
    ];
    for (method, name, body) in &attempts {
        let path = format!("{}{name}", dav.book());
        let r = if *method == "PUT" { dav.put(&path, body, &[]).await } else { dav.delete(&path, &[]).await };
        assert!(matches!(r.status.as_u16(), 503 | 507), "{method} {name} on a read-only database: {}", r.status);
        statuses.insert(r.status.as_u16());
    }
    for (name, body) in &acked {
        assert_eq!(dav.get(&format!("{}{name}", dav.book())).await.body, body.as_bytes(), "read {name}");
    }
    let (cards, _) = listing(&dav).await;
    assert_eq!(cards.len(), acked.len(), "sync listing while read-only");
    let log = srv.log();
    assert!(log.contains("storage is not accepting writes"), "the reason is logged:\n{log}");
    drop(frozen);

    let body = vcard("thawed", "Thawed", "");
    let r = dav.put(&format!("{}thawed.vcf", dav.book()), &body, &[]).await;
    assert_eq!(r.status.as_u16(), 201, "write once the files are writable again: {}", r.text());
    acked.insert("thawed.vcf".into(), body);
    srv.stop().await;
    site.check();
    let srv = site.start("after", "info").await;
    let (cards, _) = listing(&dav).await;
    assert_eq!(cards.keys().cloned().collect::<BTreeSet<_>>(), acked.keys().cloned().collect::<BTreeSet<_>>());
    for (name, body) in &acked {
        assert_eq!(dav.get(&format!("{}{name}", dav.book())).await.body, body.as_bytes(), "{name}");
    }
    srv.stop().await;
    eprintln!(
        "read-only database (chattr +i on the file and its WAL under a running server): 3 writes refused with \
         {statuses:?}, {} reads ok, 1 write after thawing; {} acknowledged cards all present, 0 lost",
        acked.len() - 1,
        acked.len()
    );
}

// ---------------------------------------------------------------------------------------------------
// 3. Graceful shutdown.

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// SIGTERM while a PUT's body is still arriving: the PUT completes with 201, new connections are refused,
/// the process exits 0 within seconds, and the WAL is checkpointed (the -wal file is empty or gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_checkpoints() {
    let site = Site::new();
    let password = site.add_user("calm");
    let dav = site.dav("calm", &password);
    let mut srv = site.start("serve", "info").await;
    // ~16 MB of cards: more than the kernel buffers of a loopback connection hold, so the server is still
    // writing the multiget answer when it gets SIGTERM.
    const CARDS: usize = 100;
    let mut hrefs = Vec::new();
    for i in 0..CARDS {
        let note = "NOTE:a card long enough that the whole book does not fit into the socket buffers\r\n";
        dav.put_card(&format!("c{i}.vcf"), &format!("c{i}"), &format!("Card {i}"), &note.repeat(1800)).await;
        hrefs.push(format!("{}c{i}.vcf", dav.book()));
    }
    let wal = PathBuf::from(format!("{}-wal", site.db().display()));
    let wal_before = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(wal_before > 0, "the WAL holds the writes before shutdown");

    // A PUT whose body arrives in two halves, SIGTERM in between.
    let body = vcard("slow", "Slow Upload", &"NOTE:sent slowly, in two halves\r\n".repeat(100));
    let (first, second) = body.as_bytes().split_at(body.len() / 2);
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", site.port)).await.expect("connect");
    let head = format!(
        "PUT /dav/addressbooks/calm/contacts/slow.vcf HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: {}\r\n\
         Content-Type: text/vcard; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        site.port,
        basic("calm", &password),
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    tcp.write_all(first).await.expect("first half");
    tcp.flush().await.expect("flush");
    // And a multiget of every card whose answer the client has not read yet.
    let multiget_resp = dav
        .http
        .request(reqwest::Method::from_bytes(b"REPORT").expect("method"), format!("{}{}", site.base, dav.book()))
        .basic_auth("calm", Some(&password))
        .header("depth", "1")
        .header("content-type", "application/xml; charset=utf-8")
        .body(multiget(&hrefs))
        .send()
        .await
        .expect("multiget sent");
    assert_eq!(multiget_resp.status().as_u16(), 207);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    srv.term();

    // New connections are refused once the listener is closed.
    let mut refused = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", site.port)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "new connections are still accepted after SIGTERM");
    assert!(srv.child.try_wait().expect("wait").is_none(), "the server exited with a request in flight");

    // The multiget answer arrives whole although the server is shutting down.
    let big = multiget_resp.bytes().await.expect("multiget body after SIGTERM");
    let ms = Multistatus::parse(&big);
    assert_eq!(ms.responses.len(), CARDS, "every card of the in-flight multiget");
    assert!(ms.responses.iter().all(|r| r.text(CARD, "address-data").is_some_and(|d| d.contains("END:VCARD"))));

    tcp.write_all(second).await.expect("second half");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await
    .expect("the in-flight PUT is answered");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 201"), "in-flight PUT after SIGTERM: {answer}");
    drop(tcp);

    let status = srv.wait_exit(Duration::from_secs(20)).await;
    let took = signalled.elapsed();
    assert!(status.is_some_and(|s| s.success()), "exit after SIGTERM: {status:?}\n{}", srv.log());
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
    let wal_after = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_after, 0, "the WAL is checkpointed at shutdown");
    let log = srv.log();
    assert!(log.contains("shutting down") && log.contains("the WAL is checkpointed"), "{log}");

    site.check();
    let srv = site.start("again", "info").await;
    assert_eq!(dav.get(&format!("{}slow.vcf", dav.book())).await.body, body.as_bytes());
    srv.stop().await;
    eprintln!(
        "graceful shutdown: in-flight PUT answered 201 and in-flight multiget of {CARDS} cards ({} bytes) \
         answered whole after SIGTERM, new connections refused, exit 0 after {took:?}, WAL {wal_before} -> \
         {wal_after} bytes",
        big.len()
    );
}

/// SIGTERM while a client holds a streamed answer and reads none of it: after `shutdown_grace_secs` the
/// connection is cut, the producer ends its read transaction, and the process exits 0 with the WAL
/// checkpointed and no panic. (Before, the exit took the 10 s grace plus the checkpoint's 10 s busy wait
/// on the producer's snapshot, said "checkpointed" without being so, and could panic with "timer error"
/// as the runtime shut down under the waiting producer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_a_client_that_stopped_reading_after_the_grace_period() {
    let site = Site::new();
    let mut config = std::fs::OpenOptions::new().append(true).open(&site.config).expect("config");
    writeln!(config, "[limits]\nshutdown_grace_secs = 1").expect("config");
    drop(config);
    let password = site.add_user("stalled");
    let dav = site.dav("stalled", &password);
    let mut srv = site.start("serve", "info").await;
    // ~10 MB: more than the channel, the kernel's buffers and the client's tiny window hold together.
    for i in 0..60 {
        let note = "NOTE:a card long enough that the whole book does not fit into the socket buffers\r\n";
        dav.put_card(&format!("c{i}.vcf"), &format!("c{i}"), &format!("Card {i}"), &note.repeat(1800)).await;
    }
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small receive buffer");
    let mut tcp = socket.connect(([127, 0, 0, 1], site.port).into()).await.expect("connect");
    let head = format!(
        "GET /dav/addressbooks/stalled/contacts/ HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: {}\r\n\r\n",
        site.port,
        basic("stalled", &password)
    );
    tcp.write_all(head.as_bytes()).await.expect("request");
    let mut first = [0u8; 12];
    tcp.read_exact(&mut first).await.expect("the answer starts");
    assert_eq!(&first, b"HTTP/1.1 200", "the whole-book GET is answered");
    // From here the client reads nothing; let the producer fill every buffer and wait.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let signalled = Instant::now();
    srv.term();
    let status = srv.wait_exit(Duration::from_secs(20)).await;
    let took = signalled.elapsed();
    let log = srv.log();
    assert!(status.is_some_and(|s| s.success()), "exit after SIGTERM: {status:?}\n{log}");
    assert!(took < Duration::from_secs(6), "shutdown took {took:?} with a grace period of 1 s\n{log}");
    assert!(log.contains("cutting the connections still open"), "the stalled connection was cut: {log}");
    assert!(!log.contains("panicked"), "a panic during shutdown: {log}");
    assert!(log.contains("the WAL is checkpointed"), "{log}");
    let wal = PathBuf::from(format!("{}-wal", site.db().display()));
    let wal_after = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_after, 0, "the WAL is checkpointed although a client held a streamed answer");
    drop(tcp);
    site.check();
    eprintln!("stalled streamed answer at SIGTERM: cut after the 1 s grace period, exit 0 after {took:?}, WAL empty");
}

/// An HTTP/2 client that asks for a card and never opens the stream's window, while its pings keep the
/// connection's bytes moving: the server must not hold that answer forever (a review held 3.9 GB this way
/// with 400 streams of a 9 MB card). The watchdog cuts the connection once a response has not been asked
/// for more within the stall limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_whose_window_stays_shut_is_cut() {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let site = Site::new();
    let mut config = std::fs::OpenOptions::new().append(true).open(&site.config).expect("config");
    writeln!(config, "[limits]\nidle_timeout_secs = 2\nrequest_timeout_secs = 2").expect("config");
    drop(config);
    let password = site.add_user("holder");
    let dav = site.dav("holder", &password);
    let srv = site.start("serve", "debug").await;
    dav.put_card("big.vcf", "big", "Big", &"NOTE:padding that makes the card larger than a window\r\n".repeat(3000))
        .await;

    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", site.port)).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .keep_alive_interval(Duration::from_millis(300))
        .keep_alive_while_idle(true)
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let request =
        hyper::Request::get(format!("http://127.0.0.1:{}/dav/addressbooks/holder/contacts/big.vcf", site.port))
            .header("authorization", basic("holder", &password))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
    let response = sender.send_request(request).await.expect("response head");
    assert_eq!(response.status().as_u16(), 200);
    let started = Instant::now();
    // The body is never read, so the stream's window stays at 0.
    let ended = tokio::time::timeout(Duration::from_secs(15), connection).await;
    assert!(ended.is_ok(), "the server still held the unread answer after 15 s (stall limit 2 s)");
    let took = started.elapsed();
    // The server logs why once the connection is gone, so the line may come a moment after the close.
    let reason = "holding a response its client took nothing of";
    let deadline = Instant::now() + Duration::from_secs(5);
    while !srv.log().contains(reason) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = srv.log();
    assert!(log.contains(reason), "{log}");
    drop(response);
    srv.stop().await;
    eprintln!("HTTP/2 stream with a shut window: connection cut after {took:?} (stall limit 2 s)");
}

// ---------------------------------------------------------------------------------------------------
// 4. Backup and restore while serving.

/// `kartei backup` while two writers keep writing gives a database that passes `kartei check` and holds
/// every card acknowledged before the backup started; `kartei restore` of it, then serve: they are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_writing_restores_every_acknowledged_card() {
    let site = Site::new();
    let password = site.add_user("keeper");
    let dav = site.dav("keeper", &password);
    let srv = site.start("serve", "info").await;
    // Bulk first (~50 MB), so that copying takes many backup steps while writes go on: a backup that starts
    // over whenever another connection writes between two steps would never finish.
    const BULK: usize = 40;
    for i in 0..BULK {
        dav.put_card(
            &format!("base-{i}.vcf"),
            &format!("base-{i}"),
            &format!("Base {i}"),
            &"NOTE:bulk bulk bulk bulk bulk bulk bulk bulk bulk bulk\r\n".repeat(20_000),
        )
        .await;
    }
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (acked, stop, base, password) = (acked.clone(), stop.clone(), site.base.clone(), password.clone());
        writers.push(tokio::spawn(async move {
            let dav = Dav { http: reqwest::Client::new(), base, user: "keeper".into(), password, user_agent: None };
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let name = format!("w{w}-{i}.vcf");
                let body = vcard(&format!("w{w}-{i}"), &format!("Writer {w} {i}"), "");
                let r = dav.put(&format!("{}{name}", dav.book()), &body, &[]).await;
                assert!(r.status.is_success(), "{name}: {}", r.status);
                acked.lock().expect("lock").insert(name, body);
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before: BTreeMap<String, String> = acked.lock().expect("lock").clone();
    let backup = site.root().join("backup.sqlite3");
    let started = Instant::now();
    let mut backup_run = Command::new(BIN)
        .arg("--config")
        .arg(&site.config)
        .arg("backup")
        .arg(&backup)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("backup runs");
    let mut timed_out = false;
    while backup_run.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = backup_run.kill();
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = backup_run.wait().expect("wait");
    let backup_took = started.elapsed();
    let db_bytes = std::fs::metadata(site.db()).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(format!("{}-wal", site.db().display())).map(|m| m.len()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    assert!(!timed_out, "kartei backup did not finish within 60 s while writes went on");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut backup_run.stderr.take().expect("stderr"), &mut err).expect("stderr");
    assert!(status.success(), "kartei backup: {err}");
    let during = acked.lock().expect("lock").len();

    // The backup, checked on its own.
    let copy = site.root().join("copy");
    std::fs::create_dir_all(copy.join("data")).expect("dir");
    std::fs::copy(&backup, copy.join("data").join("kartei.sqlite3")).expect("copy");
    write_config(&copy.join("kartei.toml"), free_port(), &copy.join("data"));
    kartei_check(&copy.join("kartei.toml"));

    // A device that synced after the backup holds a token the restored database never issued.
    let device_token = dav.sync(&dav.book(), "", "<d:getetag/>", None).await.multistatus().sync_token.expect("token");

    // Restore it over the live data (server stopped), then serve.
    srv.stop().await;
    let restore = site.kartei(&["restore", backup.to_str().expect("utf-8 path")]);
    assert!(restore.status.success(), "kartei restore: {}", String::from_utf8_lossy(&restore.stderr));
    site.check();
    let srv = site.start("restored", "info").await;
    let (cards, _) = listing(&dav).await;
    for (name, body) in &before {
        let (_, data) = cards.get(name).unwrap_or_else(|| panic!("{name}, acknowledged before the backup, is missing"));
        assert_eq!(data, &lf(body), "{name}");
    }
    let all = acked.lock().expect("lock").clone();
    for name in cards.keys().filter(|n| !n.starts_with("base-")) {
        assert!(all.contains_key(name), "{name} in the backup was never written");
    }
    for (name, body) in before.iter().step_by(10) {
        assert_eq!(dav.get(&format!("{}{name}", dav.book())).await.body, body.as_bytes(), "{name}");
    }
    // Once the restored book's revision has caught up with the device's token, that token would name a
    // revision of different contents: it must be refused (403 valid-sync-token), so the device resyncs.
    let revision = |token: &str| token.rsplit_once('/').and_then(|(_, r)| r.parse::<i64>().ok()).expect("revision");
    let restored = dav.sync(&dav.book(), "", "<d:getetag/>", None).await.multistatus().sync_token.expect("token");
    for i in 0..=(revision(&device_token) - revision(&restored)).max(0) {
        dav.put_card(&format!("after-restore-{i}.vcf"), &format!("after-restore-{i}"), "After Restore", "").await;
    }
    let stale = dav.sync(&dav.book(), &device_token, "<d:getetag/>", None).await;
    assert_eq!(stale.status, 403, "a token issued before the restore: {}", String::from_utf8_lossy(&stale.body));
    assert_eq!(stale.error_condition(), "{DAV:}valid-sync-token");
    srv.stop().await;
    eprintln!(
        "backup under load: {} cards acknowledged before the backup, {} by its end; backup of {db_bytes} bytes (database + WAL) \
         took {backup_took:?} and holds {} cards; restored: all {} present, 0 lost",
        before.len() + BULK,
        during + BULK,
        cards.len(),
        before.len() + BULK
    );
}

/// `kartei restore` refuses what would lose data: a file that is not a kartei database (empty, garbage,
/// another program's SQLite database), and any restore while the server has the database open; it does
/// replace a damaged database. A backup file is readable by its owner only (it holds every contact and the
/// password hashes) and leaves no side files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_what_would_lose_data() {
    let site = Site::new();
    let password = site.add_user("careful");
    let dav = site.dav("careful", &password);
    let srv = site.start("serve", "info").await;
    let body = dav.put_card("kept.vcf", "kept", "Kept", "").await;
    let backup = site.root().join("good.sqlite3");
    let out = site.kartei(&["backup", backup.to_str().expect("utf-8")]);
    assert!(out.status.success(), "backup: {}", String::from_utf8_lossy(&out.stderr));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&backup).expect("backup").permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "the backup is private (mode {mode:o})");
    }
    let leftovers: Vec<_> = std::fs::read_dir(site.root())
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("good.sqlite3") && n != "good.sqlite3")
        .collect();
    assert!(leftovers.is_empty(), "the backup leaves no side files: {leftovers:?}");

    // While the server runs, restore refuses, and the server's data stays as it is.
    let running = site.kartei(&["restore", backup.to_str().expect("utf-8")]);
    assert!(!running.status.success(), "restore while the server runs must refuse");
    dav.put_card("after-backup.vcf", "after", "After", "").await;
    assert_eq!(dav.get(&format!("{}after-backup.vcf", dav.book())).await.status.as_u16(), 200);
    srv.stop().await;

    let empty = site.root().join("empty.sqlite3");
    std::fs::write(&empty, b"").expect("empty");
    let garbage = site.root().join("garbage.sqlite3");
    std::fs::write(&garbage, b"not a database at all, just some text\n".repeat(200)).expect("garbage");
    let foreign = site.root().join("foreign.sqlite3");
    {
        let c = Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import sqlite3; c = sqlite3.connect({:?}); c.execute('create table notes(x)'); c.commit()",
                foreign.display()
            ))
            .status();
        if !c.is_ok_and(|s| s.success()) {
            std::fs::copy(&empty, &foreign).expect("copy");
        }
    }
    for bad in [&empty, &garbage, &foreign] {
        let out = site.kartei(&["restore", bad.to_str().expect("utf-8")]);
        assert!(!out.status.success(), "restore of {} must refuse", bad.display());
        assert!(bad.exists(), "the refused file is left alone");
    }
    site.check();
    let srv = site.start("still", "info").await;
    assert_eq!(dav.get(&format!("{}after-backup.vcf", dav.book())).await.status.as_u16(), 200, "nothing replaced");
    srv.stop().await;

    // The good backup restores once the server is stopped.
    let out = site.kartei(&["restore", backup.to_str().expect("utf-8")]);
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    site.check();
    let srv = site.start("restored", "info").await;
    let kept = dav.get(&format!("{}kept.vcf", dav.book())).await;
    assert_eq!(kept.header("etag").as_deref(), Some(body.as_str()));
    assert_eq!(dav.get(&format!("{}after-backup.vcf", dav.book())).await.status.as_u16(), 404, "the backup's state");
    srv.stop().await;

    // A damaged database is what restore is for: it replaces it.
    std::fs::write(site.db(), b"this database was damaged\n".repeat(4000)).expect("damage");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", site.db().display()));
    }
    let out = site.kartei(&["restore", backup.to_str().expect("utf-8")]);
    assert!(out.status.success(), "restore over a damaged database: {}", String::from_utf8_lossy(&out.stderr));
    site.check();
    let srv = site.start("repaired", "info").await;
    assert_eq!(dav.get(&format!("{}kept.vcf", dav.book())).await.header("etag").as_deref(), Some(body.as_str()));
    srv.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// 5. Secrets never in logs.

async fn json_of(r: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&r.bytes().await.expect("body")).expect("json")
}

/// Over HTTPS with `RUST_LOG=trace`, creating users, logging in with right and wrong passwords, using right and wrong
/// admin tokens and resetting credentials (admin API, self-service, CLI) leaves no password, token,
/// password hash or Authorization header value in the server's output, the CLI's log or the audit trail,
/// and no password or token in plain text in the database file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let site = Site::new_tls();
    let cli_log = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let token_out = site.kartei(&["admin-token", "reset", "--json"]);
    assert!(token_out.status.success(), "{}", cli_log(&token_out));
    let token = serde_json::from_slice::<serde_json::Value>(&token_out.stdout).expect("json")["token"]
        .as_str()
        .expect("token")
        .to_string();
    let mut logs = vec![cli_log(&token_out)];
    let srv = site.start("trace", "trace").await;
    let http = site.client();
    let admin = |method: reqwest::Method, path: &str, bearer: &str| {
        http.request(method, format!("{}{path}", site.base)).header("authorization", format!("Bearer {bearer}"))
    };
    let mut secrets: Vec<String> = vec![token.clone()];
    let wrong_token = "kartei_admin_NotTheRightTokenAtAll0123456789";
    secrets.push(wrong_token.into());

    let created = admin(reqwest::Method::POST, "/admin/v1/users", &token)
        .header("content-type", "application/json")
        .body(serde_json::json!({"display_name": "Anna Geheim"}).to_string())
        .send()
        .await
        .expect("create user");
    assert_eq!(created.status().as_u16(), 201);
    let created = json_of(created).await;
    let user = created["username"].as_str().expect("username").to_string();
    let p1 = created["password"].as_str().expect("password").to_string();
    secrets.push(p1.clone());
    let refused = admin(reqwest::Method::GET, "/admin/v1/users", wrong_token).send().await.expect("send");
    assert_eq!(refused.status().as_u16(), 401);

    let dav = site.dav(&user, &p1);
    assert_eq!(dav.propfind(&dav.home(), "0", "").await.status.as_u16(), 207);
    let wrong_password = "Wr0ng-Pa55word-Nobody-Uses";
    secrets.push(wrong_password.into());
    for _ in 0..6 {
        let bad = site.dav(&user, wrong_password);
        assert!(matches!(bad.propfind(&bad.home(), "0", "").await.status.as_u16(), 401 | 429 | 503));
    }
    // A password typed into the user-name field is not logged either.
    let typed_as_login = "Pa55word-In-The-Login-Field";
    secrets.push(typed_as_login.into());
    let bad = site.dav(typed_as_login, "x");
    assert_eq!(bad.propfind("/dav/", "0", "").await.status.as_u16(), 401);
    let reset = admin(reqwest::Method::POST, &format!("/admin/v1/users/{user}/credentials"), &token)
        .send()
        .await
        .expect("reset");
    assert_eq!(reset.status().as_u16(), 200);
    let p2 = json_of(reset).await["password"].as_str().expect("pw").to_string();
    secrets.push(p2.clone());
    let own = http
        .post(format!("{}/account/v1/credentials", site.base))
        .basic_auth(&user, Some(&p2))
        .send()
        .await
        .expect("self-service");
    assert_eq!(own.status().as_u16(), 200);
    let p3 = json_of(own).await["password"].as_str().expect("pw").to_string();
    secrets.push(p3.clone());
    let dav = site.dav(&user, &p3);
    dav.put_card("x.vcf", "x", "X", "").await;
    let cli = Command::new(BIN)
        .arg("--config")
        .arg(&site.config)
        .args(["user", "reset", &user, "--json"])
        .env("RUST_LOG", "trace")
        .output()
        .expect("cli");
    assert!(cli.status.success(), "{}", cli_log(&cli));
    let p4 = serde_json::from_slice::<serde_json::Value>(&cli.stdout).expect("json")["password"]
        .as_str()
        .expect("pw")
        .to_string();
    secrets.push(p4.clone());
    logs.push(cli_log(&cli));
    let dav = site.dav(&user, &p4);
    assert_eq!(dav.propfind(&dav.home(), "0", "").await.status.as_u16(), 207);
    let audit = admin(reqwest::Method::GET, "/admin/v1/audit", &token).send().await.expect("audit");
    assert_eq!(audit.status().as_u16(), 200);
    let audit = String::from_utf8_lossy(&audit.bytes().await.expect("audit body")).into_owned();
    assert!(audit.contains("reset"), "the audit trail records the resets: {audit}");
    logs.push(audit);
    srv.stop().await;
    // At rest, too: the database (checkpointed at the stop) holds hashes only.
    let mut at_rest = std::fs::read(site.db()).expect("database");
    at_rest.extend(std::fs::read(format!("{}-wal", site.db().display())).unwrap_or_default());
    for secret in &secrets {
        assert!(!at_rest.windows(secret.len()).any(|w| w == secret.as_bytes()), "a secret is stored in plain text");
    }

    let server_log = std::fs::read_to_string(site.root().join("trace.log")).expect("log");
    assert!(server_log.contains("authentication failed"), "the trace log is there:\n{server_log}");
    logs.push(server_log);
    let mut header_values = Vec::new();
    for pw in [&p1, &p2, &p3, &p4, &wrong_password.to_string()] {
        let b = basic(&user, pw);
        header_values.push(b.trim_start_matches("Basic ").to_string());
    }
    secrets.extend(header_values);
    let mut lines = 0;
    for log in &logs {
        lines += log.lines().count();
        for secret in &secrets {
            assert!(!log.contains(secret.as_str()), "a secret ({}…) is in the log", &secret[..4]);
        }
        assert!(!log.contains("$argon2"), "a password hash is in the log");
        assert!(!log.to_ascii_lowercase().contains("authorization: "), "an Authorization header is in the log");
    }
    eprintln!(
        "secrets in logs: {} secrets (admin token, a wrong token, 4 generations of a password, a wrong password, \
         their Basic header values) checked against {lines} lines of trace output and the audit trail, and {} bytes \
         of database at rest: 0 found",
        secrets.len(),
        at_rest.len()
    );
}

// ---------------------------------------------------------------------------------------------------
// 6. Repeated kill -9.

/// Per card: its acknowledged state, and the state a request in flight at the kill would give it.
type Outcomes = BTreeMap<String, (Want, Option<Want>)>;

#[derive(Clone, Debug, PartialEq)]
enum Want {
    Absent,
    Card(String),
}

/// Several rounds of kill -9 at a random moment while four writers create, update (If-Match) and delete
/// cards. After each restart: `kartei check` passes, every card is in its acknowledged state or (for the
/// one request in flight per writer) its intended one, never anything else; the sync-collection delta from
/// the token taken before the round names every card that changed, with its current ETag; and the token
/// from before the first crash still gives a correct delta over all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kill_9_loses_nothing_acknowledged() {
    const WRITERS: usize = 4;
    const LIVE_CARDS_PER_WRITER: usize = 400;
    let site = Site::new();
    let password = site.add_user("phoenix");
    let dav = site.dav("phoenix", &password);
    let mut rng = Rng::seeded("kill -9 rounds");
    // name -> (acknowledged state, state of the request in flight at the kill)
    let state: Arc<Mutex<Outcomes>> = Arc::default();
    let mut first_token: Option<String> = None;
    let (mut rounds, mut acked_ops, mut inflight_seen, mut inflight_applied) = (0, 0usize, 0, 0);
    let budget = Instant::now();
    while rounds < 15 && (rounds < 3 || budget.elapsed() < Duration::from_secs(20)) {
        let mut srv = site.start(&format!("round{rounds}"), "warn").await;
        let (now, token) = listing(&dav).await;
        let first_token = first_token.get_or_insert_with(|| token.clone()).clone();
        let etags: BTreeMap<String, String> = now.iter().map(|(n, (e, _))| (n.clone(), e.clone())).collect();
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (state, mut rng, base, password) = (state.clone(), rng.fork(), site.base.clone(), password.clone());
            let mut mine: Vec<(String, String)> = etags
                .iter()
                .filter(|(n, _)| n.starts_with(&format!("w{w}-")))
                .map(|(n, e)| (n.clone(), e.clone()))
                .collect();
            writers.push(tokio::spawn(async move {
                let dav =
                    Dav { http: reqwest::Client::new(), base, user: "phoenix".into(), password, user_agent: None };
                let mut ops = 0usize;
                for i in 0.. {
                    let roll = rng.below(10);
                    // Creates stop at a cap, so that the book stays a size one listing can check each round
                    // (a fast machine made ~14,000 cards in 15 rounds, past the test parser's element limit).
                    let create = mine.is_empty() || (roll < 5 && mine.len() < LIVE_CARDS_PER_WRITER);
                    let (name, method, body, headers, target) = if create {
                        let name = format!("w{w}-r{rounds}-{i}.vcf");
                        let body = vcard(&format!("{name}-uid"), &format!("New {w} {i}"), "NOTE:created\r\n");
                        (
                            name,
                            "PUT",
                            body.clone(),
                            vec![("if-none-match".to_string(), "*".to_string())],
                            Want::Card(body),
                        )
                    } else {
                        let k = rng.below(mine.len() as u64) as usize;
                        let (name, etag) = mine[k].clone();
                        if roll < 8 {
                            let body =
                                vcard(&format!("{name}-uid"), &format!("Edit {w} {rounds} {i}"), "NOTE:edited\r\n");
                            (name, "PUT", body.clone(), vec![("if-match".to_string(), etag)], Want::Card(body))
                        } else {
                            (name, "DELETE", String::new(), vec![("if-match".to_string(), etag)], Want::Absent)
                        }
                    };
                    state.lock().expect("lock").entry(name.clone()).or_insert((Want::Absent, None)).1 =
                        Some(target.clone());
                    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let mut req = dav
                        .http
                        .request(
                            reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                            format!("{}{}{name}", dav.base, dav.book()),
                        )
                        .basic_auth(&dav.user, Some(&dav.password))
                        .body(body);
                    for (k, v) in headers {
                        req = req.header(k, v);
                    }
                    let Ok(resp) = req.send().await else { break };
                    let status = resp.status();
                    let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
                    if resp.bytes().await.is_err() {
                        break; // killed before the answer was complete: stays "in flight"
                    }
                    assert!(status.is_success(), "{method} {name}: {status}");
                    let mut st = state.lock().expect("lock");
                    let entry = st.get_mut(&name).expect("entry");
                    entry.0 = target.clone();
                    entry.1 = None;
                    drop(st);
                    ops += 1;
                    mine.retain(|(n, _)| *n != name);
                    if let Want::Card(_) = target {
                        mine.push((name, etag.expect("etag")));
                    }
                }
                ops
            }));
        }
        tokio::time::sleep(Duration::from_millis(150 + rng.below(900))).await;
        srv.kill9();
        for w in writers {
            acked_ops += w.await.expect("writer");
        }
        rounds += 1;

        site.check();
        let mut srv = site.start(&format!("verify{rounds}"), "warn").await;
        let (after, _) = listing(&dav).await;
        {
            let mut st = state.lock().expect("lock");
            for (name, (acked, inflight)) in st.iter_mut() {
                let actual = match after.get(name) {
                    Some((_, data)) => Want::Card(data.clone()),
                    None => Want::Absent,
                };
                let norm = |w: &Want| match w {
                    Want::Card(b) => Want::Card(lf(b)),
                    Want::Absent => Want::Absent,
                };
                let ok_acked = actual == norm(acked);
                let ok_inflight = inflight.as_ref().is_some_and(|i| actual == norm(i));
                assert!(
                    ok_acked || ok_inflight,
                    "round {rounds}: {name} is {actual:?}, acknowledged {acked:?}, in flight {inflight:?}"
                );
                if inflight.is_some() {
                    inflight_seen += 1;
                    if !ok_acked {
                        inflight_applied += 1;
                        *acked = inflight.clone().expect("in flight");
                    }
                }
                *inflight = None;
            }
            for name in after.keys() {
                assert!(st.contains_key(name), "round {rounds}: {name} was never written");
            }
        }
        // The delta from the token taken before this round names exactly what changed in it.
        let delta = dav.sync(&dav.book(), &token, "<d:getetag/>", None).await.multistatus();
        let mut changed = BTreeSet::new();
        for r in &delta.responses {
            let name = last_segment(&r.href);
            if is_404(r) {
                assert!(!after.contains_key(&name), "round {rounds}: delta says {name} is deleted, it is there");
            } else {
                let (etag, _) =
                    after.get(&name).unwrap_or_else(|| panic!("round {rounds}: delta names missing {name}"));
                assert_eq!(r.text(DAV, "getetag").as_ref(), Some(etag), "round {rounds}: {name} etag in delta");
            }
            changed.insert(name);
        }
        let names: BTreeSet<&String> = now.keys().chain(after.keys()).collect();
        for name in names {
            if now.get(name) != after.get(name) {
                assert!(changed.contains(name), "round {rounds}: {name} changed but is not in the delta");
            }
        }
        // The token from before the first crash still gives a correct delta over every crash since.
        let whole = dav.sync(&dav.book(), &first_token, "<d:getetag/>", None).await.multistatus();
        let mut seen = BTreeSet::new();
        for r in &whole.responses {
            let name = last_segment(&r.href);
            if is_404(r) {
                assert!(!after.contains_key(&name), "round {rounds}: first-token delta deletes {name}, it is there");
            } else {
                let etag = after.get(&name).map(|(e, _)| e);
                assert_eq!(r.text(DAV, "getetag").as_ref(), etag, "round {rounds}: first-token delta, {name}");
            }
            seen.insert(name);
        }
        assert!(after.keys().all(|n| seen.contains(n)), "round {rounds}: the first-token delta misses cards");
        srv.kill9();
    }
    let total = state.lock().expect("lock").len();
    assert!(acked_ops > 100, "the writers got going ({acked_ops} acknowledged)");
    eprintln!(
        "kill -9: {rounds} rounds in {:?}, {acked_ops} acknowledged writes over {total} cards, {inflight_seen} \
         requests in flight at a kill ({inflight_applied} of them committed), 0 lost, 0 half-written",
        budget.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------------
// 7. Soak.

/// The acknowledged writes: (card, ETag before or "" for a create) -> state after. Conditional writes
/// mean each state has at most one successor; a second one would be a lost update.
#[derive(Default)]
struct Model {
    next: HashMap<(String, String), Option<(String, String)>>,
    lost: Vec<String>,
}

impl Model {
    fn record(&mut self, name: &str, from: &str, to: Option<(String, String)>) {
        if self.next.insert((name.to_string(), from.to_string()), to).is_some() {
            self.lost.push(format!("{name} from {from:?}"));
        }
    }

    /// The final state: name -> (etag, body).
    fn current(&self) -> BTreeMap<String, (String, String)> {
        let names: BTreeSet<&String> = self.next.keys().filter(|(_, from)| from.is_empty()).map(|(n, _)| n).collect();
        let mut out = BTreeMap::new();
        for name in names {
            let mut at = String::new();
            let mut state = None;
            while let Some(to) = self.next.get(&(name.clone(), at.clone())) {
                match to {
                    Some((etag, body)) => {
                        state = Some((etag.clone(), body.clone()));
                        at = etag.clone();
                    }
                    None => {
                        state = None;
                        break;
                    }
                }
            }
            if let Some(s) = state {
                out.insert(name.clone(), s);
            }
        }
        out
    }
}

#[derive(Default)]
struct Replica {
    cards: BTreeMap<String, (String, String)>,
    token: String,
}

fn multiget(hrefs: &[String]) -> String {
    let hrefs: String = hrefs.iter().map(|h| format!("<d:href>{h}</d:href>")).collect();
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><card:addressbook-multiget xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/><card:address-data/></d:prop>{hrefs}</card:addressbook-multiget>"#
    )
}

/// sync-collection from the replica's token, then a multiget of what changed.
async fn pull(dav: &Dav, replica: &mut Replica) -> usize {
    let delta = dav.sync(&dav.book(), &replica.token, "<d:getetag/>", None).await.multistatus();
    let mut fetch = Vec::new();
    for r in &delta.responses {
        let name = last_segment(&r.href);
        if is_404(r) {
            replica.cards.remove(&name);
        } else if replica.cards.get(&name).map(|(e, _)| e) != r.text(DAV, "getetag").as_ref() {
            fetch.push(r.href.clone());
        }
    }
    if !fetch.is_empty() {
        let ms = dav.report(&dav.book(), "1", &multiget(&fetch)).await.multistatus();
        for r in &ms.responses {
            let name = last_segment(&r.href);
            match (r.text(DAV, "getetag"), r.text(CARD, "address-data")) {
                (Some(etag), Some(data)) => {
                    replica.cards.insert(name, (etag, lf(&data)));
                }
                _ => {
                    replica.cards.remove(&name);
                }
            }
        }
    }
    replica.token = delta.sync_token.expect("sync token");
    delta.responses.len()
}

/// Four clients of one account sync, multiget, create, edit and delete at random against one server for
/// ~15 s. Every acknowledged write goes into a model; at the end each client catches up from its own last
/// token and holds exactly the model's cards (names, ETags, content), and the server's resident memory in
/// the second half grows by less than a generous bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_clients_converge_and_memory_stays_flat() {
    const CLIENTS: usize = 4;
    const RUN: Duration = Duration::from_secs(15);
    let site = Site::new();
    let password = site.add_user("soak");
    let srv = site.start("soak", "warn").await;
    let mut rng = Rng::seeded("soak");
    let model: Arc<Mutex<Model>> = Arc::default();
    let counts: Arc<Mutex<BTreeMap<&'static str, usize>>> = Arc::default();
    let start = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (model, counts, mut rng) = (model.clone(), counts.clone(), rng.fork());
        let dav = site.dav("soak", &password);
        clients.push(tokio::spawn(async move {
            let mut replica = Replica::default();
            pull(&dav, &mut replica).await;
            let mut n = 0;
            while start.elapsed() < RUN {
                n += 1;
                let roll = rng.below(10);
                let pick = |rng: &mut Rng, r: &Replica| {
                    let k = rng.below(r.cards.len() as u64) as usize;
                    r.cards.iter().nth(k).map(|(n, (e, _))| (n.clone(), e.clone()))
                };
                let op = match roll {
                    0..=2 => {
                        pull(&dav, &mut replica).await;
                        "sync+multiget"
                    }
                    3..=5 => {
                        let name = format!("c{c}-{n}.vcf");
                        let body = vcard(&format!("c{c}-{n}"), &format!("Soak {c} {n}"), "EMAIL:soak@example.test\r\n");
                        let r = dav.put(&format!("{}{name}", dav.book()), &body, &[("if-none-match", "*")]).await;
                        assert_eq!(r.status.as_u16(), 201, "create {name}: {}", r.text());
                        let etag = r.header("etag").expect("etag");
                        model.lock().expect("lock").record(&name, "", Some((etag.clone(), body.clone())));
                        replica.cards.insert(name, (etag, lf(&body)));
                        "create"
                    }
                    6..=7 => {
                        let Some((name, etag)) = pick(&mut rng, &replica) else { continue };
                        let uid = name.trim_end_matches(".vcf");
                        let body = vcard(uid, &format!("Edited by {c} at {n}"), &format!("NOTE:edit {c} {n}\r\n"));
                        let r = dav.put(&format!("{}{name}", dav.book()), &body, &[("if-match", &etag)]).await;
                        match r.status.as_u16() {
                            200..=299 => {
                                let new = r.header("etag").expect("etag");
                                model.lock().expect("lock").record(&name, &etag, Some((new.clone(), body.clone())));
                                replica.cards.insert(name, (new, lf(&body)));
                                "edit"
                            }
                            412 | 404 => "edit refused (stale)",
                            other => panic!("edit {name}: {other} {}", r.text()),
                        }
                    }
                    _ => {
                        let Some((name, etag)) = pick(&mut rng, &replica) else { continue };
                        let r = dav.delete(&format!("{}{name}", dav.book()), &[("if-match", &etag)]).await;
                        match r.status.as_u16() {
                            200..=299 => {
                                model.lock().expect("lock").record(&name, &etag, None);
                                replica.cards.remove(&name);
                                "delete"
                            }
                            412 | 404 => "delete refused (stale)",
                            other => panic!("delete {name}: {other} {}", r.text()),
                        }
                    }
                };
                *counts.lock().expect("lock").entry(op).or_default() += 1;
            }
            (dav, replica)
        }));
    }
    tokio::time::sleep(RUN / 2).await;
    let rss_mid = srv.rss_kb();
    let mut finished = Vec::new();
    for c in clients {
        finished.push(c.await.expect("client"));
    }
    let rss_end = srv.rss_kb();

    let want: BTreeMap<String, (String, String)> = {
        let model = model.lock().expect("lock");
        assert!(model.lost.is_empty(), "lost updates: {:?}", model.lost);
        model.current().into_iter().map(|(n, (e, b))| (n, (e, lf(&b)))).collect()
    };
    for (c, (dav, mut replica)) in finished.into_iter().enumerate() {
        pull(&dav, &mut replica).await;
        assert_eq!(
            replica.cards.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "client {c} converged to the model's names"
        );
        assert_eq!(replica.cards, want, "client {c} converged to the model's content");
    }
    let (fresh, _) = listing(&site.dav("soak", &password)).await;
    assert_eq!(fresh, want, "a fresh full sync equals the model");
    let counts = counts.lock().expect("lock").clone();
    let ops: usize = counts.values().sum();
    srv.stop().await;
    site.check();
    // Generous: allocator caches and SQLite page caches may grow a little; a leak per request would not fit.
    let bound = rss_mid + rss_mid / 2 + 32 * 1024;
    assert!(rss_end <= bound, "server memory grew from {rss_mid} KiB to {rss_end} KiB in the second half");
    eprintln!(
        "soak: {CLIENTS} clients, {ops} operations in {:?} ({counts:?}); {} cards at the end, every client \
         converged; VmRSS {rss_mid} KiB at half time -> {rss_end} KiB at the end; 0 lost",
        start.elapsed(),
        want.len()
    );
}

#[tokio::test]
async fn the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let s = TestServer::start().await;
    let mode = std::fs::metadata(&s.config.storage.data_dir).expect("data dir").permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "contacts and password hashes must not be readable by other accounts");
    s.stop().await;
}
