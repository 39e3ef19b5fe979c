//! Logging of both daemons: `tracing` to stderr, filtered by `ISTHMUS_LOG` (error, warn,
//! info, debug, trace, or per-module directives like `info,isthmus_dataplane::uapi=debug`),
//! plain text (colours only on a terminal, so a log file or the journal gets none) or JSON
//! lines for log shippers (`--log-format json` or `ISTHMUS_LOG_FORMAT=json`).

use std::io::IsTerminal as _;

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields, message).
    Json,
}

impl Format {
    /// `text` or `json`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            _ => None,
        }
    }

    /// `--log-format`'s value if given, else `ISTHMUS_LOG_FORMAT`'s, else text.
    pub fn from_option(option: Option<&str>) -> Result<Self, String> {
        let env = std::env::var("ISTHMUS_LOG_FORMAT").ok();
        match option.or(env.as_deref()) {
            None => Ok(Self::Text),
            Some(s) => Self::parse(s)
                .ok_or_else(|| format!("log format {s:?}: expected \"text\" or \"json\"")),
        }
    }
}

/// Installs the global subscriber; `default_filter` applies when `ISTHMUS_LOG` is not set.
pub fn init(format: Format, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ISTHMUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Format::Json => builder.json().with_current_span(false).init(),
        Format::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
