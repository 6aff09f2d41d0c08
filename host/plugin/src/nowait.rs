//! The linker for proxy strategies, whose calls run directly on the caller's thread.
//!
//! A pick is on every connection's or request's path, and running a call on a fiber (switching
//! stacks there and back, and polling the call as a future) costs more than most picks. So a
//! proxy strategy's exports are called synchronously, and wasmtime allows that only when
//! nothing the instance imports can suspend. This linker gives a strategy the same sandbox as
//! every plugin — WASI without arguments, environment, files or sockets, stderr kept for trap
//! messages — through interfaces that never wait:
//!
//! - `wasi:io/streams` and `wasi:io/poll` answer from what is ready now. A call that would wait
//!   (sleeping, or blocking on a pollable that is not ready) traps instead: a strategy may not
//!   wait, and stopping it is better than holding the caller's thread. Writing to stderr never
//!   waits.
//! - Files and sockets cannot be opened: there are no preopened directories, and creating a
//!   socket is refused. wasmtime-wasi's synchronous bindings run their waiting calls on the
//!   tokio runtime, which cannot be entered from one of its own threads; none of those calls is
//!   reachable without a file or socket.
//! - A call that computes for too long is stopped at its deadline by the epoch (it is not
//!   given a chance to yield).
//!
//! This module must not be used for plugins that wait in host calls (`cache`, `api`): those
//! run on the fiber linker in [`crate::PluginHost`].

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime::{Engine, format_err};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::io::{poll as async_poll, streams as async_streams};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random, sockets, sync};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, DynPollable, SocketResult, StreamError, StreamResult,
    UdpSocket,
};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsCtxView, WasiSocketsView};

use crate::host::HostState;

/// A linker with WASI that never waits and Flotilla's imports, for proxy strategies.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    let l = &mut linker;
    wasmtime_wasi::p2::bindings::io::error::add_to_linker::<HostState, Table>(l, |t| {
        t.ctx().table
    })?;
    poll::add_to_linker::<HostState, NoWait>(l, |t| Io(t.ctx().table))?;
    streams::add_to_linker::<HostState, NoWait>(l, |t| Io(t.ctx().table))?;
    clocks::wall_clock::add_to_linker::<HostState, WasiClocks>(l, HostState::clocks)?;
    clocks::monotonic_clock::add_to_linker::<HostState, WasiClocks>(l, HostState::clocks)?;
    random::random::add_to_linker::<HostState, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure::add_to_linker::<HostState, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure_seed::add_to_linker::<HostState, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    cli::exit::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::environment::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::stdin::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::stdout::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::stderr::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_input::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_output::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_stdin::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_stdout::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_stderr::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    // No directory is preopened, so no descriptor exists to call these on.
    filesystem::preopens::add_to_linker::<HostState, WasiFilesystem>(l, HostState::filesystem)?;
    sync::filesystem::types::add_to_linker::<HostState, WasiFilesystem>(l, HostState::filesystem)?;
    // Creating a TCP socket is refused by the context (`allow_tcp(false)`), and a UDP one here,
    // so no socket exists to call these on.
    let network = sockets::network::LinkOptions::default();
    sockets::network::add_to_linker::<HostState, WasiSockets>(l, &network, HostState::sockets)?;
    sockets::instance_network::add_to_linker::<HostState, WasiSockets>(l, HostState::sockets)?;
    sockets::ip_name_lookup::add_to_linker::<HostState, WasiSockets>(l, HostState::sockets)?;
    sockets::tcp_create_socket::add_to_linker::<HostState, WasiSockets>(l, HostState::sockets)?;
    sync::sockets::tcp::add_to_linker::<HostState, WasiSockets>(l, HostState::sockets)?;
    sync::sockets::udp::add_to_linker::<HostState, WasiSockets>(l, HostState::sockets)?;
    sync::sockets::udp_create_socket::add_to_linker::<HostState, NoUdp<'static>>(l, |t| {
        NoUdp(t.sockets())
    })?;
    crate::bindings::add_flotilla_imports(l)?;
    Ok(linker)
}

/// Polls a host future once: its output if it has one now, a trap if it would wait.
fn now<F: Future>(what: &str, future: F) -> wasmtime::Result<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => Err(format_err!(
            "{what} would wait, and a proxy strategy's calls may not wait"
        )),
    }
}

/// [`now`] for a stream operation.
fn now_stream<T>(what: &str, future: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
    now(what, future).map_err(StreamError::Trap)?
}

/// The instance's resource table, as `wasi:io/error` sees it.
struct Table;

impl HasData for Table {
    type Data<'a> = &'a mut ResourceTable;
}

/// The instance's resource table, as the non-waiting io interfaces see it.
struct Io<'a>(&'a mut ResourceTable);

struct NoWait;

impl HasData for NoWait {
    type Data<'a> = Io<'a>;
}

impl streams::Host for Io<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        Ok(
            match async_streams::Host::convert_stream_error(self.0, err)? {
                async_streams::StreamError::LastOperationFailed(e) => {
                    streams::StreamError::LastOperationFailed(e)
                }
                async_streams::StreamError::Closed => streams::StreamError::Closed,
            },
        )
    }
}

impl streams::HostOutputStream for Io<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        now(
            "closing an output stream",
            async_streams::HostOutputStream::drop(self.0, stream),
        )?
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        async_streams::HostOutputStream::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        async_streams::HostOutputStream::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        now_stream(
            "a blocking write",
            async_streams::HostOutputStream::blocking_write_and_flush(self.0, stream, bytes),
        )
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        now_stream(
            "a blocking write",
            async_streams::HostOutputStream::blocking_write_zeroes_and_flush(self.0, stream, len),
        )
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        async_streams::HostOutputStream::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        async_streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        async_streams::HostOutputStream::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        now_stream(
            "a blocking flush",
            async_streams::HostOutputStream::blocking_flush(self.0, stream),
        )
    }

    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        async_streams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        now_stream(
            "a blocking splice",
            async_streams::HostOutputStream::blocking_splice(self.0, dst, src, len),
        )
    }
}

impl streams::HostInputStream for Io<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        now(
            "closing an input stream",
            async_streams::HostInputStream::drop(self.0, stream),
        )?
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        async_streams::HostInputStream::read(self.0, stream, len)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        now_stream(
            "a blocking read",
            async_streams::HostInputStream::blocking_read(self.0, stream, len),
        )
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        async_streams::HostInputStream::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        now_stream(
            "a blocking skip",
            async_streams::HostInputStream::blocking_skip(self.0, stream, len),
        )
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        async_streams::HostInputStream::subscribe(self.0, stream)
    }
}

impl poll::Host for Io<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        now("poll", async_poll::Host::poll(self.0, pollables))?
    }
}

impl poll::HostPollable for Io<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        now(
            "pollable.ready",
            async_poll::HostPollable::ready(self.0, pollable),
        )?
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        now(
            "pollable.block",
            async_poll::HostPollable::block(self.0, pollable),
        )?
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, pollable)
    }
}

/// `wasi:sockets/udp-create-socket`, refused (wasmtime-wasi's runs on the tokio runtime even
/// to refuse); `network`'s errors as wasmtime-wasi reads them.
struct NoUdp<'a>(WasiSocketsCtxView<'a>);

impl HasData for NoUdp<'static> {
    type Data<'a> = NoUdp<'a>;
}

impl sockets::network::Host for NoUdp<'_> {
    fn convert_error_code(
        &mut self,
        error: wasmtime_wasi::p2::SocketError,
    ) -> wasmtime::Result<sockets::network::ErrorCode> {
        sockets::network::Host::convert_error_code(&mut self.0, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<sockets::network::ErrorCode>> {
        sockets::network::Host::network_error_code(&mut self.0, err)
    }
}

impl sockets::network::HostNetwork for NoUdp<'_> {
    fn drop(&mut self, network: Resource<wasmtime_wasi::p2::Network>) -> wasmtime::Result<()> {
        sockets::network::HostNetwork::drop(&mut self.0, network)
    }
}

impl sync::sockets::udp_create_socket::Host for NoUdp<'_> {
    fn create_udp_socket(
        &mut self,
        _: sync::sockets::network::IpAddressFamily,
    ) -> SocketResult<Resource<UdpSocket>> {
        Err(sockets::network::ErrorCode::AccessDenied.into())
    }
}
