//! Data-parallel training over NCCL, as the reference trains with torchrun: one process per
//! GPU ("rank"), each taking its slice of the global batch; gradients summed over the ranks in
//! one flat buffer (the step already scales by 1 / global batch, so the sum is the
//! reference's gradient); parameters broadcast from rank 0 at the start; the puzzle
//! embedding's gradient rows and ids of every rank gathered (not a table-sized all-reduce) and
//! the same sparse SignSGD update applied on every rank; rank 0 alone writes checkpoints,
//! metrics and evaluations.
//!
//! - Launch: `hrm train --nproc N` starts N copies of the binary ([`launch`]) with the
//!   torchrun environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`);
//!   a cluster scheduler can set the same variables itself ([`DistEnv::from_env`]).
//! - Rendezvous ([`Dist::connect`]): rank 0 listens on MASTER_ADDR:MASTER_PORT, makes the NCCL
//!   unique id and hands it to every rank that says hello with the same world size.
//! - Health: those TCP connections stay open for the whole run. A rank whose connection drops
//!   without a goodbye (its process died) or that reports a failure makes rank 0 abort the NCCL
//!   communicator and tell every other rank to do the same, so no rank waits forever in a
//!   collective: each stops with an error naming the rank. A collective that takes longer than
//!   `HRM_DIST_TIMEOUT_S` (default 600 s) aborts the group too.
//! - Exactness: each rank draws the whole global batch and the whole exploration draw from the
//!   same streams and keeps its rows, so rank r's rows are rows [r*B/N, (r+1)*B/N) of the single
//!   process run with the same seed, and the checkpoint holds the carry of all rows. What
//!   differs from one process is only the order of the gradient sums (per rank, then across the
//!   ranks in rank order): see `tests/distributed.rs` for the bound.

use crate::act::{Batch, Carry};
use crate::backend::collective::{Collective, ProcessGroup};
use crate::backend::{ActReport, Backend};
use crate::model::ParamSet;
use anyhow::{Context, Result, anyhow, bail};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Trainer;

/// The torchrun variables of one rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn parse_env<T: std::str::FromStr>(name: &str, v: &str) -> Result<T> {
    v.trim().parse().map_err(|_| anyhow!("{name}={v:?}: not a valid number"))
}

impl DistEnv {
    /// The variables a launcher (ours or torchrun's, or a scheduler) set; `None` when neither
    /// `RANK` nor `WORLD_SIZE` is set (a single process).
    pub fn from_env() -> Result<Option<DistEnv>> {
        let (rank, world) = (env_var("RANK"), env_var("WORLD_SIZE"));
        let (rank, world) = match (rank, world) {
            (None, None) => return Ok(None),
            (Some(r), Some(w)) => (parse_env::<usize>("RANK", &r)?, parse_env::<usize>("WORLD_SIZE", &w)?),
            (Some(_), None) => bail!("RANK is set but WORLD_SIZE is not: set both (or neither)"),
            (None, Some(_)) => bail!("WORLD_SIZE is set but RANK is not: set both (or neither)"),
        };
        if world == 0 || rank >= world {
            bail!("RANK={rank} with WORLD_SIZE={world}: the rank must lie in [0, WORLD_SIZE)");
        }
        let local_rank = match env_var("LOCAL_RANK") {
            Some(v) => parse_env("LOCAL_RANK", &v)?,
            None => rank,
        };
        let master_addr = env_var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let master_port = match env_var("MASTER_PORT") {
            Some(v) => parse_env("MASTER_PORT", &v)?,
            None => 29500,
        };
        Ok(Some(DistEnv { rank, world, local_rank, master_addr, master_port }))
    }
}

/// Seconds from `HRM_DIST_TIMEOUT_S` (joining, and the longest a collective may wait).
pub fn timeout() -> Duration {
    let s = env_var("HRM_DIST_TIMEOUT_S").and_then(|v| v.parse::<f64>().ok()).filter(|s| *s > 0.0);
    Duration::from_secs_f64(s.unwrap_or(600.0))
}

/// This process's place in a data-parallel run.
pub struct Dist {
    pub env: DistEnv,
    pub group: Arc<ProcessGroup>,
    /// Rank 0: one connection per other rank (index = rank); others: the one to rank 0.
    links: Vec<Option<Arc<Mutex<TcpStream>>>>,
    done: Arc<AtomicBool>,
    in_collective: Arc<Mutex<Option<(Instant, &'static str)>>>,
}

fn send_line(s: &Mutex<TcpStream>, v: &serde_json::Value) {
    if let Ok(mut s) = s.lock() {
        let _ = writeln!(s, "{v}");
        let _ = s.flush();
    }
}

impl Dist {
    pub fn rank(&self) -> usize {
        self.env.rank
    }
    pub fn world(&self) -> usize {
        self.env.world
    }
    pub fn is_main(&self) -> bool {
        self.env.rank == 0
    }

    /// The rendezvous: rank 0 makes the NCCL unique id (`make_id`) and hands it to every rank;
    /// returns once all ranks have joined (or an error naming who is missing, or why).
    pub fn connect(env: &DistEnv, make_id: impl FnOnce() -> Result<[u8; 128]>) -> Result<Dist> {
        let limit = timeout().min(Duration::from_secs(
            env_var("HRM_DIST_JOIN_TIMEOUT_S").and_then(|v| v.parse().ok()).unwrap_or(120),
        ));
        let (id, links) = if env.rank == 0 { serve(env, make_id, limit)? } else { join(env, limit)? };
        let group = Arc::new(ProcessGroup::new(env.rank, env.world, id, timeout()));
        let d = Dist {
            env: env.clone(),
            group,
            links,
            done: Arc::new(AtomicBool::new(false)),
            in_collective: Arc::new(Mutex::new(None)),
        };
        d.start_health_threads();
        d.start_watchdog();
        Ok(d)
    }

    fn start_health_threads(&self) {
        for (peer, link) in self.links.iter().enumerate() {
            let Some(link) = link else { continue };
            let reader = match link.lock().unwrap().try_clone() {
                Ok(s) => s,
                Err(_) => continue,
            };
            let group = self.group.clone();
            let done = self.done.clone();
            let others: Vec<Arc<Mutex<TcpStream>>> = self
                .links
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != peer)
                .filter_map(|(_, l)| l.clone())
                .collect();
            let me = self.env.rank;
            std::thread::spawn(move || {
                let mut lines = BufReader::new(reader).lines();
                let reason = loop {
                    match lines.next() {
                        Some(Ok(line)) => {
                            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                            if v.get("bye").is_some() {
                                return;
                            }
                            if let Some(msg) = v.get("fail").and_then(|m| m.as_str()) {
                                break format!("rank {peer} failed: {msg}");
                            }
                            if let Some(msg) = v.get("abort").and_then(|m| m.as_str()) {
                                break msg.to_string();
                            }
                        }
                        _ => {
                            break format!(
                                "rank {peer} disconnected without finishing (its process exited or \
                                 was killed)"
                            );
                        }
                    }
                };
                if done.load(Ordering::SeqCst) {
                    return;
                }
                if me == 0 {
                    // Tell every other rank, then stop our own collectives.
                    for o in &others {
                        send_line(o, &serde_json::json!({ "abort": reason }));
                    }
                }
                eprintln!("rank {me}: stopping: {reason}");
                group.abort(&reason);
            });
        }
    }

    fn start_watchdog(&self) {
        let group = self.group.clone();
        let done = self.done.clone();
        let state = self.in_collective.clone();
        let links = self.links.clone();
        let me = self.env.rank;
        let limit = timeout();
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) && !group.is_aborted() {
                std::thread::sleep(Duration::from_millis(200));
                let late = state.lock().unwrap().filter(|(t, _)| t.elapsed() > limit);
                if let Some((_, what)) = late {
                    let reason = format!(
                        "rank {me}: {what} waited more than {:.0} s for the other ranks \
                         (HRM_DIST_TIMEOUT_S)",
                        limit.as_secs_f64()
                    );
                    for l in links.iter().flatten() {
                        send_line(l, &serde_json::json!({ "fail": reason }));
                    }
                    group.abort(&reason);
                    return;
                }
            }
        });
    }

    /// Runs one collective with the watchdog armed.
    pub fn collective<B: Backend>(
        &self,
        be: &B,
        what: &'static str,
        op: Collective,
        bufs: &mut [&mut B::F32],
    ) -> Result<()> {
        *self.in_collective.lock().unwrap() = Some((Instant::now(), what));
        let r = be.collective_f32(&self.group, op, bufs);
        *self.in_collective.lock().unwrap() = None;
        r.with_context(|| format!("{what} across {} ranks (rank {})", self.world(), self.rank()))
    }

    /// The orderly end: the other ranks no longer treat our disconnection as a failure.
    pub fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
        for l in self.links.iter().flatten() {
            send_line(l, &serde_json::json!({ "bye": self.env.rank }));
        }
    }

    /// Reports this rank's failure to the others (they stop naming it).
    pub fn fail(&self, why: &str) {
        if self.group.is_aborted() {
            return; // the failure came from elsewhere; the others know
        }
        self.done.store(true, Ordering::SeqCst);
        for l in self.links.iter().flatten() {
            send_line(l, &serde_json::json!({ "fail": why }));
        }
    }
}

type Links = Vec<Option<Arc<Mutex<TcpStream>>>>;

fn hex(id: &[u8; 128]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<[u8; 128]> {
    if s.len() != 256 {
        bail!("rendezvous: malformed NCCL id");
    }
    let mut out = [0u8; 128];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
            .map_err(|_| anyhow!("rendezvous: malformed NCCL id"))?;
    }
    Ok(out)
}

fn read_json_line(r: &mut BufReader<TcpStream>) -> Result<serde_json::Value> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        bail!("connection closed");
    }
    Ok(serde_json::from_str(&line)?)
}

/// Rank 0: listen, collect every rank's hello, hand out the id.
fn serve(
    env: &DistEnv,
    make_id: impl FnOnce() -> Result<[u8; 128]>,
    limit: Duration,
) -> Result<([u8; 128], Links)> {
    let addr = format!("0.0.0.0:{}", env.master_port);
    let listener = TcpListener::bind(&addr).with_context(|| {
        format!("rank 0: cannot listen for the rendezvous on port {} (MASTER_PORT)", env.master_port)
    })?;
    let id = make_id()?;
    listener.set_nonblocking(true)?;
    let start = Instant::now();
    let mut peers: Vec<Option<(TcpStream, u64)>> = (0..env.world).map(|_| None).collect();
    let mut joined = 1;
    while joined < env.world {
        if start.elapsed() > limit {
            let missing: Vec<String> =
                (1..env.world).filter(|r| peers[*r].is_none()).map(|r| r.to_string()).collect();
            bail!(
                "rendezvous on port {}: rank(s) {} of world size {} did not join within {:.0} s",
                env.master_port,
                missing.join(", "),
                env.world,
                limit.as_secs_f64()
            );
        }
        let (stream, _) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut r = BufReader::new(stream.try_clone()?);
        let Ok(hello) = read_json_line(&mut r) else { continue };
        let (Some(rank), Some(world)) = (hello["rank"].as_u64(), hello["world"].as_u64()) else { continue };
        let pid = hello["pid"].as_u64().unwrap_or(0);
        let problem = if world as usize != env.world {
            Some(format!("rank {rank} (pid {pid}) says world size {world} but rank 0 has {}", env.world))
        } else if rank == 0 || rank as usize >= env.world {
            Some(format!("a process (pid {pid}) says it is rank {rank} of {world}"))
        } else if peers[rank as usize].is_some() {
            Some(format!(
                "rank {rank} joined twice (pids {} and {pid})",
                peers[rank as usize].as_ref().unwrap().1
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            let mut s = stream;
            let _ = writeln!(s, "{}", serde_json::json!({ "error": p }));
            bail!("rendezvous: {p}");
        }
        peers[rank as usize] = Some((stream, pid));
        joined += 1;
    }
    let mut links: Links = (0..env.world).map(|_| None).collect();
    for (r, p) in peers.into_iter().enumerate() {
        if let Some((mut s, _)) = p {
            writeln!(s, "{}", serde_json::json!({ "id": hex(&id) }))?;
            s.set_read_timeout(None)?;
            links[r] = Some(Arc::new(Mutex::new(s)));
        }
    }
    Ok((id, links))
}

/// Ranks > 0: reach rank 0 (retrying until it listens), say hello, receive the id.
fn join(env: &DistEnv, limit: Duration) -> Result<([u8; 128], Links)> {
    let target = format!("{}:{}", env.master_addr, env.master_port);
    let start = Instant::now();
    let stream = loop {
        let attempt = target
            .to_socket_addrs()
            .map_err(|e| anyhow!("{e}"))
            .and_then(|mut a| a.next().ok_or_else(|| anyhow!("no address")))
            .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).map_err(|e| anyhow!("{e}")));
        match attempt {
            Ok(s) => break s,
            Err(e) if start.elapsed() > limit => bail!(
                "rank {}: cannot reach rank 0's rendezvous at {target} (MASTER_ADDR:MASTER_PORT) \
                 within {:.0} s: {e}",
                env.rank,
                limit.as_secs_f64()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let mut w = stream.try_clone()?;
    writeln!(
        w,
        "{}",
        serde_json::json!({ "rank": env.rank, "world": env.world, "pid": std::process::id() })
    )?;
    stream.set_read_timeout(Some(limit))?;
    let mut r = BufReader::new(stream.try_clone()?);
    let reply = read_json_line(&mut r)
        .map_err(|e| anyhow!("rank {}: the rendezvous at {target} did not answer: {e}", env.rank))?;
    if let Some(e) = reply["error"].as_str() {
        bail!("rank {}: rendezvous refused: {e}", env.rank);
    }
    let id = unhex(reply["id"].as_str().unwrap_or(""))?;
    stream.set_read_timeout(None)?;
    let mut links: Links = (0..env.world).map(|_| None).collect();
    links[0] = Some(Arc::new(Mutex::new(stream)));
    Ok((id, links))
}

// ---- The hooks of the training step. ----

/// Every rank's `mine` words, concatenated in rank order, on every rank: rank r holds
/// `lens[r]` words (every rank knows all lengths). One all-gather of f32 bit patterns (pure
/// data movement, so the bits arrive intact), each rank's words padded to the longest.
pub fn all_gather_words<B: Backend>(
    d: &Dist,
    be: &B,
    what: &'static str,
    mine: &[u32],
    lens: &[usize],
) -> Result<Vec<u32>> {
    if lens.len() != d.world() || lens[d.rank()] != mine.len() {
        bail!("{what}: rank {} holds {} words, the ranks expected {:?}", d.rank(), mine.len(), lens);
    }
    let per = lens.iter().copied().max().unwrap_or(0).max(1);
    let mut host = vec![0f32; per * d.world()];
    for (o, w) in host[d.rank() * per..].iter_mut().zip(mine) {
        *o = f32::from_bits(*w);
    }
    let mut buf = be.upload_f32(&host);
    d.collective(be, what, Collective::AllGather, &mut [&mut buf])?;
    let all = be.download_f32(&buf);
    let mut out = Vec::with_capacity(lens.iter().sum());
    for (r, &n) in lens.iter().enumerate() {
        out.extend(all[r * per..r * per + n].iter().map(|x| x.to_bits()));
    }
    Ok(out)
}

/// Rows [lo, hi) of the global batch that `rank` of `world` trains on.
pub fn rows(batch: usize, rank: usize, world: usize) -> (usize, usize) {
    (rank * batch / world, (rank + 1) * batch / world)
}

/// This rank's rows of the global batch and the index of its first row (everything and 0 for
/// a single process). The exploration draw is keyed by the global row, so every rank draws
/// what a single process would for the same rows.
pub fn shard(dist: Option<&Dist>, batch: Batch) -> (Batch, usize) {
    let Some(d) = dist else { return (batch, 0) };
    let b = batch.len();
    let (lo, hi) = rows(b, d.rank(), d.world());
    let n = batch.inputs.len() / b.max(1);
    let out = Batch {
        inputs: batch.inputs[lo * n..hi * n].to_vec(),
        puzzle_ids: batch.puzzle_ids[lo..hi].to_vec(),
        labels: batch.labels.map(|l| l[lo * n..hi * n].to_vec()),
    };
    (out, lo)
}

/// After the local backward: the dense gradients summed over the ranks (one flat all-reduce
/// on the device; the puzzle embedding's rows are gathered instead, [`gather_puzzle_rows`]).
/// Nothing for a single process.
pub fn reduce_grads<B: Backend>(dist: Option<&Dist>, be: &B, grads: &mut ParamSet<B::F32>) -> Result<()> {
    let Some(d) = dist else { return Ok(()) };
    d.collective(be, "gradient all-reduce", Collective::Sum, &mut grads.dense_tensors_mut())
}

/// The puzzle embedding's gradient rows and the puzzle ids of every rank's current rows, in
/// rank order (= global row order), on the backend, for the sparse update every rank then
/// applies alike; `None` for a single process (its own rows serve) or a model without a
/// puzzle embedding (`rows` None: nothing to update, nothing gathered). One
/// all-gather of ids (as f32 bit patterns: pure data movement, so the bits arrive intact) and
/// rows together: batch x (puzzle_emb_ndim + 1) values per rank instead of the table-sized
/// all-reduce a dense gradient would need (2 GB per step at ARC's million ids).
pub fn gather_puzzle_rows<B: Backend>(
    dist: Option<&Dist>,
    be: &B,
    rows: Option<&B::F32>,
    ids: &B::I32,
) -> Result<Option<(B::F32, B::I32)>> {
    let Some(d) = dist else { return Ok(None) };
    let Some(rows) = rows else { return Ok(None) };
    let mine_ids = be.download_i32(ids);
    let mine_rows = be.download_f32(rows);
    let n = mine_ids.len();
    if n == 0 || mine_rows.len() % n != 0 {
        bail!("puzzle gradient rows: {} values for {n} rows", mine_rows.len());
    }
    let width = mine_rows.len() / n;
    let per = n * (width + 1);
    let mut host = vec![0f32; per * d.world()];
    let slot = &mut host[d.rank() * per..(d.rank() + 1) * per];
    for (o, id) in slot.iter_mut().zip(&mine_ids) {
        *o = f32::from_bits(*id as u32);
    }
    slot[n..].copy_from_slice(&mine_rows);
    let mut buf = be.upload_f32(&host);
    d.collective(be, "puzzle gradient rows all-gather", Collective::AllGather, &mut [&mut buf])?;
    let all = be.download_f32(&buf);
    let mut all_ids = Vec::with_capacity(n * d.world());
    let mut all_rows = Vec::with_capacity(n * width * d.world());
    for r in 0..d.world() {
        let p = &all[r * per..(r + 1) * per];
        all_ids.extend(p[..n].iter().map(|x| x.to_bits() as i32));
        all_rows.extend_from_slice(&p[n..]);
    }
    Ok(Some((be.upload_f32(&all_rows), be.upload_i32(&all_ids))))
}

/// The window's sums over all ranks (in rank order, in f64, so every rank reports the same),
/// the earliest bad step of any rank. A single process returns its own.
pub fn reduce_report<B: Backend>(dist: Option<&Dist>, be: &B, r: ActReport) -> Result<ActReport> {
    let Some(d) = dist else { return Ok(r) };
    const N: usize = 13;
    let none = u32::MAX as f64;
    let mine: [f64; N] = [
        r.steps as f64,
        r.lm_loss,
        r.q_halt_loss,
        r.q_continue_loss,
        r.count as f64,
        r.exact_correct as f64,
        r.token_accuracy_sum,
        r.steps_sum as f64,
        r.q_halt_correct as f64,
        r.bad_step.map_or(none, |s| s as f64),
        r.bad_loss as u8 as f64,
        r.bad_tensor.map_or(none, |t| t as f64),
        0.0,
    ];
    let per = 2 * N;
    let mut host = vec![0f32; per * d.world()];
    for (i, v) in mine.iter().enumerate() {
        let bits = v.to_bits();
        host[d.rank() * per + 2 * i] = f32::from_bits(bits as u32);
        host[d.rank() * per + 2 * i + 1] = f32::from_bits((bits >> 32) as u32);
    }
    let mut buf = be.upload_f32(&host);
    d.collective(be, "metrics all-gather", Collective::AllGather, &mut [&mut buf])?;
    let all = be.download_f32(&buf);
    let get = |rank: usize, i: usize| {
        let p = &all[rank * per..];
        f64::from_bits(p[2 * i].to_bits() as u64 | ((p[2 * i + 1].to_bits() as u64) << 32))
    };
    let mut out = ActReport { steps: r.steps, ..Default::default() };
    let (mut bad, mut bad_loss, mut bad_tensor) = (none, false, none);
    for rank in 0..d.world() {
        out.lm_loss += get(rank, 1);
        out.q_halt_loss += get(rank, 2);
        out.q_continue_loss += get(rank, 3);
        out.count += get(rank, 4) as u64;
        out.exact_correct += get(rank, 5) as u64;
        out.token_accuracy_sum += get(rank, 6);
        out.steps_sum += get(rank, 7) as u64;
        out.q_halt_correct += get(rank, 8) as u64;
        let b = get(rank, 9);
        if b < bad || (b == bad && b != none) {
            if b < bad {
                bad_loss = false;
                bad_tensor = none;
            }
            bad = b;
            bad_loss |= get(rank, 10) != 0.0;
            bad_tensor = bad_tensor.min(get(rank, 11));
        }
    }
    out.bad_step = (bad != none).then_some(bad as u32);
    out.bad_loss = bad_loss;
    out.bad_tensor = (bad_tensor != none).then_some(bad_tensor as usize);
    Ok(out)
}

/// Makes `t` rank `d.rank()` of the run: the carry of its rows (a fresh trainer's carry of the
/// global batch is replaced; a resumed one already holds its rows), and the parameters (and
/// EMA) broadcast from rank 0.
pub fn attach<B: Backend>(be: &B, t: &mut Trainer<B>, d: Arc<Dist>) -> Result<()> {
    let (lo, hi) = rows(t.cfg.batch_size, d.rank(), d.world());
    if !t.cfg.batch_size.is_multiple_of(d.world()) {
        bail!(
            "--batch-size {} does not split evenly over {} ranks: use a multiple of the world size",
            t.cfg.batch_size,
            d.world()
        );
    }
    if t.carry.steps.len() != hi - lo {
        if t.step != 0 {
            bail!(
                "rank {}: the resumed carry holds {} rows, expected {}",
                d.rank(),
                t.carry.steps.len(),
                hi - lo
            );
        }
        t.carry = Carry::fresh(be, &t.model, hi - lo);
    }
    let mut params: Vec<B::F32> = t.model.to_host(be).tensors().iter().map(|h| be.upload_f32(h)).collect();
    let mut refs: Vec<&mut B::F32> = params.iter_mut().collect();
    if let Some(e) = t.ema.as_mut() {
        refs.extend(e.dense_tensors_mut());
    }
    d.collective(be, "parameter broadcast", Collective::Broadcast { root: 0 }, &mut refs)?;
    let hosts: Vec<Vec<f32>> = params.iter().map(|p| be.download_f32(p)).collect();
    let mut it = hosts.into_iter();
    let host = crate::model::HostParams::from_specs(&t.cfg.model, |_| it.next().expect("one per tensor"));
    t.model = crate::hrm::Hrm::new(be, &t.cfg.model, &host);
    // (the puzzle gradient rows are this rank's rows)
    t.grads = t.model.zero_grads(be, hi - lo);
    t.dist = Some(d);
    be.check()
}

/// A checkpoint of the data-parallel run: every rank contributes its carry rows (one
/// all-gather), rank 0 writes. Returns the directory on rank 0, `None` elsewhere. A single
/// process just saves.
pub fn checkpoint<B: Backend>(be: &B, t: &Trainer<B>, run: &Path) -> Result<Option<PathBuf>> {
    use super::checkpoint::{HostCarry, save, save_with};
    let Some(d) = t.dist.as_deref() else { return save(be, t, run).map(Some) };
    let c = HostCarry::of(be, &t.carry);
    let mut mine: Vec<f32> = Vec::new();
    mine.extend(&c.z_h);
    mine.extend(&c.z_l);
    let ints = |v: &[i32]| v.iter().map(|x| f32::from_bits(*x as u32)).collect::<Vec<f32>>();
    mine.extend(c.steps.iter().map(|s| f32::from_bits(*s)));
    mine.extend(c.halted.iter().map(|h| f32::from_bits(*h as u32)));
    mine.extend(ints(&c.data.inputs));
    mine.extend(ints(&c.data.puzzle_ids));
    let n = t.cfg.model.seq_len;
    let labels = c.data.labels.clone().unwrap_or(vec![0; c.steps.len() * n]);
    mine.extend(ints(&labels));
    let per = mine.len();
    let mut host = vec![0f32; per * d.world()];
    host[d.rank() * per..(d.rank() + 1) * per].copy_from_slice(&mine);
    let mut buf = be.upload_f32(&host);
    d.collective(be, "carry all-gather for the checkpoint", Collective::AllGather, &mut [&mut buf])?;
    if !d.is_main() {
        return Ok(None);
    }
    let all = be.download_f32(&buf);
    let rows = c.steps.len();
    let z = c.z_h.len();
    let mut g = HostCarry {
        z_h: Vec::new(),
        z_l: Vec::new(),
        steps: Vec::new(),
        halted: Vec::new(),
        data: Batch { inputs: Vec::new(), puzzle_ids: Vec::new(), labels: Some(Vec::new()) },
    };
    let bits = |s: &[f32]| s.iter().map(|x| x.to_bits() as i32).collect::<Vec<i32>>();
    for r in 0..d.world() {
        let p = &all[r * per..(r + 1) * per];
        let mut o = 0;
        let mut take = |k: usize| {
            let s = &p[o..o + k];
            o += k;
            s
        };
        g.z_h.extend(take(z));
        g.z_l.extend(take(z));
        g.steps.extend(take(rows).iter().map(|x| x.to_bits()));
        g.halted.extend(take(rows).iter().map(|x| x.to_bits() != 0));
        g.data.inputs.extend(bits(take(rows * n)));
        g.data.puzzle_ids.extend(bits(take(rows)));
        g.data.labels.as_mut().expect("labels").extend(bits(take(rows * n)));
    }
    save_with(be, t, run, &g, d.world()).map(Some)
}

/// Whether this process writes the run's files (rank 0, or a single process).
pub fn is_main<B: Backend>(t: &Trainer<B>) -> bool {
    t.dist.as_ref().is_none_or(|d| d.is_main())
}

/// What this process is in a (possibly) data-parallel command.
pub enum Role {
    /// A single process.
    Single,
    /// One rank, started by `--nproc` or a scheduler; its GPU (`LOCAL_RANK`) is selected.
    Rank(DistEnv),
    /// `--nproc N` without the rank variables: the N ranks were launched here and all ended
    /// well (a failed one is an `Err`).
    Launched,
}

/// The data-parallel setup shared by `hrm train` and `hrm eval`: launches the ranks for
/// `--nproc N` (N > 1), checks that a rank's arguments fit (the CUDA backend, the same N),
/// and picks its GPU. `what` names the work in errors ("training", "evaluation").
pub fn setup(
    device: crate::backend::DeviceChoice,
    nproc: Option<usize>,
    master_port: Option<u16>,
    what: &str,
) -> Result<Role> {
    use crate::backend::DeviceChoice;
    let env = DistEnv::from_env()?;
    let cpu_refused = |who: String| {
        anyhow!(
            "{who}: data-parallel {what} runs on the CUDA backend through NCCL (--device cuda, or emu \
             for the CPU emulation)"
        )
    };
    match (&env, nproc) {
        (None, Some(n)) if n > 1 => {
            if device == DeviceChoice::Cpu {
                return Err(cpu_refused(format!("--nproc {n}")));
            }
            check_rank_count(n, device)?;
            if master_port == Some(0) {
                bail!(
                    "--master-port 0: every rank must be told the same port, and 0 means \
                     \"any free one\" to each; pass a port in 1..=65535, or leave the flag out \
                     for a free one chosen once by the launcher"
                );
            }
            launch(n, master_port)?;
            return Ok(Role::Launched);
        }
        (Some(e), Some(n)) if n != e.world => {
            bail!("--nproc {n} but WORLD_SIZE={}: they must agree", e.world)
        }
        _ => {}
    }
    let Some(e) = env else { return Ok(Role::Single) };
    if device == DeviceChoice::Cpu {
        return Err(cpu_refused(format!("rank {} of {}", e.rank, e.world)));
    }
    crate::backend::cuda::device::use_ordinal(e.local_rank);
    Ok(Role::Rank(e))
}

/// Most ranks `--nproc` starts on the emulation: each is a process emulating a whole GPU, so
/// more only oversubscribe the machine (a real node has up to 8 GPUs).
pub const MAX_EMULATED_RANKS: usize = 8;

/// `--nproc N` before any rank is started: one rank per GPU of this machine (at most
/// [`MAX_EMULATED_RANKS`] under the emulation).
fn check_rank_count(n: usize, device: crate::backend::DeviceChoice) -> Result<()> {
    use crate::backend::cuda::device::{DeviceKind, select};
    let emulated = match device {
        crate::backend::DeviceChoice::Emu => true,
        _ => !matches!(select(), Ok(DeviceKind::Gpu)),
    };
    if emulated {
        if n > MAX_EMULATED_RANKS {
            bail!(
                "--nproc {n}: the emulation runs at most {MAX_EMULATED_RANKS} ranks (each a \
                 process emulating a whole GPU)"
            );
        }
        return Ok(());
    }
    // The count alone: no context is opened (that would take memory on every GPU).
    let gpus = cudarc::driver::CudaContext::device_count().map_or(0, |c| c.max(0) as usize);
    if n > gpus {
        bail!("--nproc {n}: this machine has {gpus} GPU(s); one rank runs per GPU");
    }
    Ok(())
}

/// Joins the data-parallel run (rendezvous, NCCL id from rank 0).
pub fn connect(env: &DistEnv) -> Result<Arc<Dist>> {
    Ok(Arc::new(Dist::connect(env, crate::backend::cuda::nccl::unique_id)?))
}

/// Runs `work` as this rank and tells the other ranks how it ended (a failure names it).
pub fn ranked<T>(dist: Option<&Dist>, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let r = work();
    if let Some(d) = dist {
        match &r {
            Ok(_) => d.finish(),
            Err(e) => d.fail(&format!("{e:#}")),
        }
    }
    r
}

// ---- The launcher. ----

/// The directory holding the real `libnccl.so` of `scripts/setup-cuda --nccl` (the wheel's
/// `nvidia/*/lib/`, where the script adds the `libnccl.so` link), if installed.
fn venv_nccl_dir() -> Option<PathBuf> {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-cuda/lib");
    for py in std::fs::read_dir(lib).ok()?.flatten() {
        let Ok(pkgs) = std::fs::read_dir(py.path().join("site-packages/nvidia")) else { continue };
        for p in pkgs.flatten() {
            let d = p.path().join("lib");
            if d.join("libnccl.so").exists() {
                return Some(d);
            }
        }
    }
    None
}

/// `hrm train --nproc N`: runs this same command as N ranks on this machine (each with the
/// torchrun variables and GPU `LOCAL_RANK`), waits for them, and fails naming the first rank
/// that failed. Ranks left running after another failed are stopped once they had
/// `HRM_DIST_TIMEOUT_S`'s share (30 s at most) to stop by themselves.
pub fn launch(nproc: usize, master_port: Option<u16>) -> Result<()> {
    let exe = std::env::current_exe().context("locating the hrm binary")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let port = match master_port {
        Some(p) => p,
        None => TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
    };
    let ld = match (venv_nccl_dir(), std::env::var_os("LD_LIBRARY_PATH")) {
        (Some(d), Some(old)) => {
            let mut v = vec![d];
            v.extend(std::env::split_paths(&old));
            Some(std::env::join_paths(v)?)
        }
        (Some(d), None) => Some(d.into_os_string()),
        (None, old) => old,
    };
    // SIGINT/SIGTERM to the launcher (Ctrl-C, `timeout`, a scheduler) are forwarded to the
    // ranks; a launcher that dies anyway (SIGKILL) takes them with it (PR_SET_PDEATHSIG).
    let interrupt = super::interrupt::Guard::install();
    let launcher = std::process::id() as libc::pid_t;
    let mut children = Vec::new();
    for r in 0..nproc {
        let mut c = std::process::Command::new(&exe);
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            c.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The launcher died before the line above: nothing would kill this rank later.
                if libc::getppid() != launcher {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        c.args(&args)
            .env("RANK", r.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_RANK", r.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        if let Some(ld) = &ld {
            c.env("LD_LIBRARY_PATH", ld);
        }
        let child = c.spawn().with_context(|| format!("starting rank {r}"))?;
        eprintln!("rank {r}: pid {}", child.id());
        children.push(Some(child));
    }
    let pids: Vec<u32> = children.iter().map(|c| c.as_ref().map_or(0, |c| c.id())).collect();
    let grace = timeout().min(Duration::from_secs(30));
    let mut first_failure: Option<String> = None;
    let mut failed_at: Option<Instant> = None;
    let mut report = Vec::new();
    let mut forwarded: Option<(super::interrupt::Interrupted, Instant)> = None;
    loop {
        if forwarded.is_none()
            && let Some(sig) = interrupt.received()
        {
            for (r, slot) in children.iter().enumerate() {
                if slot.is_some() {
                    // SAFETY: kill(2) of a child of this process that has not been reaped.
                    unsafe { libc::kill(pids[r] as libc::pid_t, sig.signal) };
                }
            }
            eprintln!("{sig}: passed on to the ranks");
            forwarded = Some((sig, Instant::now()));
        }
        let mut running = 0;
        for (r, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            match child.try_wait()? {
                Some(status) => {
                    *slot = None;
                    if !status.success() {
                        use std::os::unix::process::ExitStatusExt;
                        let how = match (status.code(), status.signal()) {
                            (Some(c), _) => format!("exited with status {c}"),
                            (None, Some(s)) => format!("was killed by signal {s}"),
                            _ => "failed".to_string(),
                        };
                        let line = format!("rank {r} (pid {}) {how}", pids[r]);
                        report.push(line.clone());
                        if first_failure.is_none() {
                            first_failure = Some(line);
                            failed_at = Some(Instant::now());
                        }
                    }
                }
                None => running += 1,
            }
        }
        if running == 0 {
            break;
        }
        let since = failed_at.or(forwarded.as_ref().map(|f| f.1));
        if let Some(t) = since
            && t.elapsed() > grace
        {
            for (r, slot) in children.iter_mut().enumerate() {
                if let Some(child) = slot {
                    let _ = child.kill();
                    let _ = child.wait();
                    report.push(format!("rank {r} (pid {}) stopped by the launcher", pids[r]));
                    *slot = None;
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some((sig, _)) = forwarded {
        eprintln!("ranks: {}", if report.is_empty() { "all ended".to_string() } else { report.join("; ") });
        return Err(sig.into());
    }
    match first_failure {
        None => Ok(()),
        Some(first) => bail!("data-parallel run failed: {first} ({})", report.join("; ")),
    }
}

/// A fresh trainer for one rank: its carry holds only its rows of the global batch.
pub fn new_trainer<B: Backend>(
    be: &B,
    cfg: super::TrainConfig,
    params: &crate::model::HostParams,
    world: usize,
) -> Trainer<B> {
    let global = cfg.batch_size;
    let mut local = cfg;
    local.batch_size = global / world.max(1);
    let mut t = Trainer::new(be, local, params);
    t.cfg.batch_size = global;
    t
}
