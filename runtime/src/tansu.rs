//! The tansu broker (a Kafka-protocol broker from crates.io) as a child
//! process: development mode runs one, and so do the test harnesses and the
//! load generator. Only where to find it and how to start it live here;
//! each caller owns the process.

use std::path::{Path, PathBuf};

/// How to install the broker.
pub const INSTALL: &str = "cargo install tansu --locked --features dynostore";

/// The tansu binary: `explicit` when given (and present), else
/// `HERALD_TANSU_BIN` when set, else the first `tansu` on `PATH`, else
/// `~/.cargo/bin/tansu`.
pub fn find(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.is_file().then(|| p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("HERALD_TANSU_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/tansu"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// The broker is not installed.
#[derive(Debug, thiserror::Error)]
#[error(
    "no Kafka broker: install tansu (`{INSTALL}`, which scripts/test.sh does) or {alternative}"
)]
pub struct NotInstalled {
    /// What else the caller accepts instead (e.g. an external broker's address).
    pub alternative: &'static str,
}

/// [`find`] without an explicit path, or an error that says how to install
/// the broker or what `alternative` the caller accepts.
pub fn require(alternative: &'static str) -> Result<PathBuf, NotInstalled> {
    find(None).ok_or(NotInstalled { alternative })
}

/// Arguments of a single broker on `127.0.0.1:port` with in-memory storage
/// (nothing survives the process).
pub fn broker_args(port: u16) -> Vec<String> {
    let url = format!("tcp://127.0.0.1:{port}");
    [
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
        "--storage-engine",
        "memory://tansu/",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_binary_must_exist() {
        assert_eq!(find(Some(Path::new("/nonexistent/tansu"))), None);
        let me = std::env::current_exe().unwrap();
        assert_eq!(find(Some(&me)), Some(me.clone()));
    }

    #[test]
    fn the_broker_listens_and_advertises_the_same_port() {
        let args = broker_args(9).join(" ");
        assert_eq!(
            args,
            "broker --listener-url tcp://127.0.0.1:9 --advertised-listener-url tcp://127.0.0.1:9 --storage-engine memory://tansu/"
        );
    }
}
