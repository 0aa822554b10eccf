//! Debian's nginx in front of gateways on loopback, running the
//! repository's `deploy/nginx/nginx.conf` adapted to it: its own port, the
//! given upstream gateways instead of the compose service names, no Docker
//! resolver, every file in a temp dir. Stopped (workers included) when
//! dropped or when the test process dies.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{free_port, retry};

/// A plain HTTP/1.1 GET on loopback, the response as text.
async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).await?;
    Ok(out)
}

/// Debian's nginx running `deploy/nginx/nginx.conf`, adapted to loopback:
/// its own port, the given upstream gateways, files in a temp dir.
pub struct Nginx {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    // Stopped with SIGTERM (its workers with it) when dropped, or when the
    // test process dies.
    _process: crate::process::Supervised,
    dir: tempfile::TempDir,
}

/// Debian's nginx binary.
pub fn nginx_binary() -> anyhow::Result<PathBuf> {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if std::path::Path::new(candidate).is_file() {
            return Ok(candidate.into());
        }
    }
    anyhow::bail!("nginx is not installed (scripts/test.sh installs Debian's nginx package)")
}

impl Nginx {
    /// The repository's `deploy/nginx/nginx.conf`.
    pub fn shipped_conf() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/nginx.conf")
    }

    /// Run the configuration at `conf` in front of `upstreams`.
    pub async fn start(conf: &Path, upstreams: &[SocketAddr]) -> anyhow::Result<Nginx> {
        let shipped = std::fs::read_to_string(conf)
            .with_context(|| format!("cannot read {}", conf.display()))?;
        let dir = tempfile::tempdir()?;
        let path = dir.path();
        // Workers run as nobody when the master is root.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
        let port = free_port()?;
        let servers: String = upstreams
            .iter()
            .map(|a| format!("server {a};\n        "))
            .collect();
        let mut conf = String::new();
        let mut skipping_servers = false;
        for line in shipped.lines() {
            let t = line.trim();
            if t.starts_with("resolver ") {
                // Docker's DNS: nothing to resolve on loopback.
                continue;
            }
            if t.starts_with("server gateway-") {
                if !skipping_servers {
                    conf.push_str("        ");
                    conf.push_str(&servers);
                    conf.push('\n');
                    skipping_servers = true;
                }
                continue;
            }
            if t == "listen 8080;" {
                conf.push_str(&format!("        listen 127.0.0.1:{port};\n"));
                continue;
            }
            conf.push_str(line);
            conf.push('\n');
            if t == "http {" {
                let p = path.display();
                conf.push_str(&format!(
                    "    client_body_temp_path {p}/body;\n    proxy_temp_path {p}/proxy;\n    \
                     fastcgi_temp_path {p}/fastcgi;\n    uwsgi_temp_path {p}/uwsgi;\n    \
                     scgi_temp_path {p}/scgi;\n"
                ));
            }
        }
        anyhow::ensure!(
            skipping_servers,
            "the shipped nginx.conf names no gateway upstreams"
        );
        let conf = format!(
            "daemon off;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n{conf}",
            p = path.display()
        );
        let file = path.join("nginx.conf");
        std::fs::write(&file, conf)?;
        let process = crate::process::Supervised::spawn(&crate::process::Spec {
            argv: vec![
                nginx_binary()?.display().to_string(),
                "-p".into(),
                path.display().to_string(),
                "-c".into(),
                file.display().to_string(),
            ],
            cwd: path.to_owned(),
            env: Vec::new(),
            log: path.join("stdout.log"),
            stop_signal: "TERM",
        })
        .await
        .context("cannot start nginx")?;
        let nginx = Nginx {
            port,
            _process: process,
            dir,
        };
        retry(Duration::from_secs(20), || async {
            let body = http_get(port, "/nginx-health").await?;
            anyhow::ensure!(body.starts_with("HTTP/1.1 200"), "nginx not up");
            Ok(())
        })
        .await
        .with_context(|| nginx.log())?;
        Ok(nginx)
    }

    /// `ws://` URL of `path` through nginx.
    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// Its error log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}
