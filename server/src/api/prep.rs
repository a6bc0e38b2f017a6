//! Request preparation off the HTTP workers: JSON parsing, chat templating and tokenization of a request run on
//! a small bounded pool (as TGI's tokenizer workers), so the actix workers only move bytes and always answer
//! `/health` and `/ready` at once, whatever the requests in flight cost.
//!
//! The queue is bounded: when it is full a request is refused with 429 and `Retry-After` instead of piling up.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use super::error::ApiError;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of preparation threads and their bounded queue.
#[derive(Debug)]
pub struct PrepPool {
    tx: SyncSender<Job>,
    queue: usize,
}

impl PrepPool {
    /// `threads` workers (at least 1) and room for `queue` waiting jobs.
    pub fn new(threads: usize, queue: usize) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("prep-{i}"))
                .spawn(move || work(&rx))?;
        }
        Ok(Self { tx, queue })
    }

    /// Runs `f` on the pool and waits for its result without blocking the calling (async) worker.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::QueueFull {
                    queued: self.queue,
                    retry_after_s: 1,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::Internal("request preparation has stopped".into()));
            }
        }
        result
            .await
            .map_err(|_| ApiError::Internal("request preparation failed".into()))
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            // A panic in one request's preparation must not take the worker with it.
            Ok(job) => {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_is_a_429_and_a_panicking_job_does_not_kill_its_worker() {
        let pool = PrepPool::new(1, 1).expect("pool");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        pool.tx
            .send(Box::new(move || {
                let _ = started_tx.send(());
                let _ = wait.recv();
            }))
            .expect("first job");
        started.recv().expect("the worker took the first job");
        let (filler_ran, filler) = std::sync::mpsc::channel::<()>();
        pool.tx
            .try_send(Box::new(move || {
                let _ = filler_ran.send(());
            }))
            .expect("the queue has one free slot");
        let refused = rt.block_on(pool.run(|| 1));
        assert!(
            matches!(
                refused,
                Err(ApiError::QueueFull {
                    retry_after_s: 1,
                    ..
                })
            ),
            "{refused:?}"
        );
        release.send(()).expect("release");
        filler.recv().expect("the queued job ran");
        let panicked = rt.block_on(pool.run(|| -> u8 { panic!("boom") }));
        assert!(
            matches!(panicked, Err(ApiError::Internal(_))),
            "{panicked:?}"
        );
        assert_eq!(
            rt.block_on(pool.run(|| 2 + 2))
                .expect("the worker survived"),
            4
        );
    }
}
