//! The connection layer: accept, TLS handshake, HTTP/1.1 and HTTP/2, connection and time limits, graceful
//! shutdown. It knows nothing about DAV: every request goes to `App::handle`.

use crate::app::App;
use crate::body::Body;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = app.config.limits.clone();
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Covers both a slow request head (slowloris) and an idle keep-alive connection.
        .header_read_timeout(Duration::from_secs(limits.idle_timeout_secs.max(1)))
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            _ = shutdown.changed() => break,
            permit = connections.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let builder = builder.clone();
        let request_timeout = Duration::from_secs(limits.request_timeout_secs.max(1));
        let handshake_timeout = Duration::from_secs(limits.idle_timeout_secs.clamp(1, 30));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let app = app.clone();
                async move {
                    let response = match tokio::time::timeout(request_timeout, app.handle(req, peer)).await {
                        Ok(r) => r,
                        Err(_) => timeout_response(),
                    };
                    Ok::<Response<Body>, Infallible>(response)
                }
            });
            match tls {
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        let conn = builder.serve_connection(TokioIo::new(tls_stream), service);
                        if let Err(e) = watcher.watch(conn.into_owned()).await {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                }
            }
        });
    }
    drop(listener);
    // Finish in-flight requests, but do not wait forever for idle keep-alive connections.
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await.is_err() {
        tracing::warn!("some connections did not finish within 10 s of shutdown");
    }
}

fn timeout_response() -> Response<Body> {
    let mut r = Response::new(crate::body::full("the request took too long\n"));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r
}
