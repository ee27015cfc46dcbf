//! The TCP socket under each connection, noted as actix accepts it.
//!
//! actix has no write timeout: a connection whose peer takes nothing more is held by its
//! pending write for as long as the peer lives, with megabytes in its send queue. A widget that
//! sends but never reads is such a peer. Its connection loop notices (every frame it writes is
//! bounded in time) and then cuts the socket off here, which is what actually frees it.

use std::any::Any;

use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;

/// A connection's socket, as its handlers may reach it (`HttpRequest::conn_data`).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionSocket {
    #[cfg(unix)]
    fd: std::os::fd::RawFd,
}

/// Runs as each connection is accepted.
pub fn on_connect(conn: &dyn Any, data: &mut Extensions) {
    let Some(tcp) = conn.downcast_ref::<TcpStream>() else {
        return;
    };
    // Alerts are small frames that must not wait for Nagle's algorithm to batch them.
    let _ = tcp.set_nodelay(true);
    #[cfg(unix)]
    data.insert(ConnectionSocket {
        fd: std::os::fd::AsRawFd::as_raw_fd(tcp),
    });
}

impl ConnectionSocket {
    /// Drops the connection at once, with what the peer never took: SO_LINGER 0 makes the close
    /// reset the connection instead of waiting on the peer, and the shutdown wakes actix's
    /// pending write, which then fails and closes the socket.
    ///
    /// Only for a connection that is still open, from a task on its own worker thread, with no
    /// `.await` between knowing it open and this call. A connection's socket is closed only on
    /// its worker's thread, so the descriptor cannot have been closed and reused meanwhile.
    pub(crate) fn abort(self) {
        #[cfg(unix)]
        {
            // SAFETY: by the contract above the descriptor is this connection's open socket for
            // the duration of this call; it is borrowed, never closed here.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
            let socket = socket2::SockRef::from(&fd);
            let _ = socket.set_linger(Some(std::time::Duration::ZERO));
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}
