//! A future that is polled again only after it asked to be.
//!
//! A connection's task waits on its bytes and, beside them, on a timer. It is woken
//! many times per request for the bytes, and a `select!` polls every branch at every
//! wake-up: a `Sleep` that is not due is looked at for nothing each time. [`Quiet`]
//! gives the wrapped future a waker of its own and polls it only once that waker
//! has fired (and on the first poll, to register).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// Polls `F` on its first poll and then only after `F` woke its own waker.
pub(crate) struct Quiet<F> {
    inner: F,
    flag: Arc<Flag>,
    waker: Waker,
}

/// Set when the wrapped future's waker fires; that wake-up is passed on to the
/// task that polls the [`Quiet`].
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> Quiet<F> {
    pub(crate) fn new(inner: F) -> Quiet<F> {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(Arc::clone(&flag));
        Quiet { inner, flag, waker }
    }
}

impl<F> Quiet<F> {
    /// The wrapped future, to change it (a timer's reset). Call [`Quiet::rouse`]
    /// after a change that needs a poll to take effect.
    pub(crate) fn get_mut(&mut self) -> &mut F {
        &mut self.inner
    }

    /// The next poll polls the wrapped future whether or not it woke. A safeguard
    /// after a change such as a timer's reset: tokio's `Sleep` puts itself back on
    /// the timer wheel at the reset and keeps the waker of its last poll, but that
    /// is how it is built, not what it promises.
    pub(crate) fn rouse(&self) {
        self.flag.woken.store(true, Ordering::Release);
    }
}

impl<F: Future + Unpin> Future for Quiet<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Registered first: a wake-up after the flag is read below reaches the task.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        let mut own = Context::from_waker(&this.waker);
        Pin::new(&mut this.inner).poll(&mut own)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    use super::Quiet;

    /// Counts the polls it gets; ready once `ready` is set, waking the last waker
    /// it was given when `fire` is called.
    #[derive(Default)]
    struct Probe {
        polls: AtomicUsize,
        ready: std::sync::atomic::AtomicBool,
        waker: std::sync::Mutex<Option<Waker>>,
    }

    struct Polled(Arc<Probe>);

    impl Future for Polled {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.0.polls.fetch_add(1, Ordering::SeqCst);
            *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.0.ready.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[derive(Default)]
    struct Task(AtomicUsize);
    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn polled_once_to_register_then_only_after_its_own_wake() {
        let probe = Arc::new(Probe::default());
        let task = Arc::new(Task::default());
        let task_waker = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&task_waker);
        let mut q = Quiet::new(Polled(Arc::clone(&probe)));

        assert!(Pin::new(&mut q).poll(&mut cx).is_pending());
        assert_eq!(
            probe.polls.load(Ordering::SeqCst),
            1,
            "the first poll registers"
        );
        for _ in 0..5 {
            // The task woke for something else: the inner future is left alone.
            assert!(Pin::new(&mut q).poll(&mut cx).is_pending());
        }
        assert_eq!(probe.polls.load(Ordering::SeqCst), 1);

        // Roused (after a change to it), it is polled once more without a wake.
        q.rouse();
        assert!(Pin::new(&mut q).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut q).poll(&mut cx).is_pending());
        assert_eq!(probe.polls.load(Ordering::SeqCst), 2, "one poll per rouse");

        // Its own wake-up reaches the task and earns it one poll.
        probe.ready.store(true, Ordering::SeqCst);
        probe.waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was woken");
        assert!(Pin::new(&mut q).poll(&mut cx).is_ready());
        assert_eq!(probe.polls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_reset_and_roused_fires_at_its_new_deadline() {
        let start = tokio::time::Instant::now();
        let timer = tokio::time::sleep(std::time::Duration::from_secs(10));
        tokio::pin!(timer);
        let mut quiet = Quiet::new(timer.as_mut());
        // Fires once, then is reset and roused, as the connection's timer is.
        (&mut quiet).await;
        assert_eq!(start.elapsed().as_secs(), 10);
        let at = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        quiet.get_mut().as_mut().reset(at);
        quiet.rouse();
        let fired = tokio::time::timeout(std::time::Duration::from_secs(60), &mut quiet).await;
        assert!(fired.is_ok(), "the reset timer never fired");
        assert_eq!(start.elapsed().as_secs(), 15);
    }
}
