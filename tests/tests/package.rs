//! The Debian package (`cargo xtask package`), installed into a root of the test's own: a
//! chroot whose /usr, /etc and /var are copy-on-write overlays of this Debian system, in a
//! private mount namespace, so that nothing of the host changes. Checked: the files, the
//! binaries run, the `isthmus` user and `/etc/isthmus`, nothing enabled or started, the
//! units pass `systemd-analyze verify`, and removal and purge leave the system clean.

mod common;

use std::process::Command;

use common::init;
use isthmus_lab::package::{build_deb, VERSION};
use isthmus_lab::Lab;

/// What runs in the private mount namespace: the chroot, the install, the checks. Each
/// check prints `ok: ...`; the first failure stops the script.
const SCRIPT: &str = r#"
set -eu
D=$1; DEB=$2
R=$D/root
mkdir -p "$R"
for d in usr etc var; do
    mkdir -p "$D/upper/$d" "$D/scratch/$d" "$R/$d"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$D/upper/$d,workdir=$D/scratch/$d" "$R/$d"
done
for l in bin sbin lib lib64; do ln -s "usr/$l" "$R/$l"; done
mkdir -p "$R/tmp" "$R/run" "$R/proc" "$R/dev" "$R/root"
mount -t proc proc "$R/proc"
mount --bind /dev "$R/dev"
cp "$DEB" "$R/tmp/isthmus.deb"
in_root() { chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

test ! -e "$R/usr/sbin/isthmus-dp"
in_root dpkg -i /tmp/isthmus.deb
echo "ok: installed"
in_root dpkg -L isthmus > "$D/files"
for f in /usr/sbin/isthmus-dp /usr/sbin/isthmus-cp /usr/bin/isthmusctl \
         /usr/share/man/man8/isthmus-dp.8.gz /usr/share/man/man8/isthmus-cp.8.gz \
         /usr/share/man/man8/isthmusctl.8.gz \
         /usr/share/bash-completion/completions/isthmusctl \
         /lib/systemd/system/isthmus@.service /lib/systemd/system/isthmus-cp@.service \
         /usr/share/doc/isthmus/examples/isthmus.example.toml \
         /usr/share/doc/isthmus/grafana/isthmus.json \
         /usr/share/doc/isthmus/prometheus/isthmus.rules.yml \
         /usr/share/doc/isthmus/copyright; do
    grep -qx "$f" "$D/files" || { echo "not in the package: $f"; exit 1; }
    test -e "$R$f" || { echo "not installed: $f"; exit 1; }
done
echo "ok: files"
for b in /usr/sbin/isthmus-dp /usr/sbin/isthmus-cp /usr/bin/isthmusctl; do
    v=$(in_root "$b" --version)
    echo "$v" | grep -q "$VERSION" || { echo "$b --version: $v"; exit 1; }
    if readelf -S "$R$b" | grep -q debug_info; then echo "$b is not stripped"; exit 1; fi
    echo "size: $b $(stat -c %s "$R$b")"
done
in_root sh -c 'isthmusctl genkey | isthmusctl pubkey' | grep -qE '^[A-Za-z0-9+/]{43}=$'
echo "ok: binaries run"
in_root getent passwd isthmus >/dev/null || { echo "no isthmus user"; exit 1; }
m=$(in_root stat -c %a:%G /etc/isthmus)
test "$m" = "750:isthmus" || { echo "/etc/isthmus: $m"; exit 1; }
echo "ok: user and /etc/isthmus"
if find "$R/etc/systemd/system" -name 'isthmus*' | grep -q .; then
    echo "a unit was enabled:"; find "$R/etc/systemd/system" -name 'isthmus*'; exit 1
fi
echo "ok: nothing enabled"
zcat "$R/usr/share/man/man8/isthmus-dp.8.gz" | grep -q '^\.SH NAME'
echo "ok: man pages"
in_root systemd-analyze verify /lib/systemd/system/isthmus@.service \
    /lib/systemd/system/isthmus-cp@.service > "$D/verify" 2>&1 || { cat "$D/verify"; exit 1; }
if grep -i isthmus "$D/verify"; then echo "systemd-analyze verify complained"; exit 1; fi
echo "ok: systemd-analyze verify"
in_root dpkg -r isthmus
test ! -e "$R/usr/sbin/isthmus-dp"
in_root dpkg -P isthmus
test ! -e "$R/etc/isthmus"
echo "ok: removed and purged"
"#;

#[test]
fn the_debian_package_installs_into_a_root_of_its_own() {
    init();
    let deb = build_deb().unwrap();
    let lab = Lab::new().unwrap();
    let dir = lab.dir().join("debroot");
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SCRIPT,
            "sh",
        ])
        .arg(&dir)
        .arg(&deb)
        .env("VERSION", VERSION)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "{}: {text}", out.status);
    for step in [
        "installed",
        "files",
        "binaries run",
        "user and /etc/isthmus",
        "nothing enabled",
        "man pages",
        "systemd-analyze verify",
        "removed and purged",
    ] {
        assert!(text.contains(&format!("ok: {step}")), "{step}: {text}");
    }
    // The overlays went with the namespace: the host has no isthmus.
    assert!(!std::path::Path::new("/usr/sbin/isthmus-dp").exists());
    std::fs::remove_dir_all(&dir).ok();
}
