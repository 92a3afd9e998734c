//! Test support: a real kartei server on 127.0.0.1 (random port, temporary data dir, self-signed HTTPS),
//! a DAV client with one helper per verb, and a multistatus reader for assertions.

#![allow(dead_code)]

use kartei::config::{Config, TlsMode};
use kartei::dav::xml::{self, Element};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use std::sync::Arc;
use tempfile::TempDir;

pub const DAV: &str = "DAV:";
pub const CARD: &str = "urn:ietf:params:xml:ns:carddav";
pub const CS: &str = "http://calendarserver.org/ns/";

pub struct TestServer {
    server: Option<kartei::Server>,
    pub dir: TempDir,
    pub base: String,
    pub admin_token: String,
    pub config: Config,
    cert_pem: Vec<u8>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server with the default test config changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".into();
        config.storage.data_dir = dir.path().join("data");
        config.tls.mode = TlsMode::SelfSigned;
        config.auth.login_domain = Some("example.test".into());
        tweak(&mut config);
        let (server, _reload) = kartei::start(config.clone()).await.expect("server starts");
        let cert_pem = if config.tls.mode == TlsMode::Off {
            Vec::new()
        } else {
            std::fs::read(config.storage.data_dir.join("tls/cert.pem")).expect("generated certificate")
        };
        let base = server.url.replace("127.0.0.1", "localhost");
        let admin_token = server.admin_token.clone().expect("first start makes an admin token");
        TestServer { server: Some(server), dir, base, admin_token, config, cert_pem }
    }

    pub fn store(&self) -> Arc<dyn kartei::store::Store> {
        self.server.as_ref().expect("running").store.clone()
    }

    /// Shares `owner`'s book `book` with `sharee` straight in the store; the segment the sharee sees it under.
    pub async fn share(&self, owner: &str, book: &str, sharee: &str, writable: bool) -> String {
        let (store, owner, book, sharee) = (self.store(), owner.to_string(), book.to_string(), sharee.to_string());
        tokio::task::spawn_blocking(move || {
            let book = store.book_in_home(&owner, &book).expect("lookup").expect("book");
            store.share_book(book.id, &sharee, writable).expect("share")
        })
        .await
        .expect("join")
    }

    pub fn app(&self) -> Arc<kartei::App> {
        self.server.as_ref().expect("running").app.clone()
    }

    /// The audit log, as the admin API returns it.
    pub async fn audit(&self) -> serde_json::Value {
        let r = self
            .http()
            .get(format!("{}/admin/v1/audit", self.base))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .expect("audit")
            .bytes()
            .await
            .expect("body");
        serde_json::from_slice(&r).expect("json")
    }

    pub fn http(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if !self.cert_pem.is_empty() {
            b = b.tls_certs_only([reqwest::Certificate::from_pem(&self.cert_pem).expect("pem")]);
        }
        b.build().expect("client")
    }

    /// Creates a user through the same code the CLI uses; returns a client logged in as them.
    pub async fn user(&self, name: &str) -> Dav {
        let store = self.store();
        let config = self.config.clone();
        let n = name.to_string();
        let account =
            tokio::task::spawn_blocking(move || kartei::admin::create_user(store.as_ref(), &config, Some(&n), None))
                .await
                .expect("join")
                .expect("user created");
        Dav {
            http: self.http(),
            base: self.base.clone(),
            user: name.to_string(),
            password: account.password,
            user_agent: None,
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }
}

/// A response, read whole.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    pub fn multistatus(&self) -> Multistatus {
        assert_eq!(self.status.as_u16(), 207, "expected 207, got {}: {}", self.status, self.text());
        let ct = self.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("application/xml"), "multistatus content type: {ct}");
        Multistatus::parse(&self.body)
    }

    /// The precondition element named in a DAV:error body, as `{ns}name`.
    pub fn error_condition(&self) -> String {
        let e = xml::parse(&self.body).unwrap_or_else(|err| panic!("error body is not XML ({err}): {}", self.text()));
        assert!(e.is(DAV, "error"), "not a DAV:error: {}", self.text());
        let c = e.children.iter().find(|c| c.name != "responsedescription").expect("a condition element");
        format!("{{{}}}{}", c.ns, c.name)
    }
}

pub struct Dav {
    pub http: reqwest::Client,
    pub base: String,
    pub user: String,
    pub password: String,
    pub user_agent: Option<String>,
}

impl Dav {
    pub fn home(&self) -> String {
        format!("/dav/addressbooks/{}/", self.user)
    }

    pub fn book(&self) -> String {
        format!("/dav/addressbooks/{}/contacts/", self.user)
    }

    pub fn with_agent(mut self, agent: &str) -> Self {
        self.user_agent = Some(agent.to_string());
        self
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> Resp {
        let url = if path.starts_with("http") { path.to_string() } else { format!("{}{}", self.base, path) };
        let mut req = self
            .http
            .request(Method::from_bytes(method.as_bytes()).expect("method"), url)
            .basic_auth(&self.user, Some(&self.password))
            .body(body);
        if let Some(ua) = &self.user_agent {
            req = req.header("user-agent", ua);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("body").to_vec();
        Resp { status, headers, body }
    }

    pub async fn propfind(&self, path: &str, depth: &str, body: &str) -> Resp {
        self.send(
            "PROPFIND",
            path,
            &[("depth", depth), ("content-type", "application/xml; charset=utf-8")],
            body.to_string(),
        )
        .await
    }

    pub async fn report(&self, path: &str, depth: &str, body: &str) -> Resp {
        self.send(
            "REPORT",
            path,
            &[("depth", depth), ("content-type", "application/xml; charset=utf-8")],
            body.to_string(),
        )
        .await
    }

    pub async fn put(&self, path: &str, card: &str, headers: &[(&str, &str)]) -> Resp {
        let mut h = vec![("content-type", "text/vcard; charset=utf-8")];
        h.extend_from_slice(headers);
        self.send("PUT", path, &h, card.to_string()).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[], Vec::new()).await
    }

    pub async fn delete(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.send("DELETE", path, headers, Vec::new()).await
    }

    /// PUTs a minimal valid card `name` into the default book; returns the ETag.
    pub async fn put_card(&self, name: &str, uid: &str, fn_: &str, extra: &str) -> String {
        let r = self.put(&format!("{}{name}", self.book()), &vcard(uid, fn_, extra), &[]).await;
        assert!(r.status.is_success(), "PUT {name}: {} {}", r.status, r.text());
        r.header("etag").expect("etag on PUT")
    }

    /// sync-collection with a token (empty for initial); returns the multistatus.
    pub async fn sync(&self, path: &str, token: &str, props: &str, limit: Option<usize>) -> Resp {
        let limit = limit.map(|n| format!("<d:limit><d:nresults>{n}</d:nresults></d:limit>")).unwrap_or_default();
        let body = format!(
            r#"<?xml version="1.0" encoding="utf-8"?><d:sync-collection xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:sync-token>{token}</d:sync-token><d:sync-level>1</d:sync-level>{limit}<d:prop>{props}</d:prop></d:sync-collection>"#
        );
        self.report(path, "0", &body).await
    }
}

pub fn vcard(uid: &str, fn_: &str, extra: &str) -> String {
    format!("BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{uid}\r\nFN:{fn_}\r\nN:{fn_};;;;\r\n{extra}END:VCARD\r\n")
}

pub fn vcard4(uid: &str, fn_: &str, extra: &str) -> String {
    format!("BEGIN:VCARD\r\nVERSION:4.0\r\nUID:{uid}\r\nFN:{fn_}\r\n{extra}END:VCARD\r\n")
}

/// One `<d:response>`.
#[derive(Debug)]
pub struct Response {
    pub href: String,
    pub status: Option<String>,
    pub propstats: Vec<(String, Vec<Element>)>,
    pub error: Option<Element>,
}

impl Response {
    /// A property from the 200 propstat.
    pub fn prop(&self, ns: &str, name: &str) -> Option<&Element> {
        self.propstats
            .iter()
            .filter(|(s, _)| s == "HTTP/1.1 200 OK")
            .flat_map(|(_, p)| p.iter())
            .find(|e| e.is(ns, name))
    }

    pub fn text(&self, ns: &str, name: &str) -> Option<String> {
        self.prop(ns, name).map(|e| e.text.clone())
    }

    /// Names of properties reported with `status`.
    pub fn with_status(&self, status: &str) -> Vec<String> {
        self.propstats.iter().filter(|(s, _)| s == status).flat_map(|(_, p)| p.iter().map(|e| e.name.clone())).collect()
    }

    pub fn href_in(&self, ns: &str, name: &str) -> Option<String> {
        self.prop(ns, name).and_then(|e| e.child(DAV, "href")).map(|h| h.text.clone())
    }
}

#[derive(Debug)]
pub struct Multistatus {
    pub responses: Vec<Response>,
    pub sync_token: Option<String>,
}

impl Multistatus {
    pub fn parse(body: &[u8]) -> Multistatus {
        let root = xml::parse(body)
            .unwrap_or_else(|e| panic!("multistatus is not XML ({e}): {}", String::from_utf8_lossy(body)));
        assert!(root.is(DAV, "multistatus"), "root is {}", root.name);
        let responses = root
            .children_named(DAV, "response")
            .map(|r| Response {
                href: r.child(DAV, "href").map(|h| h.text.clone()).unwrap_or_default(),
                status: r.child(DAV, "status").map(|s| s.text.clone()),
                propstats: r
                    .children_named(DAV, "propstat")
                    .map(|ps| {
                        let status = ps.child(DAV, "status").map(|s| s.text.clone()).unwrap_or_default();
                        let props = ps.child(DAV, "prop").map(|p| p.children.clone()).unwrap_or_default();
                        (status, props)
                    })
                    .collect(),
                error: r.child(DAV, "error").cloned(),
            })
            .collect();
        Multistatus { responses, sync_token: root.child(DAV, "sync-token").map(|t| t.text.clone()) }
    }

    pub fn get(&self, href: &str) -> &Response {
        self.responses.iter().find(|r| r.href == href).unwrap_or_else(|| {
            panic!("no response for {href}; have {:?}", self.responses.iter().map(|r| &r.href).collect::<Vec<_>>())
        })
    }

    pub fn hrefs(&self) -> Vec<String> {
        let mut h: Vec<String> = self.responses.iter().map(|r| r.href.clone()).collect();
        h.sort();
        h
    }
}
