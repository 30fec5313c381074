//! A request body streamed through on the first try while a copy (up to a cap) is kept for
//! retries, as linkerd's `ReplayBody`.
//!
//! Every instance made by [`ReplayBody::try_clone`] shares one state: the buffered chunks, the
//! trailers, and the rest of the original body not read yet. Only one instance holds the state at
//! a time (the one being polled); it gives the state back when dropped. A clone replays the
//! buffered chunks, then goes on reading the original body where the previous instance stopped,
//! then replays the trailers. Once the body outgrows the cap the copy is dropped (never more than
//! `cap` bytes are held) and no further clone can be made: the request is sent once.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    task::{Context, Poll, Waker},
};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;

/// A request body that can be replayed for retries when it fits the buffer cap.
#[derive(Debug)]
pub struct ReplayBody<B> {
    inner: Inner<B>,
}

#[derive(Debug)]
enum Inner<B> {
    /// Not replayable: the body is forwarded as it is.
    Passthrough(B),
    /// An empty body: nothing to keep, every clone is empty too.
    Empty,
    /// A body with shared replay state.
    Replay(Replay<B>),
}

#[derive(Debug)]
struct Replay<B> {
    shared: Arc<Shared<B>>,
    /// The state, while this instance holds it.
    ///
    /// NOTE: boxed here and in the slot, so that handing it over moves a pointer and a request
    /// carrying a `ReplayBody` stays small however large the state is.
    state: Option<Box<State<B>>>,
    /// The next buffered chunk to replay.
    pos: usize,
    /// Bytes this instance has yielded.
    seen: u64,
    /// Whether this instance yielded the trailers.
    trailers_done: bool,
    /// Whether this instance has yielded all of the body (or failed): it gave the state back at
    /// once, since the next try must not wait for whoever holds a finished body to drop it (hyper
    /// keeps a request body whose response came early until the connection moves on, and the
    /// retry holds that response).
    ended: bool,
}

#[derive(Debug)]
struct Shared<B> {
    slot: Mutex<Slot<B>>,
    cap: usize,
    size_hint: SizeHint,
    /// Set once the body outgrew the cap or failed; never cleared.
    capped: AtomicBool,
    /// Set once the original body has been read to its end within the cap: every byte is held.
    complete: AtomicBool,
}

#[derive(Debug)]
struct Slot<B> {
    /// The state while no instance holds it.
    state: Option<Box<State<B>>>,
    /// Tasks waiting for the state to come back.
    waiters: Vec<Waker>,
}

#[derive(Debug)]
struct State<B> {
    buf: Vec<Bytes>,
    buffered: usize,
    /// Bytes read from the original body so far (buffered or not).
    read: u64,
    trailers: Option<HeaderMap>,
    /// The unread rest of the original body (`None` once it ended or failed).
    rest: Option<B>,
    capped: bool,
}

/// An instance polled after the buffer it needed was dropped (a clone made before the cap was
/// reached, polled after another instance outgrew it).
#[derive(Debug, thiserror::Error)]
#[error("request body outgrew the replay buffer and cannot be replayed")]
pub struct Capped;

// === impl ReplayBody ===

impl<B: Body + Unpin> ReplayBody<B> {
    /// Wraps `body`, keeping up to `cap` bytes for replays. A body whose size hint already says it
    /// is larger than `cap` is passed through without any buffering.
    pub fn new(body: B, cap: usize) -> Self {
        if body.is_end_stream() {
            return Self {
                inner: Inner::Empty,
            };
        }
        let size_hint = body.size_hint();
        if usize::try_from(size_hint.lower()).map_or(true, |n| n > cap) {
            return Self::passthrough(body);
        }
        let state = Box::new(State {
            buf: Vec::new(),
            buffered: 0,
            read: 0,
            trailers: None,
            rest: Some(body),
            capped: false,
        });
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                state: Some(state),
                waiters: Vec::new(),
            }),
            cap,
            size_hint,
            capped: AtomicBool::new(false),
            complete: AtomicBool::new(false),
        });
        Self {
            inner: Inner::Replay(Replay::new(shared)),
        }
    }
}

impl<B> ReplayBody<B> {
    /// Wraps `body` without keeping anything: it cannot be replayed.
    pub fn passthrough(body: B) -> Self {
        Self {
            inner: Inner::Passthrough(body),
        }
    }

    /// A new instance that replays the body from the start, or `None` if the body cannot be
    /// replayed (passed through, outgrew the cap, or failed).
    pub fn try_clone(&self) -> Option<Self> {
        match &self.inner {
            Inner::Passthrough(_) => None,
            Inner::Empty => Some(Self {
                inner: Inner::Empty,
            }),
            Inner::Replay(r) => (!r.shared.capped.load(Ordering::Acquire)).then(|| Self {
                inner: Inner::Replay(Replay::new(r.shared.clone())),
            }),
        }
    }

    /// Whether this body can no longer be replayed (see [`ReplayBody::try_clone`]).
    pub fn is_capped(&self) -> bool {
        match &self.inner {
            Inner::Passthrough(_) => true,
            Inner::Empty => false,
            Inner::Replay(r) => r.shared.capped.load(Ordering::Acquire),
        }
    }

    /// Whether all of the body has been read and is held, so a replay is sure to be possible.
    pub fn is_complete(&self) -> bool {
        match &self.inner {
            Inner::Passthrough(_) => false,
            Inner::Empty => true,
            Inner::Replay(r) => {
                r.shared.complete.load(Ordering::Acquire)
                    && !r.shared.capped.load(Ordering::Acquire)
            }
        }
    }

    /// Waits until no instance holds the shared state (the previous try released the body), then
    /// says whether the body can be replayed. A capped body answers at once.
    pub(crate) fn poll_replayable(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let Inner::Replay(r) = &self.inner else {
            return Poll::Ready(!self.is_capped());
        };
        if r.shared.capped.load(Ordering::Acquire) {
            return Poll::Ready(false);
        }
        let mut slot = r.shared.lock();
        if slot.state.is_some() {
            return Poll::Ready(!r.shared.capped.load(Ordering::Acquire));
        }
        slot.register(cx.waker());
        Poll::Pending
    }

    /// Bytes held for replays now (for tests and metrics).
    pub fn buffered_len(&self) -> usize {
        match &self.inner {
            Inner::Replay(r) => match &r.state {
                Some(state) => state.buffered,
                None => r.shared.lock().state.as_ref().map_or(0, |s| s.buffered),
            },
            _ => 0,
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().inner {
            Inner::Passthrough(body) => Pin::new(body).poll_frame(cx).map(|frame| {
                frame.map(|f| {
                    f.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))
                        .map_err(Into::into)
                })
            }),
            Inner::Empty => Poll::Ready(None),
            Inner::Replay(r) => r.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Passthrough(body) => body.is_end_stream(),
            Inner::Empty => true,
            // NOTE: without the state we cannot tell; `false` is always safe.
            Inner::Replay(r) => r.ended || r.state.as_ref().is_some_and(|s| r.is_done(s)),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Passthrough(body) => body.size_hint(),
            Inner::Empty => SizeHint::with_exact(0),
            // Every replay yields the same bytes as the original.
            Inner::Replay(r) => r.shared.size_hint,
        }
    }
}

// === impl Replay ===

impl<B> Replay<B> {
    fn new(shared: Arc<Shared<B>>) -> Self {
        Self {
            shared,
            state: None,
            pos: 0,
            seen: 0,
            trailers_done: false,
            ended: false,
        }
    }

    fn is_done(&self, state: &State<B>) -> bool {
        self.pos >= state.buf.len()
            && state.rest.is_none()
            && (self.trailers_done || state.trailers.is_none())
    }
}

impl<B> Replay<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let frame = std::task::ready!(self.poll_next(cx));
        let ended = match &frame {
            Some(Ok(_)) => self.state.as_ref().is_some_and(|s| self.is_done(s)),
            None | Some(Err(_)) => true,
        };
        if ended {
            self.ended = true;
            self.release();
        }
        Poll::Ready(frame)
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.state.is_none() {
            let mut slot = self.shared.lock();
            match slot.state.take() {
                Some(state) => {
                    drop(slot);
                    if state.capped && self.seen != state.read {
                        // Put it back for whoever holds the rest; this instance cannot go on.
                        self.state = Some(state);
                        return Poll::Ready(Some(Err(Capped.into())));
                    }
                    self.state = Some(state);
                }
                None => {
                    // Another instance still holds the state (the previous try has not dropped
                    // its body yet): wait for it.
                    slot.register(cx.waker());
                    return Poll::Pending;
                }
            }
        }
        let Some(state) = self.state.as_mut() else {
            // NOTE: set just above.
            return Poll::Ready(None);
        };

        // Replay what was buffered.
        if let Some(chunk) = state.buf.get(self.pos) {
            self.pos += 1;
            self.seen += chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }

        loop {
            let Some(rest) = state.rest.as_mut() else {
                // The original ended: replay its trailers, if any, once.
                if !self.trailers_done {
                    self.trailers_done = true;
                    if let Some(trailers) = &state.trailers {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
                    }
                }
                return Poll::Ready(None);
            };
            let frame = match std::task::ready!(Pin::new(&mut *rest).poll_frame(cx)) {
                None => {
                    state.end(&self.shared);
                    continue;
                }
                Some(Err(e)) => {
                    // A failed body is not replayed: the client's request is broken.
                    state.rest = None;
                    state.cap(&self.shared);
                    return Poll::Ready(Some(Err(e.into())));
                }
                Some(Ok(frame)) => frame,
            };
            if rest.is_end_stream() {
                state.end(&self.shared);
            }
            match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    state.read += chunk.len() as u64;
                    self.seen += chunk.len() as u64;
                    if !state.capped {
                        if state.buffered + chunk.len() > self.shared.cap {
                            state.cap(&self.shared);
                        } else {
                            state.buffered += chunk.len();
                            state.buf.push(chunk.clone());
                            self.pos = state.buf.len();
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.trailers_done = true;
                        if !state.capped {
                            state.trailers = Some(trailers.clone());
                        }
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    // NOTE: http-body 1 frames are data or trailers; skip anything else.
                }
            }
        }
    }
}

impl<B> Replay<B> {
    /// Gives the state back, for the next instance.
    fn release(&mut self) {
        if let Some(state) = self.state.take() {
            let waiters = {
                let mut slot = self.shared.lock();
                slot.state = Some(state);
                std::mem::take(&mut slot.waiters)
            };
            waiters.into_iter().for_each(Waker::wake);
        }
    }
}

impl<B> Drop for Replay<B> {
    fn drop(&mut self) {
        self.release();
    }
}

// === impl Shared ===

impl<B> Shared<B> {
    fn lock(&self) -> MutexGuard<'_, Slot<B>> {
        // NOTE: the lock is only held for moves of the state, which cannot panic half-way.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<B> Slot<B> {
    fn register(&mut self, waker: &Waker) {
        if !self.waiters.iter().any(|w| w.will_wake(waker)) {
            self.waiters.push(waker.clone());
        }
    }
}

// === impl State ===

impl<B> State<B> {
    /// The original body has ended.
    fn end<X>(&mut self, shared: &Shared<X>) {
        self.rest = None;
        if !self.capped {
            shared.complete.store(true, Ordering::Release);
        }
    }

    /// Drops the copy: the body can no longer be replayed.
    fn cap<X>(&mut self, shared: &Shared<X>) {
        self.capped = true;
        self.buf = Vec::new();
        self.buffered = 0;
        self.trailers = None;
        shared.capped.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use std::convert::Infallible;

    type Chunks = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;

    fn chunks(parts: &[&'static str], trailers: bool) -> Chunks {
        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("x-checksum", "abc".parse().unwrap());
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn read_all<B>(body: ReplayBody<B>) -> (Bytes, Option<HeaderMap>)
    where
        B: Body + Unpin,
        B::Error: Into<BoxError>,
    {
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn replays_data_and_trailers_under_the_cap() {
        let body = ReplayBody::new(chunks(&["hello ", "world"], true), 64);
        let template = body.try_clone().unwrap();
        let (data, trailers) = read_all(body).await;
        assert_eq!(&data[..], b"hello world");
        assert_eq!(trailers.unwrap()["x-checksum"], "abc");
        assert_eq!(template.buffered_len(), 11);

        for _ in 0..2 {
            let replay = template.try_clone().unwrap();
            let (data, trailers) = read_all(replay).await;
            assert_eq!(&data[..], b"hello world");
            assert_eq!(trailers.unwrap()["x-checksum"], "abc");
        }
    }

    #[tokio::test]
    async fn a_partly_read_body_is_replayed_then_continued() {
        let mut body = ReplayBody::new(chunks(&["a", "b", "c"], false), 64);
        let template = body.try_clone().unwrap();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"a");
        assert!(!body.is_end_stream());
        drop(body);
        let (data, trailers) = read_all(template.try_clone().unwrap()).await;
        assert_eq!(&data[..], b"abc");
        assert!(trailers.is_none());
        let (data, _) = read_all(template.try_clone().unwrap()).await;
        assert_eq!(&data[..], b"abc");
    }

    #[tokio::test]
    async fn over_the_cap_streams_once_and_holds_at_most_the_cap() {
        let mut body = ReplayBody::new(chunks(&["0123", "4567", "89"], true), 8);
        let template = body.try_clone().unwrap();
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            if let Some(d) = frame.data_ref() {
                got.extend_from_slice(d);
                assert!(body.buffered_len() <= 8);
            }
        }
        assert_eq!(&got[..], b"0123456789");
        assert!(body.is_capped());
        assert_eq!(body.buffered_len(), 0);
        assert!(template.try_clone().is_none());
        drop(body);
        assert_eq!(template.buffered_len(), 0);
    }

    #[tokio::test]
    async fn known_large_bodies_are_passed_through() {
        let body = ReplayBody::new(Full::new(Bytes::from(vec![0u8; 100])), 64);
        assert!(body.try_clone().is_none());
        assert_eq!(read_all(body).await.0.len(), 100);
    }

    #[tokio::test]
    async fn empty_bodies_need_no_state() {
        let body = ReplayBody::new(Empty::<Bytes>::new(), 64);
        assert!(matches!(body.inner, Inner::Empty));
        assert!(body.is_end_stream());
        let clone = body.try_clone().unwrap();
        assert!(read_all(clone).await.0.is_empty());
    }

    #[tokio::test]
    async fn first_try_streams_without_waiting_for_the_whole_body() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        let mut body = ReplayBody::new(StreamBody::new(Box::pin(stream)), 64);
        let template = body.try_clone().unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .await
            .unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(&frame.into_data().unwrap()[..], b"first");
        // The rest has not been sent yet: the first chunk came through on its own.
        tx.send(Ok(Frame::data(Bytes::from_static(b" second"))))
            .await
            .unwrap();
        drop(tx);
        let (rest, _) = read_all(body).await;
        assert_eq!(&rest[..], b" second");
        let (all, _) = read_all(template.try_clone().unwrap()).await;
        assert_eq!(&all[..], b"first second");
    }

    #[tokio::test]
    async fn a_clone_waits_for_the_previous_instance_to_release() {
        let mut body = ReplayBody::new(chunks(&["x", "y"], false), 64);
        let template = body.try_clone().unwrap();
        body.frame().await.unwrap().unwrap();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(template.poll_replayable(&mut cx).is_pending());
        let mut clone = template.try_clone().unwrap();
        assert!(Pin::new(&mut clone).poll_frame(&mut cx).is_pending());
        drop(body);
        assert_eq!(template.poll_replayable(&mut cx), Poll::Ready(true));
        assert_eq!(read_all(clone).await.0, Bytes::from_static(b"xy"));
    }
}
