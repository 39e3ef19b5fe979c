//! `isthmusctl genkey` / `pubkey` are interchangeable with `wg genkey` / `wg pubkey`.

use std::io::Write as _;
use std::process::{Command, Stdio};

fn run(cmd: &str, args: &[&str], stdin: &str) -> (bool, String) {
    let mut c = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(cmd);
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

const CTL: &str = env!("CARGO_BIN_EXE_isthmusctl");

#[test]
fn keys_are_interchangeable_with_wg() {
    for _ in 0..5 {
        let (ok, ours) = run(CTL, &["genkey"], "");
        assert!(ok && ours.len() == 45, "{ours:?}");
        let (_, wg_pub) = run("wg", &["pubkey"], &ours);
        let (_, our_pub) = run(CTL, &["pubkey"], &ours);
        assert_eq!(our_pub, wg_pub);
        let (_, theirs) = run("wg", &["genkey"], "");
        let (_, wg_pub) = run("wg", &["pubkey"], &theirs);
        let (_, our_pub) = run(CTL, &["pubkey"], &theirs);
        assert_eq!(our_pub, wg_pub, "byte-identical output");
    }
    let (ok, _) = run(CTL, &["pubkey"], "not a key\n");
    assert!(!ok);
}

#[test]
fn check_config_reports_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("isthmusctl-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(&f, "[interface]\nlisten_port = 70000\n").unwrap();
    let out = Command::new(CTL)
        .args(["check-config", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:2: interface.listen_port"), "{err}");
    std::fs::write(&f, "[interface]\nlisten_port = 51820\n").unwrap();
    let out = Command::new(CTL)
        .args(["check-config", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_checks_babel_and_summarizes_it() {
    let dir = std::env::temp_dir().join(format!("isthmusctl-babel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("gw.toml");
    let good = "[interface]\nlisten_port = 51820\n\n[[peer]]\nname = \"roof-12\"\n\
                public_key = \"TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=\"\n\n\
                [babel]\noriginate = [\"10.10.0.0/16\", \"fd10::/48\"]\n\n\
                [[babel.interface]]\nname = \"eth1\"\n\n[[babel.interface]]\nname = \"wlan0\"\nclass = \"mesh\"\n";
    std::fs::write(&f, good).unwrap();
    let out = Command::new(CTL)
        .args(["check-config", f.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK (1 peers, 0 routes)"), "{stdout}");
    assert!(
        stdout.contains("babel: interfaces eth1 (wired), wlan0 (mesh); 1 of 1 peers; originates 10.10.0.0/16, fd10::/48; 0 filters"),
        "{stdout}"
    );
    std::fs::write(&f, good.replace("\"mesh\"", "\"wifi\"")).unwrap();
    let out = Command::new(CTL)
        .args(["check-config", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "gw.toml:16: babel.interface[1].class: unknown variant `wifi`, expected one of `wired`, `mesh`, `trunk`"
        ),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
