//! A tensor-parallel group driven as one [`StepModel`]: one worker thread per rank, each owning its shard of
//! the weights ([`Model::load_rank`]), its own paged KV cache (its KV heads only, same blocks as every other
//! rank) and its own compute thread pool. The engine thread's scheduler and block manager do not know about
//! TP: every rank gets the same step (one block table for all), and rank 0's logits come back to be sampled.
//!
//! A step a rank refuses before computing (a malformed batch) is refused identically by every rank, before
//! any collective, so the group stays usable. A rank that fails mid-step aborts the group's communicator, so
//! the others return an error instead of waiting forever in a collective; the group is then broken and every
//! later step fails with the first cause.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use candle_core::Device;

use super::StepModel;
use crate::batch::BatchInput;
use crate::comm::{Communicator, CpuGroup};
use crate::kv_cache::{KvCache, KvDType};
use crate::model::{LoadOptions, Model, ModelConfig, TensorParallel};

/// The KV cache every rank allocates (its own KV heads, these blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSpec {
    pub num_blocks: usize,
    pub block_size: usize,
    pub dtype: KvDType,
}

/// What one rank reports once loaded.
#[derive(Debug, Clone)]
struct Loaded {
    config: ModelConfig,
    weight_kinds: String,
}

type StepResult = Result<Vec<Vec<f32>>, String>;

/// The ranks of one tensor-parallel group.
pub struct TpGroup {
    jobs: Vec<Sender<Arc<BatchInput>>>,
    results: Receiver<(usize, StepResult)>,
    comms: Vec<Arc<dyn Communicator>>,
    workers: Vec<JoinHandle<()>>,
    config: ModelConfig,
    weight_kinds: String,
    threads_per_rank: usize,
    broken: Option<String>,
}

impl std::fmt::Debug for TpGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpGroup")
            .field("size", &self.size())
            .field("threads_per_rank", &self.threads_per_rank)
            .finish()
    }
}

impl TpGroup {
    /// Starts one rank per device (rank r on `devices[r]`), each loading its part of `path` with a compute
    /// pool of `threads_per_rank` threads and allocating its cache. Returns when every rank has loaded, or
    /// with the first rank's error (in rank order).
    pub fn start(
        path: &Path,
        devices: Vec<Device>,
        opts: LoadOptions,
        threads_per_rank: usize,
        cache: CacheSpec,
    ) -> anyhow::Result<Self> {
        let size = devices.len();
        anyhow::ensure!(size >= 1, "a tensor-parallel group needs at least one rank");
        let threads_per_rank = threads_per_rank.max(1);
        let comms = connect(&devices)?;
        let (results_tx, results) = channel();
        let (ready_tx, ready) = channel();
        let mut jobs = Vec::with_capacity(size);
        let mut workers = Vec::with_capacity(size);
        for (rank, device) in devices.into_iter().enumerate() {
            let (job_tx, job_rx) = channel();
            jobs.push(job_tx);
            let w = Worker {
                rank,
                path: path.to_path_buf(),
                device,
                opts,
                comm: comms[rank].clone(),
                threads: threads_per_rank,
                cache,
            };
            let (ready_tx, results_tx) = (ready_tx.clone(), results_tx.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("tp-rank-{rank}"))
                    .spawn(move || w.run(&ready_tx, &job_rx, &results_tx))?,
            );
        }
        drop(ready_tx);
        let mut loaded: Vec<Option<Result<Loaded, String>>> = vec![None; size];
        for _ in 0..size {
            match ready.recv() {
                Ok((rank, r)) => loaded[rank] = Some(r),
                Err(_) => break,
            }
        }
        let mut first = None;
        for (rank, r) in loaded.into_iter().enumerate() {
            match r {
                Some(Ok(l)) if rank == 0 => first = Some(l),
                Some(Ok(_)) => {}
                Some(Err(e)) => anyhow::bail!("tensor-parallel rank {rank} of {size}: {e}"),
                None => {
                    anyhow::bail!("tensor-parallel rank {rank} of {size} stopped while loading")
                }
            }
        }
        let first = first.ok_or_else(|| anyhow::anyhow!("rank 0 did not load"))?;
        Ok(Self {
            jobs,
            results,
            comms,
            workers,
            config: first.config,
            weight_kinds: first.weight_kinds,
            threads_per_rank,
            broken: None,
        })
    }

    /// Ranks in the group.
    pub fn size(&self) -> usize {
        self.jobs.len()
    }

    /// Compute threads each rank uses.
    pub fn threads_per_rank(&self) -> usize {
        self.threads_per_rank
    }

    /// The whole model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Weight types of rank 0's layers (as [`Model::weight_kinds`]).
    pub fn weight_kinds(&self) -> &str {
        &self.weight_kinds
    }

    /// Runs one step on every rank; returns rank 0's logits (one row per sequence with `wants_logits`).
    pub fn step(&mut self, batch: &BatchInput) -> candle_core::Result<Vec<Vec<f32>>> {
        if let Some(why) = &self.broken {
            candle_core::bail!("the tensor-parallel group is broken: {why}");
        }
        let batch = Arc::new(batch.clone());
        for (rank, tx) in self.jobs.iter().enumerate() {
            if tx.send(batch.clone()).is_err() {
                let why = format!("rank {rank} has stopped");
                self.comms[0].abort(&why);
                self.broken = Some(why.clone());
                candle_core::bail!("the tensor-parallel group is broken: {why}");
            }
        }
        let mut out: Vec<Option<StepResult>> = vec![None; self.size()];
        for _ in 0..self.size() {
            match self.results.recv() {
                Ok((rank, r)) => out[rank] = Some(r),
                Err(_) => {
                    self.broken = Some("a rank stopped mid-step".into());
                    candle_core::bail!(
                        "the tensor-parallel group is broken: a rank stopped mid-step"
                    );
                }
            }
        }
        // The first failing rank's own error (the others report the abort it caused).
        let mut first_err = None;
        for (rank, r) in out.iter().enumerate() {
            if let Some(Err(e)) = r
                && first_err.is_none()
            {
                first_err = Some(format!("rank {rank}: {e}"));
            }
        }
        if let Some(e) = first_err {
            let aborted = |r: &Option<StepResult>| matches!(r, Some(Err(e)) if e.starts_with("tensor-parallel group aborted"));
            if out.iter().any(aborted) {
                self.broken = Some(e.clone());
            }
            candle_core::bail!("{e}");
        }
        match out.swap_remove(0) {
            Some(Ok(logits)) => Ok(logits),
            _ => candle_core::bail!("rank 0 returned no logits"),
        }
    }
}

/// The group's communicators: NCCL when every rank is a GPU and the `nccl` feature is built, else the
/// in-process CPU group (on GPUs that copies each collective's data through host memory).
fn connect(devices: &[Device]) -> anyhow::Result<Vec<Arc<dyn Communicator>>> {
    #[cfg(feature = "nccl")]
    if devices.len() > 1 && devices.iter().all(Device::is_cuda) {
        let comms = crate::comm::nccl::NcclComm::connect(devices).map_err(anyhow::Error::msg)?;
        return Ok(comms
            .into_iter()
            .map(|c| Arc::new(c) as Arc<dyn Communicator>)
            .collect());
    }
    Ok(CpuGroup::connect(devices.len())
        .into_iter()
        .map(|c| Arc::new(c) as Arc<dyn Communicator>)
        .collect())
}

impl StepModel for TpGroup {
    fn step(&mut self, batch: &BatchInput) -> candle_core::Result<Vec<Vec<f32>>> {
        TpGroup::step(self, batch)
    }
}

impl Drop for TpGroup {
    fn drop(&mut self) {
        self.jobs.clear(); // workers leave their loop
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

struct Worker {
    rank: usize,
    path: PathBuf,
    device: Device,
    opts: LoadOptions,
    comm: Arc<dyn Communicator>,
    threads: usize,
    cache: CacheSpec,
}

impl Worker {
    fn run(
        self,
        ready: &Sender<(usize, Result<Loaded, String>)>,
        jobs: &Receiver<Arc<BatchInput>>,
        results: &Sender<(usize, StepResult)>,
    ) {
        let rank = self.rank;
        let pool = match rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads)
            .thread_name(move |i| format!("tp-rank-{rank}-{i}"))
            .build()
        {
            Ok(p) => p,
            Err(e) => {
                let _ = ready.send((rank, Err(format!("compute threads: {e}"))));
                return;
            }
        };
        let tp = TensorParallel {
            comm: self.comm.clone(),
        };
        let loaded = pool.install(|| -> anyhow::Result<(Model, KvCache)> {
            let model = Model::load_rank(&self.path, &self.device, self.opts, tp)?;
            let cache = KvCache::new(
                model.rank_config(),
                self.cache.num_blocks,
                self.cache.block_size,
                self.cache.dtype,
                &self.device,
            )?;
            Ok((model, cache))
        });
        let (model, mut cache) = match loaded {
            Ok(mc) => mc,
            Err(e) => {
                let _ = ready.send((rank, Err(format!("{e:#}"))));
                return;
            }
        };
        let info = Loaded {
            config: model.config().clone(),
            weight_kinds: model.weight_kinds(),
        };
        if ready.send((rank, Ok(info))).is_err() {
            return;
        }
        while let Ok(batch) = jobs.recv() {
            // Refused before any collective, by every rank alike: the group stays usable.
            if let Err(e) = cache.check_batch(&batch) {
                let _ = results.send((rank, Err(e.to_string())));
                continue;
            }
            let r = pool.install(|| {
                let logits = model.forward(&batch, &mut cache)?;
                if rank == 0 {
                    logits.to_vec2::<f32>()
                } else {
                    Ok(Vec::new())
                }
            });
            let r = r.map_err(|e| {
                // Ranks waiting for this one in a collective must not wait forever.
                self.comm.abort(&e.to_string());
                e.to_string()
            });
            if results.send((rank, r)).is_err() {
                return;
            }
        }
    }
}
