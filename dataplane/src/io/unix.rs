//! Private Unix stream sockets for local control (the WireGuard UAPI, the control channel):
//! created with mode 0600 from the start, a stale socket replaced only when nothing answers
//! on it, one thread per connection, and the file removed when the server is dropped.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

/// A listening socket served by a background thread.
pub struct UnixServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl UnixServer {
    /// Bind `path` (mode 0600) and call `on_conn` on a new thread for every connection.
    pub fn start(
        path: &Path,
        name: &str,
        on_conn: impl Fn(UnixStream) + Send + Sync + 'static,
    ) -> io::Result<UnixServer> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by another process", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        // SAFETY: umask(2) cannot fail; it is process-wide, so a file another thread creates
        // in this window is made with stricter permissions, never looser ones.
        let old = unsafe { libc::umask(0o077) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let listener =
            bound.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let on_conn = Arc::new(on_conn);
        let conn_name = format!("{name}-conn");
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let f = on_conn.clone();
                    let _ = std::thread::Builder::new()
                        .name(conn_name.clone())
                        .spawn(move || f(conn));
                }
            })?;
        Ok(UnixServer {
            path: path.to_path_buf(),
            stop,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixServer {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        // Wake the accept loop so that it sees `stop` and closes the listener.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Create directory `dir` with `mode` if it does not exist.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}
