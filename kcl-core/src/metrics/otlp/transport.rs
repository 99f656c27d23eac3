//! The exporter's HTTP transport: one `POST` of a protobuf body per request over hyper's
//! HTTP/1.1 client, on a connection of its own (one request per export interval and batch: a
//! pool would keep idle connections for nothing), over TLS for `https://` endpoints with the
//! `otlp-https` feature (rustls with aws-lc-rs, the TLS stack of the AWS SDK's default client,
//! and the system's root certificates plus `OtlpConfig::certificate`).

use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{proto, OtlpConfig, OtlpError, PostError, PostFuture, PostMetrics, METRICS_PATH};

/// Plain TCP, or TLS to the endpoint's host.
enum Security {
    Plain,
    #[cfg(feature = "otlp-https")]
    Tls {
        connector: tokio_rustls::TlsConnector,
        server_name: rustls::pki_types::ServerName<'static>,
    },
}

/// OTLP/HTTP to one endpoint.
pub(super) struct HttpSink {
    uri: hyper::Uri,
    authority: String,
    host: String,
    port: u16,
    security: Security,
    headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    timeout: Duration,
}

impl HttpSink {
    pub(super) fn new(config: &OtlpConfig) -> Result<Self, OtlpError> {
        let invalid = |reason: &str| OtlpError::Endpoint {
            endpoint: config.endpoint.clone(),
            reason: reason.to_owned(),
        };
        let uri: hyper::Uri = config
            .endpoint
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let (security, default_port) =
            match uri.scheme_str() {
                Some("http") => (Security::Plain, 80),
                #[cfg(feature = "otlp-https")]
                Some("https") => (tls(config, &host).map_err(|reason| invalid(&reason))?, 443),
                #[cfg(not(feature = "otlp-https"))]
                Some("https") => return Err(invalid(
                    "https needs kcl-core's otlp-https feature (or export to a collector or agent over http)",
                )),
                _ => return Err(invalid("expected http://host[:port][/path] or https://...")),
            };
        let mut headers = Vec::new();
        for (name, value) in &config.headers {
            let name = hyper::header::HeaderName::try_from(name.as_str())
                .map_err(|e| invalid(&format!("header {name:?}: {e}")))?;
            let value = hyper::header::HeaderValue::try_from(value.as_str())
                .map_err(|e| invalid(&format!("header {name}: {e}")))?;
            headers.push((name, value));
        }
        Ok(Self {
            port: authority.port_u16().unwrap_or(default_port),
            authority: authority.to_string(),
            host,
            uri,
            security,
            headers,
            timeout: config.timeout,
        })
    }

    async fn send(&self, body: Vec<u8>) -> Result<(), PostError> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| transient(format!("connecting to {}: {e}", self.authority)))?;
        match &self.security {
            Security::Plain => self.exchange(stream, body).await,
            #[cfg(feature = "otlp-https")]
            Security::Tls {
                connector,
                server_name,
            } => {
                let stream = connector
                    .connect(server_name.clone(), stream)
                    .await
                    .map_err(|e| transient(format!("TLS with {}: {e}", self.authority)))?;
                self.exchange(stream, body).await
            }
        }
    }

    /// The request and its answer over a connected stream.
    async fn exchange<S>(&self, stream: S, body: Vec<u8>) -> Result<(), PostError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| transient(format!("HTTP handshake: {e}")))?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let path = self.uri.path_and_query().map_or(METRICS_PATH, |p| p.as_str());
        let mut request = hyper::Request::post(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
            .header(
                hyper::header::USER_AGENT,
                concat!("kcl-core/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| PostError {
                retryable: false,
                message: format!("building the request: {e}"),
            })?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| transient(format!("sending the request: {e}")))?;
            let status = response.status();
            // The answer is small (a partial-success message or an error status); read at most
            // 64 KiB of it.
            let body = http_body_util::Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if status.is_success() {
                if let Ok(answer) = <proto::ExportMetricsServiceResponse as prost::Message>::decode(body) {
                    if let Some(partial) = answer.partial_success {
                        if partial.rejected_data_points > 0 {
                            tracing::warn!(
                                rejected = partial.rejected_data_points,
                                message = %partial.error_message,
                                "the OTLP receiver rejected some data points"
                            );
                        }
                    }
                }
                return Ok(());
            }
            let retryable = matches!(status.as_u16(), 429 | 502 | 503 | 504);
            Err(PostError {
                retryable,
                message: format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
            })
        }
        .await;
        connection.abort();
        result
    }
}

fn transient(message: String) -> PostError {
    PostError {
        retryable: true,
        message,
    }
}

/// The TLS set-up of an `https://` endpoint: the system's roots and the configured ones.
#[cfg(feature = "otlp-https")]
fn tls(config: &OtlpConfig, host: &str) -> Result<Security, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;

    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "a system root certificate could not be loaded");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = &config.certificate {
        let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| format!("certificate file {}: {e}", path.display()))?;
        if certificates.is_empty() {
            return Err(format!("certificate file {}: no certificate", path.display()));
        }
        roots.add_parsable_certificates(certificates);
    }
    if roots.is_empty() {
        return Err("no root certificate to verify the endpoint with (none in the system's store, no certificate file)".to_owned());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = ServerName::try_from(host.to_owned()).map_err(|e| format!("host {host:?}: {e}"))?;
    Ok(Security::Tls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        server_name,
    })
}

impl PostMetrics for HttpSink {
    fn post(&self, request: proto::ExportMetricsServiceRequest) -> PostFuture<'_> {
        Box::pin(async move {
            let body = prost::Message::encode_to_vec(&request);
            match tokio::time::timeout(self.timeout, self.send(body)).await {
                Ok(result) => result,
                Err(_) => Err(PostError {
                    retryable: true,
                    message: format!("no answer within {:?}", self.timeout),
                }),
            }
        })
    }
}
