//! The data plane's threads. Each worker is a thread running a current-thread
//! runtime, the way each HAProxy thread and each nginx worker runs an event loop
//! of its own: a client connection's task, its upstream connections and its timers
//! all stay on the thread that accepted it, so serving it hands nothing from one
//! thread to another. Every listening address gets one socket per worker
//! (`SO_REUSEPORT`, see [`crate::listener`]) and the kernel spreads new
//! connections over them.
//!
//! Worker 0 is the runtime [`crate::Server::run`] is called on, which also runs the
//! admin API, health checks and discovery. Workers 1 and up are threads started
//! here and stopped when the server's run ends.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::num::NonZeroUsize;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use plumb_config::model::Config;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The calling thread's worker: 0 on any thread plumb did not start as a worker.
pub(crate) fn current() -> usize {
    INDEX.with(Cell::get)
}

/// One `T` per core, for state every worker changes (the connection table, the
/// kept-alive pools, a backend's abort token): each worker, one per core by
/// default, changes its own shard under a lock no other worker takes, on cache
/// lines no other shard shares. Workers beyond the core count share shards.
#[derive(Debug)]
pub(crate) struct Sharded<T> {
    shards: Box<[Padded<T>]>,
}

/// Aligned to two cache lines (the pair the adjacent-line prefetcher pulls in).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// The cores this process may run on.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

impl<T> Sharded<T> {
    pub(crate) fn new(mut make: impl FnMut() -> T) -> Sharded<T> {
        Sharded {
            shards: (0..cores().clamp(1, 64)).map(|_| Padded(make())).collect(),
        }
    }

    /// The calling worker's shard's index.
    pub(crate) fn mine(&self) -> usize {
        current() % self.shards.len()
    }

    /// Shard `i` (modulo the count).
    pub(crate) fn get(&self, i: usize) -> &T {
        &self.shards[i % self.shards.len()].0
    }

    /// Every shard, the calling worker's first.
    pub(crate) fn mine_first(&self) -> impl Iterator<Item = &T> {
        let (n, mine) = (self.shards.len(), self.mine());
        (0..n).map(move |k| self.get(mine + k))
    }

    /// Every shard, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().map(|p| &p.0)
    }
}

impl<T: Default> Default for Sharded<T> {
    fn default() -> Sharded<T> {
        Sharded::new(T::default)
    }
}

/// How many workers a config asks for: `runtime.workers`, or one per core.
pub fn count(config: &Config) -> usize {
    config.runtime.workers.unwrap_or_else(cores).max(1)
}

/// Workers 1 and up; stopped (their threads joined, the tasks left on them
/// dropped) when this is dropped.
#[derive(Debug)]
pub(crate) struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workers {
    /// Starts threads so that, with the caller's runtime, there are `n` workers.
    pub(crate) fn start(n: usize) -> io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::new(),
            threads: Vec::new(),
            stop: CancellationToken::new(),
        };
        for i in 1..n {
            // On failure, `workers` drops here and stops the threads already started.
            // The runtime is made (and dropped) on its own thread: dropping one
            // in the caller's async context is not allowed.
            let stop = workers.stop.clone();
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let thread = std::thread::Builder::new()
                .name(format!("plumb-worker-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    INDEX.with(|c| c.set(i));
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(stop.cancelled());
                })?;
            workers.threads.push(thread);
            let handle = rx
                .recv()
                .map_err(|_| io::Error::other("a worker thread ended as it started"))??;
            workers.handles.push(handle);
        }
        Ok(workers)
    }

    /// How many workers there are, the caller's runtime included.
    pub(crate) fn len(&self) -> usize {
        self.handles.len() + 1
    }

    /// Calls `f` in the context of worker `i` (modulo the count): a socket made
    /// there is watched by that worker's I/O driver.
    pub(crate) fn within<T>(&self, i: usize, f: impl FnOnce() -> T) -> T {
        match i % self.len() {
            0 => f(),
            k => {
                let _in = self.handles[k - 1].enter();
                f()
            }
        }
    }

    /// Runs `task` on worker `i` (modulo the count), tracked by `tasks`.
    pub(crate) fn spawn<F>(&self, tasks: &TaskTracker, i: usize, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match i % self.len() {
            0 => drop(tasks.spawn(task)),
            k => drop(tasks.spawn_on(task, &self.handles[k - 1])),
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_worker_they_are_given_to() {
        let workers = Workers::start(3).unwrap();
        assert_eq!(workers.len(), 3);
        let tasks = TaskTracker::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..6 {
            let tx = tx.clone();
            workers.spawn(&tasks, i, async move {
                let name = std::thread::current().name().map(str::to_owned);
                tx.send((i, current(), name)).unwrap();
            });
        }
        drop(tx);
        let mut seen = Vec::new();
        while let Some(x) = rx.recv().await {
            seen.push(x);
        }
        seen.sort();
        for (i, worker, name) in seen {
            assert_eq!(worker, i % 3, "task {i}");
            if worker > 0 {
                assert_eq!(
                    name.as_deref(),
                    Some(format!("plumb-worker-{worker}").as_str())
                );
            }
        }
        tasks.close();
        tasks.wait().await;
        drop(workers);
    }
}
