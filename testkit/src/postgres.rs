//! A throwaway PostgreSQL cluster: `initdb` into a temp dir, a free loopback
//! port, trust authentication, no fsync; stopped and deleted on drop.
//! Nothing on the machine's standard port is assumed or touched.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::process::{Spec, Supervised, process_running, wait_listening};

/// Name of the database created in a fresh cluster.
pub const DATABASE: &str = "herald_test";

/// What to say when the server binaries are missing.
const INSTALL: &str = "PostgreSQL server binaries (initdb, postgres) were not found: install \
     Debian's postgresql (`apt-get install -y postgresql`, which scripts/test.sh does), \
     set HERALD_PG_BINDIR to the directory holding them, \
     or point the tests at a server with HERALD_TEST_POSTGRES=postgres://user@host:port/db";

/// A running throwaway cluster.
pub struct Postgres {
    url: String,
    process: Option<Supervised>,
    // Last: removed after the server stopped.
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").field("url", &self.url).finish()
    }
}

/// The server binaries: `HERALD_PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/<major>/bin`, else the directory of `initdb` on PATH.
pub fn bindir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("HERALD_PG_BINDIR").filter(|d| !d.is_empty()) {
        let d = PathBuf::from(d);
        anyhow::ensure!(d.join("initdb").is_file(), "{INSTALL}");
        return Ok(d);
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file()).then_some((major, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
        })
        .context(INSTALL)
}

/// `postgres` refuses to run as root; as root it runs as this user and group.
fn service_user() -> anyhow::Result<Option<(u32, u32)>> {
    let me = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0);
    if me != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    for name in ["postgres", "nobody"] {
        if let Some(line) = passwd.lines().find(|l| l.split(':').next() == Some(name)) {
            let f: Vec<&str> = line.split(':').collect();
            if let (Some(uid), Some(gid)) = (
                f.get(2).and_then(|u| u.parse().ok()),
                f.get(3).and_then(|g| g.parse().ok()),
            ) {
                return Ok(Some((uid, gid)));
            }
        }
    }
    bail!("running as root, and there is no `postgres` or `nobody` user to run PostgreSQL as")
}

/// `argv`, run as `user` when given.
fn as_user(user: Option<(u32, u32)>, argv: Vec<String>) -> Vec<String> {
    match user {
        None => argv,
        Some((uid, gid)) => {
            let mut v = vec![
                "setpriv".to_owned(),
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".to_owned(),
            ];
            v.extend(argv);
            v
        }
    }
}

impl Postgres {
    /// `initdb`, start, and create [`DATABASE`].
    pub async fn start() -> anyhow::Result<Postgres> {
        let bin = bindir()?;
        let user = service_user()?;
        let dir = tempfile::Builder::new().prefix("herald-pg-").tempdir()?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let data = dir.path().join("data");
        let initdb = as_user(
            user,
            vec![
                bin.join("initdb").display().to_string(),
                "-D".into(),
                data.display().to_string(),
                "-U".into(),
                "postgres".into(),
                "--auth=trust".into(),
                "--encoding=UTF8".into(),
                "--locale=C".into(),
                "--no-sync".into(),
            ],
        );
        let out = tokio::process::Command::new(&initdb[0])
            .args(&initdb[1..])
            .current_dir(dir.path())
            .output()
            .await
            .with_context(|| format!("cannot run {}", initdb[0]))?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut last = None;
        for _ in 0..5 {
            let port = crate::free_port()?;
            match launch(&bin, user, dir.path(), &data, port).await {
                Ok(process) => {
                    let pg = Postgres {
                        url: format!("postgres://postgres@127.0.0.1:{port}/{DATABASE}"),
                        process: Some(process),
                        _dir: dir,
                    };
                    create_database(port).await?;
                    return Ok(pg);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("PostgreSQL did not start")))
    }

    /// Connection URL of [`DATABASE`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stop the server (fast shutdown).
    pub async fn stop(mut self) {
        if let Some(p) = self.process.take() {
            p.stop("INT", Duration::from_secs(30)).await;
        }
    }
}

async fn launch(
    bin: &Path,
    user: Option<(u32, u32)>,
    dir: &Path,
    data: &Path,
    port: u16,
) -> anyhow::Result<Supervised> {
    let argv = as_user(
        user,
        vec![
            bin.join("postgres").display().to_string(),
            "-D".into(),
            data.display().to_string(),
            "-p".into(),
            port.to_string(),
            "-k".into(),
            dir.display().to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            "max_connections=300".into(),
            // A test cluster: durability is not what is under test.
            "-c".into(),
            "fsync=off".into(),
            "-c".into(),
            "synchronous_commit=off".into(),
            "-c".into(),
            "full_page_writes=off".into(),
        ],
    );
    let spec = Spec {
        argv,
        cwd: dir.to_path_buf(),
        env: vec![],
        log: dir.join("postgres.log"),
        stop_signal: "INT",
    };
    let process = Supervised::spawn(&spec).await?;
    let pid = process.pid();
    if let Err(e) = wait_listening(
        &format!("127.0.0.1:{port}"),
        Duration::from_secs(30),
        || process_running(pid),
    )
    .await
    {
        let tail = process.log_tail(20);
        process.kill().await;
        bail!("PostgreSQL did not start: {e}\n{tail}");
    }
    Ok(process)
}

async fn create_database(port: u16) -> anyhow::Result<()> {
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    // The server accepts connections a moment before it accepts sessions.
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                break client;
            }
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    client
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await?;
    Ok(())
}
