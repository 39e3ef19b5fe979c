//! A small parser for the Prometheus text exposition format.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

/// One sample: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// All samples of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// The samples, in order.
    pub samples: Vec<Sample>,
    /// The exposition as scraped.
    pub text: String,
}

impl Metrics {
    /// Sum of the samples named `name` whose labels include every `(key, value)` of `filter`;
    /// `None` when no sample matches.
    #[must_use]
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in &self.samples {
            if s.name == name
                && filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            {
                *found.get_or_insert(0.0) += s.value;
            }
        }
        found
    }

    /// Like [`Metrics::sum`] with 0 for no match.
    #[must_use]
    pub fn get(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.sum(name, filter).unwrap_or(0.0)
    }

    /// Whether any sample has this name.
    #[must_use]
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// Runs Prometheus' `promtool check metrics` (format and naming lint) on the text.
    ///
    /// # Errors
    /// When promtool is missing or finds a problem; the error quotes its output.
    pub fn promtool_check(&self) -> Result<()> {
        use std::io::Write as _;
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running promtool (scripts/install-deps.sh installs Debian's prometheus)")?;
        child
            .stdin
            .take()
            .context("promtool's stdin")?
            .write_all(self.text.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "promtool check metrics: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The samples whose name starts with `prefix`, formatted one per line (for the demo).
    #[must_use]
    pub fn excerpt(&self, prefix: &str) -> String {
        let mut out = String::new();
        for s in self.samples.iter().filter(|s| s.name.starts_with(prefix)) {
            let labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            out.push_str(&format!("{}{{{}}} {}\n", s.name, labels.join(","), s.value));
        }
        out
    }
}

/// Parses Prometheus text format (comments and `# HELP`/`# TYPE` lines are skipped).
///
/// # Errors
/// When a sample line is malformed; the error names the line.
pub fn parse_prometheus(text: &str) -> Result<Metrics> {
    let mut samples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let ctx = || format!("metrics line {}: {raw:?}", i + 1);
        let (name, labels, rest) = if let Some(open) = line.find('{') {
            let close = line.rfind('}').with_context(ctx)?;
            if close < open {
                bail!("{}: unbalanced braces", ctx());
            }
            (
                &line[..open],
                parse_labels(&line[open + 1..close]).with_context(ctx)?,
                &line[close + 1..],
            )
        } else {
            let sp = line.find(char::is_whitespace).with_context(ctx)?;
            (&line[..sp], BTreeMap::new(), &line[sp..])
        };
        let value_s = rest.split_whitespace().next().with_context(ctx)?;
        let value = match value_s {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().with_context(ctx)?,
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(Metrics {
        samples,
        text: text.to_owned(),
    })
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if chars.next() != Some('=') || chars.next() != Some('"') {
            bail!("label {key:?}: expected =\"");
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => bail!("label {key:?}: dangling escape"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => bail!("label {key:?}: unterminated value"),
            }
        }
        map.insert(key.trim().to_owned(), value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_sums() {
        let m = parse_prometheus(
            "# HELP x y\n# TYPE isthmus_drops_total counter\n\
             isthmus_drops_total{reason=\"replay\"} 3\n\
             isthmus_drops_total{reason=\"bad_packet\",x=\"a,b\\\"c\"} 4\n\
             isthmus_build_info 1\n",
        )
        .unwrap();
        assert_eq!(m.get("isthmus_drops_total", &[("reason", "replay")]), 3.0);
        assert_eq!(m.get("isthmus_drops_total", &[]), 7.0);
        assert_eq!(m.samples[1].labels["x"], "a,b\"c");
        assert!(m.has("isthmus_build_info"));
        assert_eq!(m.sum("nope", &[]), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_prometheus("foo{a=\"b} 1").is_err());
        assert!(parse_prometheus("foo bar").is_err());
    }
}
