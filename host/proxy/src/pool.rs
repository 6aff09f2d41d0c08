//! Keep-alive connections to endpoints for the L7 path: an idle list per endpoint, taken for one
//! request and given back when its response body has been read to the end.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;

use crate::balance::Active;

/// Idle connections kept per endpoint; more are closed when given back.
const IDLE_PER_ENDPOINT: usize = 256;

/// Idle HTTP/1.1 connections by endpoint id.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<HashMap<u32, Vec<SendRequest<Incoming>>>>,
}

impl Pool {
    /// An idle connection to the endpoint, if there is one still open. Its last response has
    /// been read whole; the caller waits for it to be ready (its connection task may not have
    /// seen that yet).
    pub fn take(&self, id: u32) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&id)?;
        while let Some(sender) = list.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    pub fn give_back(&self, id: u32, sender: SendRequest<Incoming>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(id).or_default();
        if list.len() < IDLE_PER_ENDPOINT {
            list.push(sender);
        }
    }

    /// Closes the idle connections to an endpoint that went away.
    pub fn forget(&self, id: u32) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    pub fn idle(&self, id: u32) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .map_or(0, Vec::len)
    }
}

/// A connection out on loan for one request: back to the pool once the response has been read
/// whole; closed if the response is abandoned halfway.
pub struct Loan {
    pool: Arc<crate::balance::Shared>,
    sender: SendRequest<Incoming>,
    active: Active,
}

impl Loan {
    pub fn new(
        pool: Arc<crate::balance::Shared>,
        sender: SendRequest<Incoming>,
        active: Active,
    ) -> Self {
        Self {
            pool,
            sender,
            active,
        }
    }

    /// Returns the connection to the pool.
    pub fn give_back(self) {
        let id = self.active.endpoint().id;
        self.pool.pool.give_back(id, self.sender);
    }
}

impl std::fmt::Debug for Loan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loan")
            .field("endpoint", &self.active.endpoint().addr)
            .finish()
    }
}

/// A response body the proxy sends: an endpoint's, streamed through, or one of its own.
#[derive(Debug)]
pub enum ProxyBody {
    Upstream { body: Incoming, loan: Option<Loan> },
    Local(Full<Bytes>),
}

impl ProxyBody {
    pub fn local(text: impl Into<Bytes>) -> Self {
        Self::Local(Full::new(text.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Upstream { body, loan } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                let finished = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    Poll::Ready(Some(Err(_))) => {
                        // The connection is broken: close it rather than pool it.
                        loan.take();
                        false
                    }
                    Poll::Pending => false,
                };
                if finished && let Some(loan) = loan.take() {
                    loan.give_back();
                }
                polled
            }
            Self::Local(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { body, .. } => body.is_end_stream(),
            Self::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { body, .. } => body.size_hint(),
            Self::Local(full) => full.size_hint(),
        }
    }
}
