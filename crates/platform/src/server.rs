//! The HTTP server every program runs: hyper's HTTP/1 with the limits a public port needs.
//! A client has [`Limits::header_read_timeout`] to send a request's headers, counted from
//! when the connection opens or falls idle after a response, so a connection that trickles
//! one header line a second, or idles after its last request, is closed. At most
//! [`Limits::max_connections`] are open at once: the others wait in the kernel's accept
//! queue, so slow clients cannot exhaust the process's file descriptors. Headers past
//! [`MAX_HEADER_BYTES`] or [`MAX_HEADERS`] are answered by [`crate::http`] with a 431
//! problem; hyper's own (bare) 431 is only for a head past its read buffer.

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::{debug, warn};

/// More header bytes than this (names and values) are answered 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// More header fields than this are answered 431.
pub const MAX_HEADERS: usize = 100;

/// How much of the process one client can hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `stop` is cancelled, then lets open connections finish
/// their requests (the caller bounds how long with its shutdown timeout). Each request
/// carries the peer's [`ConnectInfo`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Room above our own limits, so that they, not hyper, answer (with a problem).
        .max_headers(MAX_HEADERS * 2)
        .max_buf_size(MAX_HEADER_BYTES * 8);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move { app.oneshot(req).await }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const DEADLINE: Duration = Duration::from_secs(10);

    async fn start(limits: Limits) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = crate::http::with_common_layers(
            Router::new().route("/ok", get(|| async { "ok" })),
            "test",
            Arc::new(crate::metrics::Metrics::new("test")),
            Duration::from_secs(5),
        );
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, app, limits, stop.clone()));
        (addr, stop)
    }

    /// Reads until the server closes the connection (or the deadline passes: a failure).
    async fn read_to_close(conn: &mut TcpStream) -> String {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        tokio::time::timeout(DEADLINE, async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .expect("the server keeps the connection open");
        String::from_utf8_lossy(&seen).into_owned()
    }

    async fn response(conn: &mut TcpStream) -> String {
        let mut buf = vec![0u8; 8192];
        let n = tokio::time::timeout(DEADLINE, conn.read(&mut buf))
            .await
            .expect("no response")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn limits(header_read_timeout: Duration, max_connections: usize) -> Limits {
        Limits {
            header_read_timeout,
            max_connections,
        }
    }

    /// A client that sends a header line now and then, or idles after a response, loses
    /// its connection once the header-read timeout has passed.
    #[tokio::test]
    async fn slow_and_idle_clients_are_disconnected() {
        let (addr, _stop) = start(limits(Duration::from_millis(500), 16)).await;

        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /ok HTTP/1.1\r\n").await.unwrap();
        let trickle = async {
            for i in 0.. {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let line = format!("x-slow-{i}: 1\r\n");
                if slow.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        };
        tokio::time::timeout(DEADLINE, trickle)
            .await
            .expect("a trickling client kept its connection");

        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let answered = read_to_close(&mut idle).await;
        assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    }

    /// Past the bound, a connection waits to be accepted, and is served once another closes.
    #[tokio::test]
    async fn open_connections_are_bounded() {
        let (addr, _stop) = start(limits(Duration::from_secs(30), 2)).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            assert!(response(&mut c).await.starts_with("HTTP/1.1 200"));
            held.push(c);
        }
        let mut third = TcpStream::connect(addr).await.unwrap();
        third
            .write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf))
                .await
                .is_err(),
            "a third connection was served while two were open"
        );
        drop(held.pop());
        assert!(response(&mut third).await.starts_with("HTTP/1.1 200"));
    }

    /// Too many or too large headers are a 431 problem, not hyper's bare answer.
    #[tokio::test]
    async fn large_headers_are_a_problem() {
        let (addr, _stop) = start(limits(Duration::from_secs(5), 16)).await;
        let big = format!(
            "GET /ok HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(MAX_HEADER_BYTES + 1)
        );
        let many = format!(
            "GET /ok HTTP/1.1\r\nhost: x\r\n{}\r\n",
            (0..MAX_HEADERS + 1)
                .map(|i| format!("x-{i}: 1\r\n"))
                .collect::<String>()
        );
        for request in [big, many] {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(request.as_bytes()).await.unwrap();
            let answer = response(&mut c).await;
            assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
            assert!(
                answer.contains("application/problem+json")
                    && answer.contains("urn:shop:problem:headers-too-large"),
                "{answer}"
            );
        }
    }
}
