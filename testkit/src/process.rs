//! A service process that cannot outlive the test that started it.
//!
//! A test process can end without running destructors (nextest's timeout,
//! a panic while panicking, SIGKILL), and a JVM broker left behind would
//! hold gigabytes and ports for every later run. So the service is started
//! under a small `sh` watchdog whose stdin is a pipe from this process: when
//! the pipe closes, however this process ended, the watchdog stops the
//! service. Written here because no crate of the field does this without
//! `unsafe` (`prctl(PR_SET_PDEATHSIG)` in `pre_exec`, and that fires on the
//! death of the spawning *thread*, not of the process).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, ChildStdin, Command},
};

/// The watchdog: start the service with output appended to `$HERALD_LOG`,
/// print its pid, wait for stdin to close, then stop it with
/// `$HERALD_STOP` and reap it.
const WATCHDOG: &str = r#""$@" </dev/null >>"$HERALD_LOG" 2>&1 &
pid=$!
echo "$pid"
read -r _ignored
kill -s "$HERALD_STOP" "$pid" 2>/dev/null
wait "$pid"
"#;

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// File the service's stdout and stderr are appended to.
    pub log: PathBuf,
    /// Signal the watchdog stops the service with (`KILL`, `TERM`, `QUIT`, ...).
    pub stop_signal: &'static str,
}

/// A running service process under its watchdog.
#[derive(Debug)]
pub struct Supervised {
    watchdog: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    log: PathBuf,
    stop_signal: &'static str,
}

impl Supervised {
    /// Start `spec`.
    pub async fn spawn(spec: &Spec) -> anyhow::Result<Supervised> {
        anyhow::ensure!(!spec.argv.is_empty(), "nothing to run");
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("herald-watchdog")
            .args(&spec.argv)
            .current_dir(&spec.cwd)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("HERALD_LOG", &spec.log)
            .env("HERALD_STOP", spec.stop_signal)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // The watchdog's end is its own (stdin closing); tokio must not
            // SIGKILL it on drop before it stopped the service.
            .kill_on_drop(false)
            .spawn()
            .context("cannot run sh (the service watchdog)")?;
        let stdin = watchdog.stdin.take();
        let stdout = watchdog.stdout.take().context("watchdog has no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).await?;
        let pid: u32 = line
            .trim()
            .parse()
            .with_context(|| format!("watchdog printed {line:?}, not a pid"))?;
        Ok(Supervised {
            watchdog,
            stdin,
            pid,
            log: spec.log.clone(),
            stop_signal: spec.stop_signal,
        })
    }

    /// The service's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the service still runs (a reaped or zombie process does not).
    pub fn alive(&self) -> bool {
        process_running(self.pid)
    }

    /// Send `signal` (`TERM`, `KILL`, `STOP`, `CONT`, ...) to the service.
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        kill(self.pid, signal).await
    }

    /// `kill -9` the service and wait until it is gone.
    pub async fn kill(mut self) {
        let _ = self.signal("KILL").await;
        self.release().await;
    }

    /// Ask the service to stop with `signal`; after `within`, kill it.
    pub async fn stop(mut self, signal: &str, within: Duration) {
        if self.signal(signal).await.is_ok() {
            let deadline = Instant::now() + within;
            while self.alive() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if self.alive() {
            let _ = self.signal("KILL").await;
        }
        self.release().await;
    }

    /// Close the watchdog's stdin and wait for it (it reaps the service).
    async fn release(&mut self) {
        self.stdin.take();
        let _ = self.watchdog.wait().await;
    }

    /// The last `lines` lines of the service's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.stdin.is_some() && process_running(self.pid) {
            // Stop it now rather than when the watchdog gets to it, so the
            // service's files can be removed right after.
            let _ = std::process::Command::new("kill")
                .args(["-s", self.stop_signal, &self.pid.to_string()])
                .status();
        }
        // Closing stdin makes the watchdog stop (and reap) the service.
        self.stdin.take();
    }
}

/// Send `signal` (`TERM`, `KILL`, ...) to process `pid`.
pub async fn kill(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill -s {signal} {pid} failed");
    Ok(())
}

/// The last `lines` lines of a log file (empty when unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `pid` names a running (not zombie) process.
pub fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Wait until `addr` accepts TCP connections, failing early when `alive`
/// says the service died.
pub async fn wait_listening(
    addr: &str,
    within: Duration,
    alive: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if !alive() {
            bail!("the service exited before listening on {addr}");
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_service_stops_when_its_owner_lets_go() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let spec = Spec {
            argv: vec!["sleep".into(), "300".into()],
            cwd: dir.path().to_path_buf(),
            env: vec![],
            log: dir.path().join("log"),
            stop_signal: "KILL",
        };
        let s = Supervised::spawn(&spec).await?;
        let pid = s.pid();
        assert!(process_running(pid));
        s.kill().await;
        assert!(!process_running(pid));

        // Dropping the handle (as a dying test does) also ends the service.
        let s = Supervised::spawn(&spec).await?;
        let pid = s.pid();
        drop(s);
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_running(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!process_running(pid), "the watchdog did not stop {pid}");
        Ok(())
    }
}
