//! An experiment file (`experiments/<name>.toml`): a name, a description, the driver
//! sweep, settings shared by every server variant, and the variants. Every serve
//! setting is checked against `crossbatch-server serve` itself; an unknown key or a
//! bad value is an error naming the file, the line and the key.
//!
//! ```toml
//! name = "dynamic-batching"
//! description = "Batching off vs deadline vs eager"
//!
//! [sweep]
//! batch = [8]
//! concurrency = [1, 4, 16]
//! pairs = 800
//! warmup = 2
//!
//! [server]            # every variant
//! backend = "cpu"
//!
//! [[variant]]
//! name = "none"
//! batch_policy = "none"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use crossbatch_server::serve::ServeArgs;
use serde::Deserialize;
use toml::Spanned;

/// Settings the runner owns: each variant's server listens where the runner says and
/// exports to the runner's collector.
const RUNNER_OWNED: [&str; 9] = [
    "listen",
    "otlp_endpoint",
    "metrics_addr",
    "api_key",
    "api_key_file",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "sample_interval_ms",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub name: String,
    pub description: String,
    pub path: PathBuf,
    pub sweep: Sweep,
    pub variants: Vec<Variant>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    pub batch: Vec<usize>,
    pub concurrency: Vec<usize>,
    pub pairs: usize,
    pub warmup: usize,
    /// Open loop: calls per second.
    pub rate: Option<f64>,
    pub arrivals: Option<String>,
    pub max_in_flight: Option<usize>,
    pub deadline_ms: Option<u64>,
    /// `synthetic`, a JSONL/TSV path, or none for the runner's default.
    pub workload: Option<String>,
}

/// One server configuration: the shared `[server]` settings overlaid with its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    pub description: Option<String>,
    /// (setting, value) in `serve`'s terms, e.g. ("batch_policy", "none").
    pub settings: Vec<(String, String)>,
}

impl Variant {
    /// The `serve` flags of its settings: `--batch-policy none …`.
    pub fn serve_flags(&self) -> Vec<String> {
        self.settings
            .iter()
            .flat_map(|(k, v)| [format!("--{}", k.replace('_', "-")), v.clone()])
            .collect()
    }

    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A structural error from the TOML reader: its message carries line, column and key.
    #[error("{}: {message}", path.display())]
    Toml { path: PathBuf, message: String },
    #[error("{}:{line}: `{key}`: {message}", path.display())]
    Key {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: Spanned<String>,
    description: String,
    sweep: RawSweep,
    #[serde(default)]
    server: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(rename = "variant", default)]
    variants: Vec<Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSweep {
    batch: Spanned<Vec<usize>>,
    concurrency: Spanned<Vec<usize>>,
    pairs: Spanned<usize>,
    #[serde(default)]
    warmup: usize,
    rate: Option<Spanned<f64>>,
    arrivals: Option<Spanned<String>>,
    max_in_flight: Option<Spanned<usize>>,
    deadline_ms: Option<Spanned<u64>>,
    workload: Option<String>,
}

/// Reads and checks an experiment file.
pub fn load(path: &Path) -> Result<Experiment, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Checks `text` as the experiment file at `path` (named in errors).
pub fn parse(path: &Path, text: &str) -> Result<Experiment, SpecError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| SpecError::Toml {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let at = |span: std::ops::Range<usize>, key: &str, message: String| SpecError::Key {
        path: path.to_path_buf(),
        line: text[..span.start.min(text.len())].matches('\n').count() + 1,
        key: key.to_string(),
        message,
    };
    let name = raw.name.get_ref().clone();
    if !is_file_safe(&name) {
        return Err(at(
            raw.name.span(),
            "name",
            "use letters, digits, '-', '_' or '.' (it names the report files)".into(),
        ));
    }
    let s = raw.sweep;
    for (key, list) in [
        ("sweep.batch", &s.batch),
        ("sweep.concurrency", &s.concurrency),
    ] {
        if list.get_ref().is_empty() || list.get_ref().contains(&0) {
            return Err(at(
                list.span(),
                key,
                "a non-empty list of numbers of at least 1".into(),
            ));
        }
    }
    if *s.pairs.get_ref() == 0 {
        return Err(at(s.pairs.span(), "sweep.pairs", "at least 1".into()));
    }
    if let Some(r) = &s.rate
        && !(r.get_ref().is_finite() && *r.get_ref() > 0.0)
    {
        return Err(at(
            r.span(),
            "sweep.rate",
            "calls per second, above 0".into(),
        ));
    }
    if let Some(a) = &s.arrivals
        && !matches!(a.get_ref().as_str(), "uniform" | "poisson")
    {
        return Err(at(
            a.span(),
            "sweep.arrivals",
            format!("{:?}: uniform or poisson", a.get_ref()),
        ));
    }
    if let Some(m) = &s.max_in_flight
        && *m.get_ref() == 0
    {
        return Err(at(m.span(), "sweep.max_in_flight", "at least 1".into()));
    }
    if let Some(d) = &s.deadline_ms
        && *d.get_ref() == 0
    {
        return Err(at(d.span(), "sweep.deadline_ms", "at least 1".into()));
    }
    let sweep = Sweep {
        batch: s.batch.into_inner(),
        concurrency: s.concurrency.into_inner(),
        pairs: s.pairs.into_inner(),
        warmup: s.warmup,
        rate: s.rate.map(Spanned::into_inner),
        arrivals: s.arrivals.map(Spanned::into_inner),
        max_in_flight: s.max_in_flight.map(Spanned::into_inner),
        deadline_ms: s.deadline_ms.map(Spanned::into_inner),
        workload: s.workload,
    };

    let mut shared = Vec::new();
    for (k, v) in &raw.server {
        let key = format!("server.{}", k.get_ref());
        let value = setting(k, v, &key).map_err(|(span, m)| at(span, &key, m))?;
        shared.push((k.get_ref().clone(), value));
    }
    if raw.variants.is_empty() {
        return Err(SpecError::Key {
            path: path.to_path_buf(),
            line: 1,
            key: "variant".into(),
            message: "at least one [[variant]] (with a name)".into(),
        });
    }
    let mut variants: Vec<Variant> = Vec::new();
    for table in &raw.variants {
        let mut name = None;
        let mut description = None;
        let mut own = Vec::new();
        for (k, v) in table.get_ref() {
            match k.get_ref().as_str() {
                "name" => match v.get_ref() {
                    toml::Value::String(n) if is_file_safe(n) => name = Some((n.clone(), v.span())),
                    _ => {
                        return Err(at(
                            v.span(),
                            "variant.name",
                            "a string of letters, digits, '-', '_' or '.' (it names report files)"
                                .into(),
                        ));
                    }
                },
                "description" => match v.get_ref() {
                    toml::Value::String(d) => description = Some(d.clone()),
                    _ => return Err(at(v.span(), "variant.description", "a string".into())),
                },
                other => {
                    let key = format!("variant.{other}");
                    let value = setting(k, v, &key).map_err(|(span, m)| at(span, &key, m))?;
                    own.push((other.to_string(), value));
                }
            }
        }
        let Some((name, name_span)) = name else {
            return Err(at(
                table.span(),
                "variant.name",
                "every variant needs a name".into(),
            ));
        };
        if variants.iter().any(|v| v.name == name) {
            return Err(at(
                name_span,
                "variant.name",
                format!("{name:?} is used twice"),
            ));
        }
        // The variant's own settings override the shared ones.
        let mut settings: Vec<(String, String)> = shared
            .iter()
            .filter(|(k, _)| !own.iter().any(|(o, _)| o == k))
            .cloned()
            .collect();
        settings.extend(own);
        // Flags that are fine alone may conflict together (clap's requires/conflicts).
        let mut argv = vec!["serve".to_string()];
        argv.extend(
            Variant {
                name: name.clone(),
                description: None,
                settings: settings.clone(),
            }
            .serve_flags(),
        );
        if let Err(e) = ServeArgs::try_parse_from(&argv) {
            return Err(at(table.span(), &format!("variant {name}"), first_line(&e)));
        }
        variants.push(Variant {
            name,
            description,
            settings,
        });
    }
    Ok(Experiment {
        name,
        description: raw.description,
        path: path.to_path_buf(),
        sweep,
        variants,
    })
}

fn is_file_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with('.')
}

/// clap's message without its "error: " prefix and usage lines.
fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    text.lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("error: ")
        .to_string()
}

/// One serve setting checked by `serve`'s own parser: its value as a flag argument.
fn setting(
    key: &Spanned<String>,
    value: &Spanned<toml::Value>,
    shown: &str,
) -> Result<String, (std::ops::Range<usize>, String)> {
    let k = key.get_ref();
    if RUNNER_OWNED.contains(&k.as_str()) {
        return Err((
            key.span(),
            "set by the experiment runner, not by the file".to_string(),
        ));
    }
    let v = match value.get_ref() {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => {
            return Err((value.span(), "a string, number or boolean".to_string()));
        }
    };
    let flag = format!("--{}", k.replace('_', "-"));
    match ServeArgs::try_parse_from(["serve", flag.as_str(), v.as_str()]) {
        Ok(_) => Ok(v),
        Err(e) if e.kind() == clap::error::ErrorKind::UnknownArgument => Err((
            key.span(),
            format!(
                "not a `crossbatch-server serve` setting (see `crossbatch-server serve --help`; {shown})"
            ),
        )),
        Err(e) => Err((value.span(), first_line(&e))),
    }
}
