//! Proxied bodies with an idle timeout, and errors that say which side was at fault.
//!
//! A body that yields no frame for `gateway_body_idle_timeout_ms` fails: a stalled request
//! body aborts the upstream exchange (the upstream connection is dropped, not pooled), a
//! stalled response body cuts the client's response and drops the upstream connection. A
//! request body that fails (malformed chunked framing, a client that went away) is
//! reported as the client's fault, so the gateway can answer 400 instead of 502.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Whose body it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// The request body, from the client.
    Client,
    /// The response body, from the upstream.
    Upstream,
}

/// Why a proxied body failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    /// No byte for the idle timeout.
    #[error("the {side:?} body sent nothing for {} ms", .idle.as_millis())]
    Stalled {
        /// Whose body.
        side: Side,
        /// The timeout.
        idle: Duration,
    },
    /// The body itself failed.
    #[error("the {side:?} body failed: {source}")]
    Failed {
        /// Whose body.
        side: Side,
        /// What failed.
        source: axum::BoxError,
    },
}

impl BodyError {
    /// Whose body failed.
    pub(super) fn side(&self) -> Side {
        match self {
            BodyError::Stalled { side, .. } | BodyError::Failed { side, .. } => *side,
        }
    }
}

/// A body that fails after `idle` without a frame.
pub(super) struct Watched<B> {
    inner: B,
    side: Side,
    idle: Duration,
    /// Started at the first poll: a request body is not polled before the upstream
    /// connection is up, and that wait is not the client's.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> Watched<B> {
    /// Watches `inner`; the clock starts when it is first polled.
    pub(super) fn new(inner: B, side: Side, idle: Duration) -> Self {
        Self {
            inner,
            side,
            idle,
            timer: None,
        }
    }
}

impl<B> Body for Watched<B>
where
    B: Body + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let idle = this.idle;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                timer.as_mut().reset(Instant::now() + idle);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Failed {
                side: this.side,
                source: e.into(),
            }))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Stalled {
                    side: this.side,
                    idle: this.idle,
                }))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's body error behind a failed upstream exchange, if that is what failed.
pub(super) fn client_body_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a BodyError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<BodyError>()
            && b.side() == Side::Client
        {
            return Some(b);
        }
        source = s.source();
    }
    None
}
