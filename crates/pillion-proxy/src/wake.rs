//! A future polled only after its own waker fired: for the rare events a connection waits on
//! beside its requests (shutdown, the idle timer), which would otherwise be polled again on every
//! wake-up of the connection's task.
//!
//! Polling `CancellationToken::cancelled()` takes two locks shared by every connection (the
//! token's and its `Notify`'s); twice per request, that was a global lock on the request path.

use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll, Wake, Waker},
};

pin_project! {
    /// Wraps a future so that it is polled only on the first poll and after it woke its task.
    pub struct OnWake<F> {
        #[pin]
        inner: F,
        flag: Arc<Flag>,
        // NOTE: the waker `inner` sees is made once, so a poll that polls `inner` clones nothing.
        waker: Waker,
    }
}

/// Set when the wrapped future's waker fires; passes the wake-up on to the task.
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

// === impl OnWake ===

impl<F: Future> OnWake<F> {
    pub fn new(inner: F) -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(flag.clone());
        Self { inner, flag, waker }
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // NOTE: the task's waker is registered before the flag is read: a wake-up between the
        // two sets the flag (seen below) and wakes the waker registered here.
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

// === impl Flag ===

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; ready once `ready` is set, waking its waker when that happens.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.ready.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    fn noop_cx_poll<F: Future + Unpin>(f: &mut F, waker: &Waker) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn the_inner_future_is_polled_first_and_then_only_after_it_woke() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let mut f = Box::pin(OnWake::new(Probe {
            polls: polls.clone(),
            ready: ready.clone(),
        }));
        let task = Waker::noop();
        assert!(noop_cx_poll(&mut f, task).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // Wake-ups of the task by anything else do not poll it again.
        for _ in 0..5 {
            assert!(noop_cx_poll(&mut f, task).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // Its own waker fires: the next poll polls it.
        ready.store(true, Ordering::Relaxed);
        f.waker.wake_by_ref();
        assert!(noop_cx_poll(&mut f, task).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_and_a_cancellation_still_wake_the_task() {
        let sleep = OnWake::new(tokio::time::sleep(Duration::from_secs(5)));
        let start = tokio::time::Instant::now();
        sleep.await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));

        let token = tokio_util::sync::CancellationToken::new();
        let cancelled = OnWake::new(token.clone().cancelled_owned());
        let cancel = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            token.cancel();
        });
        tokio::time::timeout(Duration::from_secs(2), cancelled)
            .await
            .expect("cancelled within 2s");
        cancel.await.expect("the canceller ran");
    }
}
