//! `isthmus-cp`: the Babel control plane of an isthmus gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use isthmus_controlplane::{config, daemon};

const USAGE: &str = "\
usage: isthmus-cp --config FILE [--ctl-socket PATH] [--status-socket PATH] [--metrics ADDR|off]
                  [--user NAME] [--log-format text|json]
       isthmus-cp --version

Runs in the foreground. Reads the [babel] section (and the peers) of the data plane's
configuration file, talks Babel to the tunnel peers through isthmus-dp's control channel
(/var/run/isthmus/IFNAME.ctl) and to the [[babel.interface]]s directly, and pushes the routes
it selects to isthmus-dp and to the kernel (protocol 77). Logs to stderr: levels by
$ISTHMUS_LOG (error, warn, info (default), debug, trace), format by --log-format or
$ISTHMUS_LOG_FORMAT (text, json). With --user (or [interface] user), it runs as that user
once set up, keeping only CAP_NET_ADMIN (kernel routes) and CAP_NET_RAW (SO_BINDTODEVICE).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let log_format = (args.iter())
        .position(|a| a == "--log-format")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let format = match isthmus_dataplane::logging::Format::from_option(log_format) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("isthmus-cp: --log-format: {e}");
            return ExitCode::from(2);
        }
    };
    isthmus_dataplane::logging::init(format, "info");
    let mut file = None;
    let mut opts = daemon::Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<String, ExitCode> {
            it.next().cloned().ok_or_else(|| {
                eprintln!("isthmus-cp: {name} needs a value\n{USAGE}");
                ExitCode::from(2)
            })
        };
        let r = match a.as_str() {
            "--config" | "-c" => value("--config").map(|v| file = Some(PathBuf::from(v))),
            "--ctl-socket" => value("--ctl-socket").map(|v| opts.ctl_socket = Some(v.into())),
            "--user" => value("--user").map(|v| opts.user = Some(v)),
            "--status-socket" => {
                value("--status-socket").map(|v| opts.status_socket = Some(v.into()))
            }
            "--metrics" => value("--metrics").and_then(|v| {
                if v == "off" {
                    opts.metrics = Some(None);
                    Ok(())
                } else {
                    v.parse()
                        .map(|a| opts.metrics = Some(Some(a)))
                        .map_err(|e| {
                            eprintln!("isthmus-cp: --metrics {v}: {e}");
                            ExitCode::from(2)
                        })
                }
            }),
            // Read before the loop (logging starts first).
            "--log-format" => value("--log-format").map(|_| ()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("isthmus-cp {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("isthmus-cp: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        };
        if let Err(code) = r {
            return code;
        }
    }
    let Some(file) = file else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let cfg = match config::load(&file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("isthmus-cp: {e}");
            return ExitCode::FAILURE;
        }
    };
    opts.config_file = Some(file);
    match daemon::run(cfg, opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("isthmus-cp: {e:#}");
            ExitCode::FAILURE
        }
    }
}
