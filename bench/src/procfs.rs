//! Server cost from `/proc`: CPU time and resident memory of a process tree.
//!
//! The load generator shares the machine's cores with the servers, so
//! throughput alone would mostly measure the load generator. What the
//! comparison uses instead is the *server's* CPU time, read before and
//! after each phase: `utime + stime` of `/proc/<pid>/stat` covers every
//! thread of a process, live or exited. nginx runs as a master plus a
//! worker, so a target is a process *tree* and its cost is the sum.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::PathBuf;

/// Why `/proc` could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (usually: the process is gone).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file's content is not in the documented format.
    #[error("{path}: unexpected format ({what})")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was missing.
        what: &'static str,
    },
}

/// CPU ticks and parent of one process, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatLine {
    /// Parent process id.
    pub ppid: u32,
    /// User-mode ticks, all threads.
    pub utime: u64,
    /// Kernel-mode ticks, all threads.
    pub stime: u64,
    /// Ticks of waited-for children (user + kernel).
    pub children: u64,
}

/// Parses the content of `/proc/<pid>/stat`. The command name (field 2)
/// is in parentheses and may itself contain spaces and parentheses, so
/// the fields are counted from the *last* `)`.
pub fn parse_stat(text: &str) -> Option<StatLine> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15,
    // cutime 16, cstime 17.
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(StatLine {
        ppid: fields.get(1)?.parse().ok()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
        children: cutime + cstime,
    })
}

/// Busy ticks of the whole machine from the `cpu` line of `/proc/stat`:
/// user + nice + system + irq + softirq + steal (guest time is already
/// part of user).
pub fn parse_system_busy(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?)
}

/// CPU seconds the whole machine has been busy since boot.
pub fn system_busy_seconds() -> Result<f64, ProcError> {
    let path = PathBuf::from("/proc/stat");
    let text = read(path.clone())?;
    let ticks = parse_system_busy(&text).ok_or(ProcError::Format {
        path,
        what: "cpu line",
    })?;
    Ok(ticks as f64 / ticks_per_second())
}

/// CPU seconds of this process plus its waited-for children (the servers
/// it started and stopped): subtracted from [`system_busy_seconds`], what
/// *other* processes took from the machine during a run.
pub fn own_cpu_seconds_with_children() -> Result<f64, ProcError> {
    let s = stat(std::process::id())?;
    Ok((s.utime + s.stime + s.children) as f64 / ticks_per_second())
}

/// Parses `VmRSS:` (kB) out of `/proc/<pid>/status`, in bytes. A kernel
/// thread or a zombie has no VmRSS line: `None`.
pub fn parse_vm_rss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_ascii_whitespace();
    let kb: u64 = parts.next()?.parse().ok()?;
    (parts.next()? == "kB").then_some(kb * 1024)
}

fn read(path: PathBuf) -> Result<String, ProcError> {
    fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
}

/// `/proc/<pid>/stat` of one process.
pub fn stat(pid: u32) -> Result<StatLine, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = read(path.clone())?;
    parse_stat(&text).ok_or(ProcError::Format {
        path,
        what: "ppid/utime/stime",
    })
}

/// Resident set size of one process in bytes (0 for a process without
/// user memory).
pub fn rss_bytes(pid: u32) -> Result<u64, ProcError> {
    let text = read(PathBuf::from(format!("/proc/{pid}/status")))?;
    Ok(parse_vm_rss(&text).unwrap_or(0))
}

/// `pid` and all its descendants, found by scanning every process's parent.
/// Processes that vanish during the scan are skipped.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(s) = stat(p) {
                children.entry(s.ppid).or_default().push(p);
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while let Some(&p) = tree.get(i) {
        if let Some(kids) = children.get(&p) {
            tree.extend(kids.iter().copied().filter(|k| *k != p));
        }
        i += 1;
    }
    tree
}

/// Open file descriptors of one process (sockets included): how the
/// benchmark checks that a target really holds the idle connections.
pub fn fd_count(pid: u32) -> Result<u64, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/fd"));
    let dir = fs::read_dir(&path).map_err(|source| ProcError::Read { path, source })?;
    Ok(dir.flatten().count() as u64)
}

/// Clock ticks per second of `/proc` CPU times.
fn ticks_per_second() -> f64 {
    // u64 → f64: tick rates are tiny (100 in practice).
    rustix::param::clock_ticks_per_second() as f64
}

/// A server's cost at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU seconds (user + system) since the processes started.
    pub cpu_seconds: f64,
    /// Resident memory, bytes, summed over the processes.
    pub rss_bytes: u64,
    /// Open file descriptors, summed over the processes.
    pub fds: u64,
}

/// Samples CPU time and RSS of `root` and its descendants. Shared pages
/// are counted once per process; differences between samples (what the
/// benchmark reports per connection) are unaffected by that.
pub fn sample_tree(root: u32) -> Result<Usage, ProcError> {
    let tree = process_tree(root);
    let mut ticks = 0u64;
    let mut rss = 0u64;
    let mut fds = 0u64;
    for (i, pid) in tree.iter().enumerate() {
        // The root must be there; a child may exit between scan and read.
        match (stat(*pid), rss_bytes(*pid), fd_count(*pid)) {
            (Ok(s), Ok(r), Ok(f)) => {
                ticks += s.utime + s.stime;
                rss += r;
                fds += f;
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) if i == 0 => return Err(e),
            _ => {}
        }
    }
    Ok(Usage {
        cpu_seconds: ticks as f64 / ticks_per_second(),
        rss_bytes: rss,
        fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_command_name() {
        let line = "4242 (we ird) (x)) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 3 0 1000 10000000 500 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(StatLine {
                ppid: 17,
                utime: 250,
                stime: 75,
                children: 0,
            })
        );
        assert_eq!(parse_stat("4242 (truncated) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn system_busy() {
        let stat = "cpu  100 5 50 9000 40 3 2 1 0 0\ncpu0 50 2 25 4500 20 1 1 0 0 0\n";
        assert_eq!(parse_system_busy(stat), Some(100 + 5 + 50 + 3 + 2 + 1));
        assert_eq!(parse_system_busy("cpu0 1 2 3\n"), None);
        assert_eq!(parse_system_busy("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn vm_rss() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
    }
}
