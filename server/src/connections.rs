//! A bound on open client connections (`--max-connections`). Each accepted connection
//! holds a permit until it closes; one accepted past the bound is closed at once, so
//! its client fails fast (UNAVAILABLE) and can go elsewhere, rather than waiting in the
//! kernel's backlog for a slot that a long-lived HTTP/2 connection may never free.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Accepted connections, at most `limit` open at once.
pub struct LimitedIncoming {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    limit: usize,
    on_refused: Arc<dyn Fn() + Send + Sync>,
}

impl LimitedIncoming {
    /// `on_refused` runs once per connection closed for being over the limit.
    pub fn new(
        listener: TcpListener,
        limit: usize,
        on_refused: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            on_refused,
        }
    }

    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// A handle that reads how many connections are open now.
    pub fn gauge(&self) -> OpenConnections {
        OpenConnections {
            permits: Arc::clone(&self.permits),
            limit: self.limit,
        }
    }
}

/// Reads the number of open connections.
#[derive(Clone)]
pub struct OpenConnections {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl OpenConnections {
    pub fn open(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

impl Stream for LimitedIncoming {
    type Item = io::Result<LimitedConn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let (stream, peer) = match this.listener.poll_accept(cx) {
                Poll::Ready(Ok(accepted)) => accepted,
                // tonic logs an accept error and goes on accepting.
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
            };
            match Arc::clone(&this.permits).try_acquire_owned() {
                Ok(permit) => {
                    // gRPC sends small frames both ways; Nagle would hold them back.
                    let _ = stream.set_nodelay(true);
                    return Poll::Ready(Some(Ok(LimitedConn {
                        stream,
                        _permit: permit,
                    })));
                }
                Err(_) => {
                    tracing::warn!(
                        %peer,
                        limit = this.limit,
                        "connection refused: --max-connections reached"
                    );
                    (this.on_refused)();
                    drop(stream);
                }
            }
        }
    }
}

/// A client connection that frees its slot when it closes.
pub struct LimitedConn {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for LimitedConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
