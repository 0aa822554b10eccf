//! Memory and CPU of a process from `/proc/<pid>/status` and `/proc/<pid>/stat`.

use std::sync::OnceLock;

use serde::Serialize;

/// Resident set size (`VmRSS`) in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system, all threads) in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields restart after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU used by a process over a window.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    pid: u32,
    cpu: f64,
    at: std::time::Instant,
}

/// CPU use over a window: seconds of CPU and the average number of cores busy.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUse {
    /// CPU seconds (user + system).
    pub cpu_seconds: f64,
    /// `cpu_seconds` / wall seconds: 1.0 is one core fully busy.
    pub cores: f64,
}

impl CpuMark {
    /// Start a window for `pid`.
    pub fn start(pid: u32) -> Self {
        CpuMark {
            pid,
            cpu: cpu_seconds(pid).unwrap_or(0.0),
            at: std::time::Instant::now(),
        }
    }

    /// CPU used since `start`.
    pub fn read(&self) -> CpuUse {
        let cpu = cpu_seconds(self.pid).unwrap_or(self.cpu) - self.cpu;
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        CpuUse {
            cpu_seconds: cpu,
            cores: cpu / wall,
        }
    }
}

/// Description of this machine for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `lscpu` model name.
    pub cpu_model: String,
    /// Online CPUs.
    pub cores: usize,
    /// Total memory, bytes.
    pub memory_bytes: u64,
    /// `uname -r`.
    pub kernel: String,
}

impl Machine {
    /// Read it from `/proc`.
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_bytes = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        Machine {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(Machine::describe().cores >= 1);
    }
}
