//! The Prometheus endpoint: a minimal HTTP/1.1 server on its own thread that answers
//! `GET /metrics` (and `/`) with the text `render` returns, everything else with 404.
//! Shared by `isthmus-dp` and `isthmus-cp`.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::Duration;

/// Binds `addr` and serves `render()`'s text on a thread named `name`; returns the bound
/// address.
pub fn serve(
    addr: SocketAddr,
    name: &str,
    render: impl Fn() -> String + Send + 'static,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    thread::Builder::new().name(name.into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            // Read the whole request head (it may come in pieces), at most 8 KiB.
            let mut req = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                match c.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&chunk[..n]),
                }
            }
            let line = String::from_utf8_lossy(&req);
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = if path == "/metrics" || path == "/" {
                ("200 OK", render())
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })?;
    Ok(local)
}
