//! The per-user WebDAV file area at `/dav/files/{user}/` (RFC 4918 class 1): documents that belong to
//! contacts, such as contracts. It lives outside the address-book home so contact clients never see it, and
//! a card points to a document with `X-KARTEI-DOCUMENT:<path below /dav/files/{user}/>`.

use std::borrow::Cow;

use crate::app::{AuthUser, Ctx};
use crate::body::RequestBody;
use crate::body::{self, Body, stream_body};
use crate::dav::request::{PatchOp, PropFind, RequestedProp, parse_propfind, parse_proppatch};
use crate::dav::response::{Multistatus, Prop, Value};
use crate::dav::{Depth, NS_DAV, PropName};
use crate::error::{Condition, DavError, DavResult};
use crate::methods::conditional::{Conditions, State, Verdict};
use crate::methods::{empty_response, multistatus_response, not_modified, proppatch_answer, read_body, wants_minimal};
use crate::router::{self, Route};
use crate::store::{self, BookPatch, DeadProperty, FileEntry, PutOutcome, Transfer};
use http_body_util::{BodyExt, Limited};
use hyper::{Response, StatusCode, header};

pub const DAV_CLASSES: &str = "1, 3";
pub const ALLOW: &str = "OPTIONS, GET, HEAD, PUT, DELETE, MKCOL, COPY, MOVE, PROPFIND, PROPPATCH";

fn href(user: &str, path: &str, is_collection: bool) -> String {
    let mut h = format!("/dav/files/{}/", router::encode(user));
    if !path.is_empty() {
        h.push_str(&path.split('/').map(router::encode).collect::<Vec<_>>().join("/"));
        if is_collection {
            h.push('/');
        }
    }
    h
}

pub fn options() -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("DAV", DAV_CLASSES)
        .header(header::ALLOW, ALLOW)
        .header(header::CONTENT_LENGTH, "0")
        .body(body::empty())
        .unwrap_or_else(|_| Response::new(body::empty()))
}

/// Entry point from the pipeline: the path is already decoded and the user authenticated.
pub async fn handle(
    ctx: Ctx,
    owner: String,
    segments: Vec<String>,
    incoming: RequestBody,
) -> DavResult<Response<Body>> {
    if owner != ctx.user.username || ctx.user.scope.is_some() {
        return Err(DavError::not_found());
    }
    let path = segments.join("/");
    match ctx.method.as_str() {
        "GET" | "HEAD" => get(&ctx, &path).await.map(served_inert),
        "PUT" => put(&ctx, &path, incoming).await,
        "DELETE" => delete(&ctx, &path).await,
        "MKCOL" => mkcol(&ctx, &path, incoming).await,
        "COPY" | "MOVE" => transfer(&ctx, &path).await,
        "PROPFIND" => propfind(&ctx, &path, incoming).await,
        "PROPPATCH" => proppatch(&ctx, &path, incoming).await,
        _ => Err(DavError::method_not_allowed(ALLOW)),
    }
}

async fn entry(ctx: &Ctx, path: &str) -> DavResult<FileEntry> {
    let (owner, p) = (ctx.user.username.clone(), path.to_string());
    store::blocking(ctx.store(), move |s| s.file(&owner, &p)).await?.ok_or_else(DavError::not_found)
}

fn state(file: &FileEntry) -> State<'_> {
    // A folder's own time does not move when what is in it changes, so it cannot vouch for its listing.
    let modified = if file.is_collection { None } else { Some(file.modified_at) };
    State { etag: file.etag.as_deref(), modified }
}

/// Checks the conditional headers (RFC 9110 §13, RFC 4918 §10.4) against the file at `path`, or nothing.
async fn check_conditions(ctx: &Ctx, file: Option<&FileEntry>) -> DavResult<()> {
    Conditions::parse(&ctx.headers)?.check(ctx, file.map(state)).await
}

async fn get(ctx: &Ctx, path: &str) -> DavResult<Response<Body>> {
    let file = entry(ctx, path).await?;
    if Conditions::parse(&ctx.headers)?.check_read(ctx, Some(state(&file))).await? == Verdict::NotModified {
        return Ok(not_modified(file.etag.as_deref(), Some(file.modified_at), None));
    }
    let head = ctx.method == "HEAD";
    if file.is_collection {
        let (owner, p) = (ctx.user.username.clone(), path.to_string());
        let children = store::blocking(ctx.store(), move |s| s.file_children(&owner, &p)).await?;
        let listing: String = children
            .iter()
            .map(|c| {
                format!("{}{}\n", c.path.rsplit('/').next().unwrap_or(&c.path), if c.is_collection { "/" } else { "" })
            })
            .collect();
        let response =
            Response::builder().status(StatusCode::OK).header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
        return response
            .body(if head { body::empty() } else { body::full(listing) })
            .map_err(|e| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
    }
    let (owner, p) = (ctx.user.username.clone(), path.to_string());
    let content = store::blocking(ctx.store(), move |s| s.file_content(&owner, &p)).await?.unwrap_or_default();
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, file.content_type.clone().unwrap_or_else(|| "application/octet-stream".into()))
        .header(header::CONTENT_LENGTH, content.len())
        .header(header::LAST_MODIFIED, crate::dates::format_http_date(file.modified_at));
    if let Some(etag) = &file.etag {
        response = response.header(header::ETAG, format!("\"{etag}\""));
    }
    response
        .body(if head { body::empty() } else { body::full(content) })
        .map_err(|e| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn put(ctx: &Ctx, path: &str, incoming: RequestBody) -> DavResult<Response<Body>> {
    if path.is_empty() {
        return Err(DavError::method_not_allowed(ALLOW));
    }
    let conditions = Conditions::parse(&ctx.headers)?;
    let pre = if conditions.needs_state() {
        let (owner, p) = (ctx.user.username.clone(), path.to_string());
        let file = store::point_read(ctx.store(), move |s| s.file(&owner, &p)).await?;
        conditions.check(ctx, file.as_ref().map(state)).await?;
        Conditions::pin(file.as_ref().map(state))
    } else {
        conditions.precondition()
    };
    let limit = ctx.app.config.limits.max_file_size;
    let too_large = || DavError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("files may be at most {limit} bytes"));
    let declared =
        ctx.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let content = match Limited::new(incoming, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => return Err(DavError::bad_request(format!("could not read the request body: {e}"))),
    };
    let content_type = ctx
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let (owner, p) = (ctx.user.username.clone(), path.to_string());
    let outcome = store::blocking(ctx.store(), move |s| s.put_file(&owner, &p, &content, &content_type, &pre)).await?;
    let (status, etag) = match outcome {
        PutOutcome::Created { etag } => (StatusCode::CREATED, etag),
        PutOutcome::Updated { etag } => (StatusCode::NO_CONTENT, etag),
    };
    let mut response = empty_response(status);
    if let Ok(v) = format!("\"{etag}\"").parse() {
        response.headers_mut().insert(header::ETAG, v);
    }
    Ok(response)
}

async fn delete(ctx: &Ctx, path: &str) -> DavResult<Response<Body>> {
    if path.is_empty() {
        return Err(DavError::forbidden("the top folder of the file area cannot be deleted"));
    }
    let existing = entry(ctx, path).await?;
    check_conditions(ctx, Some(&existing)).await?;
    let (owner, p) = (ctx.user.username.clone(), path.to_string());
    store::blocking(ctx.store(), move |s| s.delete_file(&owner, &p)).await?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

async fn mkcol(ctx: &Ctx, path: &str, incoming: RequestBody) -> DavResult<Response<Body>> {
    let raw = read_body(&ctx.headers, incoming, ctx.app.config.limits.max_xml_body).await?;
    if !raw.is_empty() {
        // RFC 4918 §9.3: a body we do not understand is 415.
        return Err(DavError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "MKCOL with a body is not supported in the file area",
        ));
    }
    let (owner, p) = (ctx.user.username.clone(), path.to_string());
    let existing = store::point_read(ctx.store(), move |s| s.file(&owner, &p)).await?;
    check_conditions(ctx, existing.as_ref()).await?;
    let (owner, p) = (ctx.user.username.clone(), path.to_string());
    match store::blocking(ctx.store(), move |s| s.make_folder(&owner, &p)).await {
        Ok(()) => Ok(empty_response(StatusCode::CREATED)),
        Err(store::Error::AlreadyExists) => {
            Err(DavError::method_not_allowed(ALLOW).with_condition(Condition::ResourceMustBeNull))
        }
        Err(e) => Err(e.into()),
    }
}

async fn transfer(ctx: &Ctx, path: &str) -> DavResult<Response<Body>> {
    if path.is_empty() {
        return Err(DavError::forbidden("the top folder cannot be copied or moved"));
    }
    let segments = ctx.destination()?;
    let raw = format!("/{}", segments.iter().map(|s| router::encode(s)).collect::<Vec<_>>().join("/"));
    let to = match router::parse(&raw) {
        Ok(Route::Files { user, path }) if user == ctx.user.username => path.join("/"),
        Ok(Route::Files { .. }) => return Err(DavError::no_privilege("another user's file area is not writable")),
        _ => return Err(DavError::forbidden("the Destination must be inside your own file area")),
    };
    if to.is_empty() {
        return Err(DavError::forbidden("the top folder cannot be overwritten"));
    }
    let depth = ctx.headers.get("depth").and_then(|v| v.to_str().ok());
    let how = match (ctx.method.as_str(), Depth::parse(depth, Depth::Infinity)) {
        ("MOVE", Some(Depth::Infinity)) => Transfer::Move,
        ("COPY", Some(Depth::Infinity)) => Transfer::Copy { recursive: true },
        ("COPY", Some(Depth::Zero)) => Transfer::Copy { recursive: false },
        _ => return Err(DavError::bad_request("Depth must be infinity (or 0 for COPY)")),
    };
    let overwrite =
        !ctx.headers.get("overwrite").and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim().eq_ignore_ascii_case("F"));
    // The conditions are about the source (RFC 4918 §9.8, §10.4); a tagged If list may name the destination.
    check_conditions(ctx, Some(&entry(ctx, path).await?)).await?;
    let (owner, from) = (ctx.user.username.clone(), path.to_string());
    let outcome = store::blocking(ctx.store(), move |s| s.transfer_file(&owner, &from, &to, how, overwrite)).await?;
    Ok(empty_response(match outcome {
        PutOutcome::Created { .. } => StatusCode::CREATED,
        PutOutcome::Updated { .. } => StatusCode::NO_CONTENT,
    }))
}

fn live_value(user: &AuthUser, file: &FileEntry, name: &PropName) -> Option<Value<'static>> {
    if name.ns != NS_DAV {
        return None;
    }
    Some(match name.name.as_str() {
        "resourcetype" if file.is_collection => Value::Xml("<d:collection/>".into()),
        "resourcetype" => Value::Empty,
        "displayname" => Value::Text(file.path.rsplit('/').next().unwrap_or_default().to_string()),
        "getcontentlength" if !file.is_collection => Value::Text(file.size.to_string()),
        "getcontenttype" if !file.is_collection => Value::Text(file.content_type.clone()?),
        "getetag" if !file.is_collection => Value::Text(format!("\"{}\"", file.etag.clone()?)),
        "getlastmodified" => Value::Text(crate::dates::format_http_date(file.modified_at)),
        "current-user-principal" => Value::Hrefs(vec![router::principal_href(&user.username)]),
        "supportedlock" | "lockdiscovery" => Value::Empty,
        _ => return None,
    })
}

const LIVE: &[&str] =
    &["resourcetype", "displayname", "getcontentlength", "getcontenttype", "getetag", "getlastmodified"];

fn answer<'r>(
    user: &AuthUser,
    file: &FileEntry,
    dead: &[DeadProperty],
    request: &'r PropFind,
) -> (Vec<Prop<'r>>, Vec<PropName>) {
    let lookup = |req: &RequestedProp| {
        live_value(user, file, &req.name).or_else(|| {
            dead.iter()
                .find(|d| d.namespace == req.name.ns && d.name == req.name.name)
                .map(|d| Value::Raw(d.xml.clone()))
        })
    };
    let all_names = || {
        let mut names: Vec<PropName> = LIVE.iter().map(|n| PropName::new(NS_DAV, n)).collect();
        names.extend(dead.iter().map(|d| PropName::new(&d.namespace, &d.name)));
        names
    };
    let mut found = Vec::new();
    let mut missing = Vec::new();
    match request {
        PropFind::PropName => {
            for name in all_names() {
                if live_value(user, file, &name).is_some() || name.ns != NS_DAV {
                    found.push(Prop { name: Cow::Owned(name), value: Value::Empty });
                }
            }
        }
        PropFind::AllProp { include } => {
            let mut asked: Vec<RequestedProp> =
                all_names().into_iter().map(|name| RequestedProp { name, address_data: None }).collect();
            asked.extend(include.iter().cloned());
            for req in &asked {
                if let Some(value) = lookup(req)
                    && !found.iter().any(|p: &Prop| *p.name == req.name)
                {
                    found.push(Prop { name: Cow::Owned(req.name.clone()), value });
                }
            }
        }
        PropFind::Prop(props) => {
            for req in props {
                match lookup(req) {
                    Some(value) => found.push(Prop { name: Cow::Borrowed(&req.name), value }),
                    None => missing.push(req.name.clone()),
                }
            }
        }
    }
    (found, missing)
}

async fn propfind(ctx: &Ctx, path: &str, incoming: RequestBody) -> DavResult<Response<Body>> {
    let depth_header = ctx.headers.get("depth").and_then(|v| v.to_str().ok());
    let depth = Depth::parse(depth_header, Depth::Infinity)
        .ok_or_else(|| DavError::bad_request("Depth must be 0, 1 or infinity"))?;
    if depth == Depth::Infinity {
        return Err(DavError::new(StatusCode::FORBIDDEN, "Depth: infinity is not supported on PROPFIND")
            .with_condition(Condition::PropfindFiniteDepth));
    }
    let raw = read_body(&ctx.headers, incoming, ctx.app.config.limits.max_xml_body).await?;
    let request = parse_propfind(&raw)?;
    let root = entry(ctx, path).await?;
    check_conditions(ctx, Some(&root)).await?;
    let store = ctx.store().clone();
    let user = ctx.user.clone();
    let minimal = wants_minimal(&ctx.headers);
    let coding = body::Coding::negotiate(&ctx.headers);
    let slot = ctx.app.streaming.slot(&ctx.user.username).await?;
    let body = stream_body(&ctx.app.streaming, slot, coding, move |out| {
        let err = |e: store::Error| std::io::Error::other(e.to_string());
        let mut ms = Multistatus::begin(out)?;
        let mut entries = vec![root.clone()];
        if depth == Depth::One && root.is_collection {
            entries.extend(store.file_children(&user.username, &root.path).map_err(err)?);
        }
        for file in entries {
            let dead = if file.path.is_empty() {
                Vec::new()
            } else {
                store.file_properties(&user.username, &file.path).map_err(err)?
            };
            let (found, missing) = answer(&user, &file, &dead, &request);
            let others = if minimal { Vec::new() } else { vec![(404u16, missing)] };
            ms.response(&href(&user.username, &file.path, file.is_collection), &found, &others)?;
        }
        ms.finish()?;
        Ok(())
    });
    multistatus_response(body, coding)
}

async fn proppatch(ctx: &Ctx, path: &str, incoming: RequestBody) -> DavResult<Response<Body>> {
    let raw = read_body(&ctx.headers, incoming, ctx.app.config.limits.max_xml_body).await?;
    let ops = parse_proppatch(&raw)?;
    let file = entry(ctx, path).await?;
    if file.path.is_empty() {
        return Err(DavError::forbidden("properties of the top folder cannot be changed"));
    }
    check_conditions(ctx, Some(&file)).await?;
    let mut patches = Vec::new();
    let mut names = Vec::new();
    let mut refused = Vec::new();
    for op in &ops {
        let name = match op {
            PatchOp::Set(e) => PropName::new(&e.ns, &e.name),
            PatchOp::Remove(n) => n.clone(),
        };
        // Every DAV: property here is live (protected); everything else is a dead property.
        if name.ns == NS_DAV {
            refused.push(name);
            continue;
        }
        patches.push(match op {
            PatchOp::Set(e) => {
                BookPatch::SetDead(DeadProperty { namespace: e.ns.to_string(), name: e.name.clone(), xml: e.to_xml() })
            }
            PatchOp::Remove(n) => BookPatch::RemoveDead { namespace: n.ns.clone(), name: n.name.clone() },
        });
        names.push(name);
    }
    if refused.is_empty() {
        let (owner, p) = (ctx.user.username.clone(), path.to_string());
        store::blocking(ctx.store(), move |s| s.patch_file(&owner, &p, &patches)).await?;
    }
    proppatch_answer(ctx, href(&ctx.user.username, path, file.is_collection), names, refused).await
}

/// A stored document is served as data, never as a page of kartei's origin: the uploader chose its
/// Content-Type, and an HTML or SVG file from a third party would otherwise run its script with the user's
/// cached credentials. `sandbox` stops scripts wherever it opens; what a browser would render itself
/// (anything but plain images, PDF and text) is offered as a download.
fn served_inert(mut response: Response<Body>) -> Response<Body> {
    const SHOWN: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain"];
    let headers = response.headers_mut();
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    headers.insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static("sandbox"));
    if !SHOWN.contains(&media_type.as_str()) {
        headers.insert(header::CONTENT_DISPOSITION, header::HeaderValue::from_static("attachment"));
    }
    response
}
