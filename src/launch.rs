//! How a run is launched across processes, by the conventions users already have: this process's
//! rank and the rendezvous address from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
//! MASTER_ADDR, MASTER_PORT) or SLURM's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the job's node
//! list), and `recipe run --nproc-per-node N`, which spawns the local ranks itself with torchrun's
//! variables, forwards Ctrl-C / SIGTERM, and stops the others when one fails.
//!
//! No libtorch here: `recipe plan` reads the same environment to show the layout a run will use.

use std::ffi::OsString;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Who started this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// One process, no launcher.
    Single,
    /// `recipe run --nproc-per-node`.
    Recipe,
    /// torchrun (or anything else that sets its variables).
    Torchrun,
    /// SLURM's srun.
    Slurm,
}

/// This process's place among the ranks of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessEnv {
    pub launcher: Launcher,
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    /// Ranks on this node.
    pub local_world_size: usize,
    pub nodes: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent hosts the TCPStore; every rank joins it as a client.
    pub agent_store: bool,
    /// torchrun's restart count (keys of earlier attempts stay in the agent's store).
    pub restart: u64,
}

/// Set by `recipe run --nproc-per-node` in the ranks it spawns.
pub const LAUNCHER_VAR: &str = "RECIPE_LAUNCHER";

impl ProcessEnv {
    pub fn single() -> ProcessEnv {
        ProcessEnv {
            launcher: Launcher::Single,
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_world_size: 1,
            nodes: 1,
            master_addr: "127.0.0.1".into(),
            master_port: 0,
            agent_store: false,
            restart: 0,
        }
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    pub fn is_distributed(&self) -> bool {
        self.world_size > 1
    }

    /// Whether this process joins a process group (any launched run, even of one rank).
    pub fn joins_group(&self) -> bool {
        self.launcher != Launcher::Single
    }

    /// Reads the launcher's variables; a variable that is set but malformed or inconsistent is an
    /// error naming it.
    pub fn from_env() -> Result<ProcessEnv, String> {
        Self::from_vars(&|name| std::env::var(name).ok())
    }

    pub fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Result<ProcessEnv, String> {
        let number = |name: &str| -> Result<Option<usize>, String> {
            match var(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| format!("{name}={v:?}: expected a number")),
            }
        };
        if let Some(world_size) = number("WORLD_SIZE")? {
            let launcher =
                if var(LAUNCHER_VAR).as_deref() == Some("recipe") { Launcher::Recipe } else { Launcher::Torchrun };
            if world_size == 0 {
                return Err("WORLD_SIZE=0: expected at least 1".into());
            }
            let rank = number("RANK")?.unwrap_or(0);
            if rank >= world_size {
                return Err(format!("RANK={rank} is not below WORLD_SIZE={world_size}"));
            }
            if world_size == 1 {
                // One rank under a launcher still forms a process group when it says where (a
                // one-GPU NCCL run exercises the same path as many); otherwise it runs alone.
                let (Some(addr), Some(p)) = (var("MASTER_ADDR"), var("MASTER_PORT")) else {
                    return Ok(ProcessEnv::single());
                };
                return Ok(ProcessEnv {
                    launcher,
                    master_addr: addr,
                    master_port: port(&p, "MASTER_PORT")?,
                    agent_store: var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true")),
                    restart: number("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0) as u64,
                    ..ProcessEnv::single()
                });
            }
            let missing: Vec<&str> =
                ["RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"].into_iter().filter(|n| var(n).is_none()).collect();
            if !missing.is_empty() {
                return Err(format!(
                    "WORLD_SIZE={world_size} but {} {} not set: launch the ranks with `recipe run --nproc-per-node N`, \
                     torchrun or srun",
                    missing.join(", "),
                    if missing.len() == 1 { "is" } else { "are" }
                ));
            }
            let local_rank = number("LOCAL_RANK")?.unwrap_or(0);
            let local_world_size = number("LOCAL_WORLD_SIZE")?.unwrap_or(world_size);
            if local_rank >= local_world_size {
                return Err(format!("LOCAL_RANK={local_rank} is not below LOCAL_WORLD_SIZE={local_world_size}"));
            }
            return Ok(ProcessEnv {
                launcher,
                rank,
                world_size,
                local_rank,
                local_world_size,
                nodes: world_size.div_ceil(local_world_size),
                master_addr: var("MASTER_ADDR").unwrap_or_default(),
                master_port: port(&var("MASTER_PORT").unwrap_or_default(), "MASTER_PORT")?,
                agent_store: var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true")),
                restart: number("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0) as u64,
            });
        }
        // srun: one task per rank. The batch script itself (no step id) is not a rank.
        let in_step = var("SLURM_STEP_ID").or_else(|| var("SLURM_STEPID")).is_some();
        if let (Some(ntasks), Some(procid), true) = (number("SLURM_NTASKS")?, number("SLURM_PROCID")?, in_step)
            && ntasks > 1
        {
            if procid >= ntasks {
                return Err(format!("SLURM_PROCID={procid} is not below SLURM_NTASKS={ntasks}"));
            }
            let nodes = number("SLURM_STEP_NUM_NODES")?.or(number("SLURM_NNODES")?).unwrap_or(1).max(1);
            let master_addr = match var("MASTER_ADDR") {
                Some(a) => a,
                None => {
                    let list = var("SLURM_STEP_NODELIST")
                        .or_else(|| var("SLURM_JOB_NODELIST"))
                        .or_else(|| var("SLURM_NODELIST"))
                        .ok_or("SLURM: neither MASTER_ADDR nor SLURM_JOB_NODELIST is set")?;
                    first_host(&list).ok_or_else(|| format!("SLURM_JOB_NODELIST={list:?}: no host in it"))?
                }
            };
            // Jobs sharing a node get different ports unless MASTER_PORT says otherwise.
            let master_port = match var("MASTER_PORT") {
                Some(p) => port(&p, "MASTER_PORT")?,
                None => 20000 + (number("SLURM_JOB_ID")?.unwrap_or(0) % 20000) as u16,
            };
            return Ok(ProcessEnv {
                launcher: Launcher::Slurm,
                rank: procid,
                world_size: ntasks,
                local_rank: number("SLURM_LOCALID")?.unwrap_or(0),
                local_world_size: ntasks.div_ceil(nodes),
                nodes,
                master_addr,
                master_port,
                agent_store: false,
                restart: 0,
            });
        }
        Ok(ProcessEnv::single())
    }
}

fn port(text: &str, name: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{name}={text:?}: expected a port number (1-65535)")),
    }
}

/// The first host of a SLURM node list: `gpu[03-05,9],cpu1` -> `gpu03`.
pub fn first_host(list: &str) -> Option<String> {
    let list = list.trim();
    let end = list.find([',', '[']).unwrap_or(list.len());
    let prefix = &list[..end];
    if list[end..].starts_with('[') {
        let inner = &list[end + 1..list[end..].find(']').map(|i| end + i)?];
        let first = inner.split([',', '-']).next()?;
        Some(format!("{prefix}{first}"))
    } else if prefix.is_empty() {
        None
    } else {
        Some(prefix.to_string())
    }
}

/// `recipe run --nproc-per-node` and friends.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    pub nproc_per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    /// None: a free port on this machine (single node only).
    pub master_port: Option<u16>,
}

static SIGNAL_RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember_signal(sig: libc::c_int) {
    SIGNAL_RECEIVED.store(sig, Ordering::SeqCst);
}

/// A free TCP port on this machine (bound, read and released; torchrun does the same).
pub fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("finding a free port: {e}"))
}

/// What ended a spawned rank.
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => {
            format!("was killed by signal {sig}{}", if sig == libc::SIGKILL { " (SIGKILL)" } else { "" })
        }
        _ => "ended".into(),
    }
}

/// Spawns this node's ranks as `program args...` with torchrun's variables, waits for them, and
/// returns the exit code: 0 when every rank succeeded; else the first failed rank's code, after
/// the others were stopped (SIGTERM, then SIGKILL after `grace`). Ctrl-C / SIGTERM reaching this
/// process are forwarded once to every rank, which saves a checkpoint and stops.
pub fn spawn(
    program: &std::path::Path,
    args: &[OsString],
    opts: &SpawnOptions,
    grace: Duration,
) -> Result<i32, String> {
    use std::os::unix::process::CommandExt;
    let n = opts.nproc_per_node.max(1);
    let world = n * opts.nnodes.max(1);
    let port = match opts.master_port {
        Some(p) => p,
        None if opts.nnodes <= 1 => free_port()?,
        None => return Err("--master-port is needed with --nnodes above 1".into()),
    };
    // SAFETY: the handler stores to an atomic only.
    unsafe {
        libc::signal(libc::SIGINT, remember_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, remember_signal as *const () as libc::sighandler_t);
    }
    let mut children = Vec::with_capacity(n);
    for local in 0..n {
        let rank = opts.node_rank * n + local;
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("GROUP_RANK", opts.node_rank.to_string())
            .env("MASTER_ADDR", &opts.master_addr)
            .env("MASTER_PORT", port.to_string())
            .env(LAUNCHER_VAR, "recipe")
            // Own process group: a terminal's Ctrl-C reaches this launcher only, which forwards it
            // once (a second SIGINT would end a rank before it saves).
            .process_group(0);
        // SAFETY: prctl, getppid and raise are async-signal-safe; a rank must not outlive its
        // launcher (and one whose launcher died before the prctl ends at once).
        let launcher = std::process::id();
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() as u32 != launcher {
                    libc::raise(libc::SIGTERM);
                }
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => children.push((rank, child)),
            Err(e) => {
                for (_, c) in &mut children {
                    let _ = c.kill();
                }
                return Err(format!("starting rank {rank} ({}): {e}", program.display()));
            }
        }
    }
    let signal_all = |children: &mut Vec<(usize, std::process::Child)>, sig: libc::c_int| {
        for (_, c) in children.iter_mut() {
            // SAFETY: signalling our own child by pid.
            unsafe {
                libc::kill(c.id() as libc::pid_t, sig);
            }
        }
    };
    let mut running: Vec<(usize, std::process::Child)> = children;
    let mut failure: Option<(usize, std::process::ExitStatus)> = None;
    let mut stopping_since: Option<Instant> = None;
    let mut forwarded = 0;
    while !running.is_empty() {
        let sig = SIGNAL_RECEIVED.swap(0, Ordering::SeqCst);
        if sig != 0 {
            forwarded += 1;
            signal_all(&mut running, if forwarded > 1 { libc::SIGKILL } else { sig });
        }
        let mut i = 0;
        while i < running.len() {
            match running[i].1.try_wait() {
                Ok(Some(status)) => {
                    let (rank, _) = running.remove(i);
                    if !status.success() && failure.is_none() {
                        failure = Some((rank, status));
                        eprintln!("recipe run: rank {rank} {}; stopping the other ranks", describe(status));
                        signal_all(&mut running, libc::SIGTERM);
                        stopping_since = Some(Instant::now());
                    }
                }
                Ok(None) => i += 1,
                Err(e) => return Err(format!("waiting for rank {}: {e}", running[i].0)),
            }
        }
        if stopping_since.is_some_and(|t| t.elapsed() > grace) {
            signal_all(&mut running, libc::SIGKILL);
            stopping_since = None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(match failure {
        None => 0,
        Some((rank, status)) => {
            eprintln!("recipe run: failed: rank {rank} {}", describe(status));
            status.code().filter(|c| *c != 0).unwrap_or(1)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<ProcessEnv, String> {
        let map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ProcessEnv::from_vars(&|n| map.get(n).cloned())
    }

    #[test]
    fn torchrun_variables_give_the_rank() {
        let e = env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ])
        .unwrap();
        assert_eq!((e.launcher, e.rank, e.world_size, e.local_rank, e.nodes), (Launcher::Torchrun, 3, 4, 1, 2));
        assert!(e.agent_store);
    }

    #[test]
    fn a_world_without_a_master_is_an_error() {
        let err = env(&[("WORLD_SIZE", "4"), ("RANK", "1"), ("LOCAL_RANK", "1")]).unwrap_err();
        assert!(err.contains("MASTER_ADDR, MASTER_PORT are not set"), "{err}");
        assert!(env(&[("WORLD_SIZE", "2"), ("RANK", "2")]).unwrap_err().contains("RANK=2"));
    }

    #[test]
    fn slurm_variables_give_the_rank_and_master() {
        let e = env(&[
            ("SLURM_NTASKS", "8"),
            ("SLURM_PROCID", "5"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NNODES", "2"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_JOB_ID", "12345"),
            ("SLURM_JOB_NODELIST", "gpu[07-08]"),
        ])
        .unwrap();
        assert_eq!((e.launcher, e.rank, e.world_size, e.local_rank), (Launcher::Slurm, 5, 8, 1));
        assert_eq!((e.master_addr.as_str(), e.master_port, e.local_world_size), ("gpu07", 32345, 4));
        // The batch script itself is not a rank.
        let batch = env(&[("SLURM_NTASKS", "8"), ("SLURM_PROCID", "0")]).unwrap();
        assert_eq!(batch.launcher, Launcher::Single);
    }

    #[test]
    fn first_host_of_node_lists() {
        assert_eq!(first_host("gpu[03-05,9],cpu1").as_deref(), Some("gpu03"));
        assert_eq!(first_host("a1,b2").as_deref(), Some("a1"));
        assert_eq!(first_host("single").as_deref(), Some("single"));
        assert_eq!(first_host("").as_deref(), None);
    }
}
