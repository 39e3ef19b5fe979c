//! Process-wide helpers: unique names, temporary directories, paths of the binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name that is unique on this machine for the life of this process:
/// `{prefix}{pid in hex}x{counter in hex}`. With a prefix of at most 2 characters it fits in
/// an interface name (15 characters).
pub(crate) fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}x{n:x}", std::process::id())
}

/// A unique interface name (at most 15 characters with a prefix of at most 2).
#[must_use]
pub fn unique_ifname(prefix: &str) -> String {
    unique_name(prefix)
}

/// True when this process runs as root (needed for namespaces).
#[must_use]
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The workspace root (the directory of the top-level `Cargo.toml`).
#[must_use]
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The cargo target directory: `$CARGO_TARGET_DIR` or `<workspace>/target`.
#[must_use]
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// Finds a binary built by this workspace: first `target/release/NAME`, then `target/debug/NAME`,
/// then next to the running executable (and its parent, for test binaries in `deps/`).
pub(crate) fn built_binary(name: &str) -> Option<PathBuf> {
    let target = target_dir();
    let mut candidates = vec![
        target.join("release").join(name),
        target.join("debug").join(name),
    ];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join(name));
            if let Some(up) = dir.parent() {
                candidates.push(up.join(name));
            }
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// The path of the `lab-tool` helper binary (HTTP GET, crafted UDP), run inside namespaces:
/// `$ISTHMUS_LAB_TOOL` if set, else the one built in the target directory.
///
/// # Errors
/// When it cannot be found.
pub fn lab_tool_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ISTHMUS_LAB_TOOL") {
        return Ok(PathBuf::from(p));
    }
    built_binary("lab-tool").context(
        "lab-tool binary not found: build it with `cargo build -p isthmus-lab --bins` or set ISTHMUS_LAB_TOOL",
    )
}

/// The path of the benchmark's WireGuard packet generator and sink, `isthmus-wggen`:
/// `$ISTHMUS_WGGEN` if set, else the one built in the target directory.
///
/// # Errors
/// When it cannot be found.
pub fn wggen_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ISTHMUS_WGGEN") {
        return Ok(PathBuf::from(p));
    }
    built_binary("isthmus-wggen").context(
        "isthmus-wggen not found: build it with `cargo build --release -p isthmus-benches --bin isthmus-wggen` or set ISTHMUS_WGGEN",
    )
}

/// A temporary directory for one lab (key files, logs, captures), removed on drop unless
/// `ISTHMUS_LAB_KEEP` is set.
#[derive(Debug)]
pub struct Lab {
    dir: PathBuf,
}

impl Lab {
    /// Creates `/tmp/isthmus-lab-<unique>`.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("isthmus-lab-{}", unique_name("")));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path inside the directory.
    #[must_use]
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("ISTHMUS_LAB_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs a command to completion and returns its stdout; fails with its stderr otherwise.
///
/// # Errors
/// When it cannot be started or exits unsuccessfully.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last `n` lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
