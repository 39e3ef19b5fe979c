//! The Debian package (`cargo xtask package`): the release binaries, stripped, with their
//! man pages, shell completions, systemd units, the example configuration and the
//! operator's kit (Grafana dashboard, Prometheus rules), built with `dpkg-deb` from the
//! files in `contrib/`. Shared by xtask and the test that installs it (tests/tests/package.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::lab::{run, target_dir, workspace_root};

/// The package's version: the workspace's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn install(src: &Path, dst: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = dst.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(src, dst).with_context(|| format!("{} -> {}", src.display(), dst.display()))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Builds `target/package/isthmus_VERSION_ARCH.deb` from the release binaries (which must
/// be built: `cargo build --release`) and returns its path.
///
/// # Errors
/// A binary or a `contrib/` file is missing, or `strip`, `gzip` or `dpkg-deb` fails.
pub fn build_deb() -> Result<PathBuf> {
    let ws = workspace_root();
    let contrib = ws.join("contrib");
    let arch = run(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let out = target_dir().join("package");
    let root = out.join(format!("isthmus_{VERSION}_{arch}"));
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    // Binaries, without their debug information (18 MB each with it, a few without).
    for (bin, dir) in [
        ("isthmus-dp", "usr/sbin"),
        ("isthmus-cp", "usr/sbin"),
        ("isthmusctl", "usr/bin"),
    ] {
        let src = target_dir().join("release").join(bin);
        if !src.exists() {
            bail!("{} is not built (cargo build --release)", src.display());
        }
        let dst = root.join(dir).join(bin);
        std::fs::create_dir_all(dst.parent().expect("has a parent"))?;
        run(Command::new("strip")
            .args(["--strip-unneeded", "-o"])
            .arg(&dst)
            .arg(&src))?;
    }
    for page in ["isthmus-dp.8", "isthmus-cp.8", "isthmusctl.8"] {
        let dst = root.join("usr/share/man/man8").join(page);
        install(&contrib.join("man").join(page), &dst, 0o644)?;
        run(Command::new("gzip").args(["-9n"]).arg(&dst))?;
    }
    for (file, name) in [
        ("isthmusctl.bash", "isthmusctl"),
        ("isthmus-dp.bash", "isthmus-dp"),
        ("isthmus-cp.bash", "isthmus-cp"),
    ] {
        install(
            &contrib.join("completions").join(file),
            &root
                .join("usr/share/bash-completion/completions")
                .join(name),
            0o644,
        )?;
    }
    for unit in ["isthmus@.service", "isthmus-cp@.service", "isthmus.target"] {
        install(
            &contrib.join("systemd").join(unit),
            &root.join("lib/systemd/system").join(unit),
            0o644,
        )?;
    }
    let doc = root.join("usr/share/doc/isthmus");
    for (src, dst) in [
        (
            ws.join("docs/isthmus.example.toml"),
            "examples/isthmus.example.toml",
        ),
        (ws.join("docs/config.md"), "config.md"),
        (ws.join("README.md"), "README.md"),
        (contrib.join("grafana/isthmus.json"), "grafana/isthmus.json"),
        (
            contrib.join("prometheus/isthmus.rules.yml"),
            "prometheus/isthmus.rules.yml",
        ),
        (contrib.join("debian/copyright"), "copyright"),
    ] {
        install(&src, &doc.join(dst), 0o644)?;
    }
    let debian = root.join("DEBIAN");
    for script in ["postinst", "postrm"] {
        install(
            &contrib.join("debian").join(script),
            &debian.join(script),
            0o755,
        )?;
    }
    let size_kib = run(Command::new("du").args(["-sk"]).arg(&root))?
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .to_string();
    let control = std::fs::read_to_string(contrib.join("debian/control"))?
        .replace("@VERSION@", VERSION)
        .replace("@ARCH@", &arch)
        .replace("@SIZE@", &size_kib);
    std::fs::write(debian.join("control"), control)?;
    let deb = out.join(format!("isthmus_{VERSION}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&deb))?;
    Ok(deb)
}
