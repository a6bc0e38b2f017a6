//! Whether a request's client is still connected, for handlers nobody polls until they answer (non-streaming
//! completions). actix registers a duplicate of each TCP connection's descriptor at accept
//! ([`on_connect`]); a handler asks [`ConnWatch::closed`], which peeks at the socket without consuming
//! anything: end-of-file (the client closed) or an error means gone, pending bytes or nothing to read mean
//! still there.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use actix_web::dev::Extensions;

/// A connection's duplicated descriptor (closed with the connection's data).
#[derive(Debug, Clone)]
pub struct ConnWatch(Arc<OwnedFd>);

/// Connection hook (`on_connect_ext`): remembers each TCP connection's descriptor.
pub fn on_connect(tcp: &actix_web::rt::net::TcpStream, data: &mut Extensions) {
    if let Ok(fd) = tcp.as_fd().try_clone_to_owned() {
        data.insert(ConnWatch(Arc::new(fd)));
    }
}

impl ConnWatch {
    /// True once the peer has closed the connection (or it failed). The descriptor shares the connection's
    /// non-blocking mode, so this never waits.
    pub fn closed(&self) -> bool {
        let sock = socket2::SockRef::from(&*self.0);
        let mut buf = [MaybeUninit::<u8>::uninit(); 1];
        match sock.peek(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_peer_that_closes_is_seen_and_pending_bytes_are_not_consumed() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        let watch = ConnWatch(Arc::new(server.as_fd().try_clone_to_owned().expect("dup")));
        assert!(!watch.closed(), "connected, nothing sent");
        client.write_all(b"GET / HTTP/1.1\r\n").expect("write");
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!watch.closed(), "pending bytes: still connected");
        assert!(!watch.closed(), "peeking consumed nothing");
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(50));
        // the pending bytes are still ahead of the end-of-file: drain them as the server would
        let mut buf = [0u8; 64];
        let _ = std::io::Read::read(&mut &server, &mut buf);
        assert!(watch.closed(), "the client closed");
    }
}
