//! The optional TOML configuration file.
//!
//! Precedence is flag > environment variable > file > built-in default. The
//! file is applied by turning each key into the `HERALD_*` environment
//! variable of the same setting when that variable is not already set, so
//! every setting is documented once (on its clap flag) and read one way.

use std::path::Path;

/// What can go wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("configuration file {path} is not valid TOML: {reason}")]
    Parse { path: String, reason: String },
    /// A key names no setting.
    #[error("configuration file {path}: `{key}` is not a known setting")]
    UnknownKey { path: String, key: String },
    /// A key holds a table or another value that is not a plain setting.
    #[error(
        "configuration file {path}: key `{key}` must be a string, number, boolean or array of those"
    )]
    BadValue { path: String, key: String },
}

/// Turn the text of a TOML file into `(HERALD_<KEY>, value)` pairs.
///
/// Keys are upper-cased and `-`/`.` become `_`; nested tables join their
/// names with `_` (`[kafka] brokers = ".."` is `HERALD_KAFKA_BROKERS`).
/// Arrays become comma-separated lists.
pub fn env_pairs(path: &str, text: &str) -> Result<Vec<(String, String)>, ConfigFileError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigFileError::Parse {
            path: path.to_owned(),
            reason: e.message().to_owned(),
        })?;
    let mut out = Vec::new();
    flatten(path, "", &table, &mut out)?;
    Ok(out)
}

fn flatten(
    path: &str,
    prefix: &str,
    table: &toml::Table,
    out: &mut Vec<(String, String)>,
) -> Result<(), ConfigFileError> {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}_{key}")
        };
        if let toml::Value::Table(inner) = value {
            flatten(path, &name, inner, out)?;
            continue;
        }
        let text = scalar(value)
            .or_else(|| match value {
                toml::Value::Array(items) => items
                    .iter()
                    .map(scalar)
                    .collect::<Option<Vec<_>>>()
                    .map(|v| v.join(",")),
                _ => None,
            })
            .ok_or_else(|| ConfigFileError::BadValue {
                path: path.to_owned(),
                key: name.clone(),
            })?;
        let env = format!("HERALD_{}", name.to_uppercase().replace(['-', '.'], "_"));
        out.push((env, text));
    }
    Ok(())
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parse a clap configuration `T`, applying the TOML file named by
/// `--config <file>` (or `HERALD_CONFIG`) as defaults below flags and
/// environment variables. A key that names no setting is an error, so typos
/// stop startup instead of being ignored.
pub fn parse<T: clap::Parser>(args: Vec<String>) -> Result<T, ParseError> {
    let mut path = std::env::var("HERALD_CONFIG").ok();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--config" {
            path = iter.next().cloned();
        } else if let Some(p) = arg.strip_prefix("--config=") {
            path = Some(p.to_owned());
        }
    }
    let mut cmd = T::command();
    if let Some(path) = path {
        let text =
            std::fs::read_to_string(Path::new(&path)).map_err(|source| ConfigFileError::Read {
                path: path.clone(),
                source,
            })?;
        for (key, value) in env_pairs(&path, &text)? {
            let id = cmd
                .get_arguments()
                .find(|a| a.get_env().and_then(|e| e.to_str()) == Some(key.as_str()))
                .map(|a| a.get_id().clone())
                .ok_or_else(|| ConfigFileError::UnknownKey {
                    path: path.clone(),
                    key: key.clone(),
                })?;
            // Settings are read once per process; leaking the few strings
            // gives clap the `'static` defaults it wants.
            let value: &'static str = Box::leak(value.into_boxed_str());
            cmd = cmd.mut_arg(id, |a| a.default_value(value));
        }
    }
    let matches = cmd.try_get_matches_from(args)?;
    Ok(T::from_arg_matches(&matches)?)
}

/// A configuration that could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The configuration file is wrong.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// A flag or environment variable is wrong (or `--help` was asked for).
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

impl ParseError {
    /// Print the message and exit: status 0 for `--help`/`--version`, 2 otherwise.
    pub fn exit(self) -> ! {
        match self {
            ParseError::Clap(e) => e.exit(),
            ParseError::File(e) => {
                eprintln!("error: {e}");
                std::process::exit(2)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_tables_and_arrays() {
        let pairs = env_pairs(
            "f.toml",
            "listen = \"0.0.0.0:8080\"\nmax-frame-bytes = 65536\n[kafka]\nbrokers = [\"a:9092\", \"b:9092\"]\n",
        )
        .unwrap();
        assert!(pairs.contains(&("HERALD_LISTEN".into(), "0.0.0.0:8080".into())));
        assert!(pairs.contains(&("HERALD_MAX_FRAME_BYTES".into(), "65536".into())));
        assert!(pairs.contains(&("HERALD_KAFKA_BROKERS".into(), "a:9092,b:9092".into())));
    }

    #[test]
    fn rejects_bad_toml_with_path() {
        let err = env_pairs("bad.toml", "listen = ").unwrap_err().to_string();
        assert!(err.contains("bad.toml"), "{err}");
    }

    #[test]
    fn rejects_nested_arrays_of_tables() {
        let err = env_pairs("x.toml", "a = [{b = 1}]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`a`"), "{err}");
    }
}
