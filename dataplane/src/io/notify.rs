//! systemd's service notification protocol (sd_notify(3)) without libsystemd: one datagram
//! to the Unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace). Both daemons use it under `Type=notify` units: `READY=1` once serving,
//! `STOPPING=1` when shutting down (a reload is SIGHUP, `ExecReload`).

use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (`KEY=VALUE` lines) to systemd; `false` when not run by systemd or the
/// message could not be sent (never an error: notification is best effort).
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
                .is_ok()
        }
        None => sock.send_to(state.as_bytes(), &path).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifies_a_path_socket_and_is_silent_without_one() {
        let dir = std::env::temp_dir().join(format!("isthmus-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        // The environment is process-wide: this is the only test that sets it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(notify("READY=1\nSTATUS=serving"));
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        std::env::remove_var("NOTIFY_SOCKET");
        assert!(!notify("READY=1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
