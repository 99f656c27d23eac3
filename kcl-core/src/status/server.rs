//! The status page over HTTP/1.1 (hyper): `/` is the HTML page, `/status.json` the JSON.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, Instrument};

use super::StatusSource;

/// A running status server; stopped by [`StatusServer::shutdown`] or when dropped.
#[derive(Debug)]
pub struct StatusServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl StatusServer {
    /// The address it listens on (useful when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = (&mut { self }.task).await;
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Binds `addr` and serves the worker's status page (`/`) and `/status.json` until the returned
/// server is shut down or dropped.
pub async fn serve(source: StatusSource, addr: SocketAddr) -> std::io::Result<StatusServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(false);
    let span = tracing::info_span!("status_server", %addr);
    let task = tokio::spawn(
        async move {
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            debug!(error = %e, "accepting a status connection failed");
                            continue;
                        }
                    },
                    _ = stopped.changed() => return,
                };
                let source = source.clone();
                let mut conn_stopped = stopped.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let source = source.clone();
                        async move { Ok::<_, Infallible>(respond(&source, &req)) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        result = conn.as_mut() => {
                            if let Err(e) = result {
                                debug!(%peer, error = %e, "status connection ended with an error");
                            }
                        }
                        _ = conn_stopped.changed() => {}
                    }
                });
            }
        }
        .instrument(span),
    );
    Ok(StatusServer { addr, stop, task })
}

fn respond(source: &StatusSource, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        r.headers_mut().insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("no-store"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/" | "/index.html" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            source.snapshot().to_html(),
        ),
        "/status.json" => reply(StatusCode::OK, "application/json", source.snapshot().to_json()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try / or /status.json\n".into(),
        ),
    }
}
