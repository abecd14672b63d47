//! `--http ADDR:PORT`: the latest reports served while leakbpf runs, for the tools that
//! scrape them: `/metrics` (Prometheus), `/debug/pprof/heap` (Go's net/http/pprof path:
//! go tool pprof, Parca, Grafana Alloy), `/flamegraph.svg`, `/report.json`.
//!
//! The server runs on the agent's own runtime (hyper, HTTP/1.1), beside the event loop:
//! requests are answered whenever the loop waits, from the snapshots it published last,
//! and change nothing. The port is bound before anything is attached, so a port in use
//! costs nothing.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Bytes,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{
    output::{
        Format,
        metrics::{self, AgentUsage},
    },
    snapshot::Snapshot,
};

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send its request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The paths served, with what each is.
const PATHS: &[(&str, &str)] = &[
    ("/metrics", "Prometheus metrics"),
    (
        "/debug/pprof/heap",
        "the heap profile, pprof (gzipped protobuf)",
    ),
    ("/flamegraph.svg", "a flame graph of the outstanding bytes"),
    (
        "/report.json",
        "the latest report of each process, as JSON lines",
    ),
];

/// `--http`'s address: `ADDR:PORT` as given (`0.0.0.0:9100`, `[::1]:9100`), or a bare
/// `:PORT` or `PORT` on the loopback address.
pub fn address(text: &str) -> Result<SocketAddr, String> {
    let port = text.strip_prefix(':').unwrap_or(text);
    if let Ok(port) = port.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    text.parse().map_err(|_| {
        format!("{text:?} is not [ADDRESS:]PORT, such as 9100, :9100, 127.0.0.1:9100 or [::1]:9100")
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address} (--http)")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve --http")]
    Serve(#[from] std::io::Error),
}

/// Listens on `address`; the port is taken from then on.
pub fn bind(address: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
    let bind = || {
        let listener = std::net::TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    };
    bind().map_err(|source| ServeError::Bind { address, source })
}

/// The latest report of each process, as the event loop publishes them.
#[derive(Clone, Default)]
pub struct Latest(Arc<Mutex<BTreeMap<u32, Arc<Snapshot>>>>);

impl Latest {
    /// An interval's reports: they replace the previous interval's.
    pub fn replace(&self, snapshots: Vec<Snapshot>) {
        let round = snapshots
            .into_iter()
            .map(|s| (s.pid, Arc::new(s)))
            .collect();
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = round;
    }

    /// One process's report (its final one, at its exit).
    pub fn update(&self, snapshot: Snapshot) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(snapshot.pid, Arc::new(snapshot));
    }

    fn snapshots(&self) -> Vec<Arc<Snapshot>> {
        let latest = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        latest.values().cloned().collect()
    }
}

/// What is served, and how.
#[derive(Clone)]
pub struct Served {
    pub latest: Latest,
    /// Between reports: when the first is due, for clients that come early.
    pub interval: Duration,
    /// Documents show allocation plumbing frames too (`--show-alloc-frames`).
    pub all_frames: bool,
}

/// Serves `served` on `listener` from now on, on the current tokio runtime, until the
/// runtime ends.
pub fn serve(listener: std::net::TcpListener, served: Served) -> Result<(), ServeError> {
    let listener = TcpListener::from_std(listener)?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors, say: wait for connections to close.
                    log::warn!("--http: cannot accept a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let served = served.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let response = served.respond(request.method(), request.uri().path());
                    async move { Ok::<_, Infallible>(response) }
                });
                let served = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(err) = served {
                    log::info!("--http: a connection ended with an error: {err}");
                }
                drop(slot);
            });
        }
    });
    Ok(())
}

impl Served {
    /// The answer to `method path`: only GET (and HEAD) of the paths served.
    fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let known = path == "/" || PATHS.iter().any(|(served, _)| *served == path);
        if !known {
            return text(
                StatusCode::NOT_FOUND,
                format!("{path} is not served here; see /\n"),
            );
        }
        if method != Method::GET && method != Method::HEAD {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} answers GET only\n"),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let snapshots = self.latest.snapshots();
        let snapshots: Vec<&Snapshot> = snapshots.iter().map(Arc::as_ref).collect();
        let (format, content_type) = match path {
            "/" => {
                let mut index = String::from("leakbpf serves:\n");
                for (path, what) in PATHS {
                    index.push_str(&format!("  {path}  {what}\n"));
                }
                return text(StatusCode::OK, index);
            }
            "/metrics" => {
                let body = metrics::metrics(&snapshots, AgentUsage::now());
                return response(StatusCode::OK, metrics::CONTENT_TYPE, body.into_bytes());
            }
            "/debug/pprof/heap" => (Format::Pprof, "application/octet-stream"),
            "/flamegraph.svg" => (Format::Svg, "image/svg+xml"),
            _ => (Format::Json, "application/x-ndjson"),
        };
        if snapshots.is_empty() {
            let mut response = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no report yet: the first comes one interval after attaching\n".to_owned(),
            );
            if let Ok(seconds) = HeaderValue::try_from(self.interval.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, seconds);
            }
            return response;
        }
        let mut body = Vec::new();
        match format
            .renderer(self.all_frames)
            .document(&snapshots, &mut body)
        {
            Ok(()) => response(StatusCode::OK, content_type, body),
            Err(err) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot render {path}: {err}\n"),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body.into_bytes())
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::snapshot::example;

    #[test]
    fn a_bare_port_is_loopback_and_an_address_is_used_as_given() {
        assert_eq!(address("9100").unwrap().to_string(), "127.0.0.1:9100");
        assert_eq!(address(":9100").unwrap().to_string(), "127.0.0.1:9100");
        assert_eq!(address("0.0.0.0:9100").unwrap().to_string(), "0.0.0.0:9100");
        assert_eq!(address("[::1]:9100").unwrap().to_string(), "[::1]:9100");
        for bad in ["", "host:9100", "127.0.0.1", "70000", ":x"] {
            assert!(address(bad).is_err(), "{bad:?} was accepted");
        }
    }

    fn body(response: Response<Full<Bytes>>) -> Vec<u8> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let collected = runtime.block_on(response.into_body().collect()).unwrap();
        collected.to_bytes().to_vec()
    }

    #[test]
    fn answers_get_of_what_it_serves_only() {
        let served = Served {
            latest: Latest::default(),
            interval: Duration::from_secs(5),
            all_frames: false,
        };
        let latest = &served.latest;
        let get = |path| served.respond(&Method::GET, path);
        assert_eq!(get("/nowhere").status(), StatusCode::NOT_FOUND);
        let post = served.respond(&Method::POST, "/metrics");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
        // Before the first report: metrics of the agent, and nothing else yet.
        assert_eq!(get("/metrics").status(), StatusCode::OK);
        let early = get("/report.json");
        assert_eq!(early.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(early.headers()[header::RETRY_AFTER], "5");

        latest.replace(vec![example()]);
        let report = get("/report.json");
        assert_eq!(report.status(), StatusCode::OK);
        let line = String::from_utf8(body(report)).unwrap();
        assert_eq!(line, serde_json::to_string(&example()).unwrap() + "\n");
        let profile = get("/debug/pprof/heap");
        assert_eq!(
            profile.headers()[header::CONTENT_TYPE],
            "application/octet-stream"
        );
        assert_eq!(body(profile)[..2], [0x1f, 0x8b], "gzipped");
        let svg = body(get("/flamegraph.svg"));
        assert!(svg.starts_with(b"<?xml"));
        let metrics = String::from_utf8(body(get("/metrics"))).unwrap();
        assert!(
            metrics.contains(r#"leakbpf_outstanding_bytes{pid="42",command="chat_server"} 368"#),
            "{metrics}"
        );
    }

    #[test]
    fn a_process_s_final_report_replaces_its_last_and_an_interval_replaces_all() {
        let latest = Latest::default();
        let mut other = example();
        other.pid = 43;
        latest.replace(vec![example(), other]);
        let mut last = example();
        last.report = 2;
        latest.update(last);
        let reports: Vec<(u32, u64)> = latest
            .snapshots()
            .iter()
            .map(|s| (s.pid, s.report))
            .collect();
        assert_eq!(reports, [(42, 2), (43, 1)]);
        latest.replace(vec![example()]);
        assert_eq!(latest.snapshots().len(), 1);
    }
}
