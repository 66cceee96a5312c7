//! Data path: `request_data` of large payloads between two nodes against
//! raw TCP moving the same bytes in the same request/response pattern.

use crate::{cluster, median, Args, Failure};
use bytes::Bytes;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taskgraph_core::{
    CommandError, Context, Epoch, Link, RequestId, ServeId, Task, TaskBuilder, TaskId,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// (first request sent, last reply received, a wrong reply seen).
type Clock = Arc<Mutex<(Option<Instant>, Option<Instant>, Option<String>)>>;

/// Task 1 asks task 0 (its parent) for the payload `rounds` times, one
/// request at a time; task 0 answers each with the same `payload`.
struct Fetch {
    payload: Bytes,
    rounds: u64,
    done: u64,
    started: bool,
    clock: Clock,
}

impl Fetch {
    /// A refused command is the run's error (the payload is over the
    /// node's `max_payload`, say).
    fn check<T>(&self, sent: Result<T, CommandError>) {
        if let Err(e) = sent {
            if let Ok(mut c) = self.clock.lock() {
                c.2 = Some(format!("a command was refused: {e}"));
            }
        }
    }
}

impl Task for Fetch {
    fn epoch_changed(&mut self, ctx: &mut Context, _epoch: Epoch) {
        if ctx.is_primary() && ctx.task() == TaskId(1) && !self.started {
            self.started = true;
            if let Ok(mut c) = self.clock.lock() {
                c.0 = Some(Instant::now());
            }
            let sent = ctx.request_data(TaskId(0), "payload");
            self.check(sent);
        }
    }

    fn serve(&mut self, ctx: &mut Context, _from: TaskId, _link: Link, id: ServeId, _req: Bytes) {
        let sent = ctx.respond(id, self.payload.clone());
        self.check(sent);
    }

    fn data_ready(
        &mut self,
        ctx: &mut Context,
        _from: TaskId,
        _id: RequestId,
        _req: Bytes,
        resp: Bytes,
    ) {
        if resp.len() != self.payload.len() {
            if let Ok(mut c) = self.clock.lock() {
                c.2 = Some(format!("a reply of {} bytes", resp.len()));
            }
        }
        self.done += 1;
        if self.done < self.rounds {
            let sent = ctx.request_data(TaskId(0), "payload");
            self.check(sent);
        } else {
            if let Ok(mut c) = self.clock.lock() {
                c.1 = Some(Instant::now());
            }
            ctx.exit_job("done");
        }
    }
}

struct FetchBuilder {
    payload: Bytes,
    rounds: u64,
    clock: Clock,
}

impl TaskBuilder for FetchBuilder {
    fn build(&mut self, _task: TaskId) -> Box<dyn Task> {
        Box::new(Fetch {
            payload: self.payload.clone(),
            rounds: self.rounds,
            done: 0,
            started: false,
            clock: self.clock.clone(),
        })
    }
}

/// MiB/s through `request_data`.
async fn taskgraph_run(payload: Bytes, rounds: u64, run: u64) -> Result<f64, Failure> {
    let clock = Arc::new(Mutex::new((None, None, None)));
    let (p, c) = (payload.clone(), clock.clone());
    let counts = Arc::new(cluster::OpCounts::default());
    let layout = cluster::Layout::new(2, 1, 0);
    let job = cluster::start(&format!("data-{run}"), &layout, counts, None, move || {
        Box::new(FetchBuilder {
            payload: p.clone(),
            rounds,
            clock: c.clone(),
        })
    })
    .await
    .map_err(Failure::Run)?;
    job.join(Duration::from_secs(300))
        .await
        .map_err(Failure::Run)?;
    let (start, end, wrong) = clock.lock().map(|c| c.clone()).unwrap_or_default();
    if let Some(w) = wrong {
        return Err(Failure::Run(format!("the taskgraph run went wrong: {w}")));
    }
    let (Some(s), Some(e)) = (start, end) else {
        return Err(Failure::Run("the requests never completed".into()));
    };
    let mib = payload.len() as f64 * rounds as f64 / (1024.0 * 1024.0);
    Ok(mib / e.duration_since(s).as_secs_f64().max(1e-9))
}

/// MiB/s of the same exchange over one plain TCP connection: a one-byte
/// request, a length-prefixed reply.
async fn raw_run(payload: Bytes, rounds: u64) -> Result<f64, Failure> {
    let io = |e: std::io::Error| Failure::Run(format!("raw TCP: {e}"));
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    let p = payload.clone();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        let mut req = [0u8; 1];
        for _ in 0..rounds {
            s.read_exact(&mut req).await?;
            s.write_all(&(p.len() as u32).to_le_bytes()).await?;
            s.write_all(&p).await?;
        }
        Ok::<(), std::io::Error>(())
    });
    let mut c = TcpStream::connect(addr).await.map_err(io)?;
    c.set_nodelay(true).map_err(io)?;
    let mut buf = vec![0u8; payload.len()];
    let started = Instant::now();
    for _ in 0..rounds {
        c.write_all(&[1]).await.map_err(io)?;
        let mut len = [0u8; 4];
        c.read_exact(&mut len).await.map_err(io)?;
        let n = u32::from_le_bytes(len) as usize;
        if n != buf.len() {
            return Err(Failure::Run(format!("raw TCP: a reply of {n} bytes")));
        }
        c.read_exact(&mut buf).await.map_err(io)?;
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    server
        .await
        .map_err(|e| Failure::Run(e.to_string()))?
        .map_err(io)?;
    Ok(payload.len() as f64 * rounds as f64 / (1024.0 * 1024.0) / secs)
}

/// `taskgraph-bench data`.
pub async fn run(args: &Args) -> Result<(), Failure> {
    args.only(&["mib", "rounds", "runs"])?;
    let mib = args.num("mib", 4)?;
    let rounds = args.num("rounds", 50)?.max(1);
    let runs = args.num("runs", 3)?.max(1);
    if mib == 0 || mib > 60 {
        return Err(Failure::Usage(
            "--mib must be 1 to 60 (frames are limited to 64 MiB)".into(),
        ));
    }
    let payload = Bytes::from(vec![42u8; (mib * 1024 * 1024) as usize]);
    println!(
        "data: {mib} MiB replies to request_data, {rounds} requests one at a time, {runs} runs (median), loopback"
    );
    let (mut tg, mut raw) = (vec![], vec![]);
    for run in 0..runs {
        tg.push(taskgraph_run(payload.clone(), rounds, run).await?);
        raw.push(raw_run(payload.clone(), rounds).await?);
    }
    let (tg, raw) = (median(&mut tg), median(&mut raw));
    println!("| system | MiB/s |");
    println!("|---|---|");
    println!("| taskgraph request_data | {tg:.0} |");
    println!("| raw tokio TCP, same exchange | {raw:.0} |");
    println!("ratio taskgraph / raw TCP: {:.2}", tg / raw.max(1e-9));
    Ok(())
}
