//! The server side of a terminated TLS connection, on rustls' unbuffered
//! API, with buffers that exist only while bytes are in flight.
//!
//! rustls' buffered connection (and so tokio-rustls) keeps a 4 KiB record
//! buffer allocated, zero-filled and resident for the life of every
//! connection, idle or not; with thousands of idle keep-alive connections
//! that buffer was the largest single part of their memory. [`TlsStream`]
//! drives an [`UnbufferedServerConnection`] and owns the three buffers
//! itself:
//! - `incoming`: TLS bytes read from the socket that rustls has not
//!   consumed yet (a partial record, or a whole flight);
//! - `plaintext`: decrypted bytes the application has not read yet;
//! - `outgoing`: TLS bytes (records, alerts) not yet written to the socket.
//!
//! Each is released as soon as it is empty, so an idle connection holds
//! only rustls' protocol state (keys, the peer's certificates) and the
//! socket. An HTTP/1 connection that keeps its parser between requests
//! keeps its buffers too ([`TlsStream::hold_buffers`]) and releases them
//! when it parks, instead of allocating, zero-filling and freeing them for
//! every request of a busy keep-alive connection. The protocol itself
//! stays rustls': record protection, alerts, close_notify, KeyUpdate and
//! the handshake all happen inside
//! `process_tls_records`; this module only moves bytes.
//!
//! Limits: `incoming` never grows past what rustls' own buffered connection
//! accepts (one 64 KiB handshake message while handshaking, one maximal
//! record afterwards), so a peer cannot make a connection buffer more.

use core::pin::Pin;
use core::task::{Context, Poll, ready};
use std::io;
use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::{CommonState, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most TLS bytes read from the socket at a time.
const READ_SIZE: usize = 4096;
/// The largest TLS record on the wire (rustls' `MAX_WIRE_SIZE`: a 16 KiB
/// fragment, 2 KiB of expansion allowance and the 5-byte header).
const MAX_RECORD: usize = 16_384 + 2_048 + 5;
/// The most unconsumed TLS bytes buffered while handshaking: rustls joins
/// a handshake message of up to 64 KiB (a client certificate chain) from
/// its records in place, so they must all be held at once.
const MAX_HANDSHAKE_BUFFER: usize = 0xffff + MAX_RECORD;
/// The most plaintext accepted per write: four full records, so one write
/// never needs more than ~64 KiB of `outgoing`.
const MAX_WRITE: usize = 4 * 16_384;

/// A TLS connection over `IO` whose buffers are freed while idle.
pub(crate) struct TlsStream<IO> {
    io: IO,
    conn: Box<UnbufferedServerConnection>,
    /// `incoming[..received]` holds TLS bytes not yet consumed by rustls.
    incoming: Vec<u8>,
    received: usize,
    /// `plaintext[plain_read..]` holds decrypted bytes not yet read.
    plaintext: Vec<u8>,
    plain_read: usize,
    /// `outgoing[sent..]` holds TLS bytes not yet written to `io`.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer sent close_notify: reads end cleanly.
    peer_closed: bool,
    /// The socket reached end of input (without close_notify unless
    /// `peer_closed`).
    eof: bool,
    /// close_notify has been queued; no more application data is sent.
    close_queued: bool,
    /// A fatal protocol error; every later operation fails with it.
    failed: Option<rustls::Error>,
    /// Empty buffers are kept for reuse instead of freed (see
    /// [`TlsStream::hold_buffers`]).
    hold: bool,
}

/// Why [`TlsStream::process`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// rustls needs more bytes from the peer (or, after the handshake,
    /// has nothing to do until it gets them).
    NeedData,
    /// Both sides have sent close_notify.
    Closed,
}

/// What [`TlsStream::process`] should do once rustls can send application
/// data.
#[derive(Debug, Clone, Copy)]
enum ToSend<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

fn protocol_error(e: rustls::Error) -> io::Error {
    // The same shape as tokio-rustls' errors, so callers can downcast to
    // the rustls error (the handshake failure reasons rely on it).
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<IO> TlsStream<IO> {
    /// rustls' view of the connection: negotiated parameters and the
    /// peer's certificates.
    pub(crate) fn common_state(&self) -> &CommonState {
        &self.conn
    }

    /// The transport.
    pub(crate) fn get_ref(&self) -> &IO {
        &self.io
    }

    /// While `hold` is set, buffers that become empty are kept for the
    /// next read or write; clearing it frees the empty ones at once (and
    /// from then on as soon as they empty). For a connection that is busy
    /// now and may go idle later: the caller clears it when it goes idle.
    pub(crate) fn hold_buffers(&mut self, hold: bool) {
        self.hold = hold;
        if !hold {
            self.release_idle_buffers();
        }
    }

    /// Whether a read may complete without new bytes from the socket:
    /// decrypted bytes are waiting, or the end of the stream (clean or
    /// not) or an error is already known.
    pub(crate) fn read_would_not_block(&self) -> bool {
        self.plain_read < self.plaintext.len()
            || self.peer_closed
            || self.eof
            || self.failed.is_some()
    }

    /// How many bytes the three buffers hold allocated (for tests and
    /// diagnostics).
    #[cfg(test)]
    pub(crate) fn buffered_capacity(&self) -> usize {
        self.incoming.capacity() + self.plaintext.capacity() + self.outgoing.capacity()
    }

    /// Runs rustls over the buffered incoming bytes until it needs more
    /// from the peer, collecting decrypted data into `plaintext` and TLS
    /// output into `outgoing`. `send` is encrypted (or close_notify
    /// queued) as soon as rustls allows application data; whether it was
    /// is returned alongside.
    fn process(
        &mut self,
        send: ToSend<'_>,
        dest: Option<&mut ReadBuf<'_>>,
    ) -> Result<(Stop, bool), rustls::Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let processed = self.process_records(send, dest);
        if let Err(e) = &processed {
            self.fail(e.clone());
        }
        processed
    }

    fn process_records(
        &mut self,
        mut send: ToSend<'_>,
        mut dest: Option<&mut ReadBuf<'_>>,
    ) -> Result<(Stop, bool), rustls::Error> {
        let mut sent_it = false;
        loop {
            let UnbufferedStatus { mut discard, state } = self
                .conn
                .process_tls_records(&mut self.incoming[..self.received]);
            // Every path, errors included, ends at the discard below: rustls
            // remembers how far into `incoming` it got (a handshake message
            // joined from several records, say), so the next call must see
            // exactly the bytes it did not discard, or it panics.
            let step: Result<Option<Stop>, rustls::Error> = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut read = Ok(None);
                    while let Some(record) = traffic.next_record() {
                        let record = match record {
                            Ok(record) => record,
                            Err(e) => {
                                read = Err(e);
                                break;
                            }
                        };
                        discard += record.discard;
                        let mut payload = record.payload;
                        if self.plain_read == self.plaintext.len() {
                            self.plaintext.clear();
                            self.plain_read = 0;
                            // Straight into the reader's buffer when nothing
                            // is queued ahead of it; only the rest is kept.
                            if let Some(dest) = dest.as_deref_mut() {
                                let n = dest.remaining().min(payload.len());
                                dest.put_slice(&payload[..n]);
                                payload = &payload[n..];
                            }
                        }
                        self.plaintext.extend_from_slice(payload);
                    }
                    read
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut self.outgoing, 512, |out| encode.encode(out)).map(|()| None)
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // The bytes are queued in `outgoing`, ahead of anything
                    // written later, and are written exactly once from there.
                    transmit.done();
                    Ok(None)
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    Ok(Some(Stop::Closed))
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Stop::NeedData)),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match send {
                    ToSend::Nothing => Ok(Some(Stop::NeedData)),
                    ToSend::Data(data) => {
                        // Room for the records' headers and tags up front,
                        // so the usual case encrypts on the first try.
                        let room = data.len() + 64 * (data.len() / 16_384 + 1);
                        send = ToSend::Nothing;
                        sent_it = true;
                        // Encrypting may queue a KeyUpdate: go round again.
                        encrypt_into(&mut self.outgoing, room, |out| traffic.encrypt(data, out))
                            .map(|()| None)
                    }
                    ToSend::CloseNotify => {
                        send = ToSend::Nothing;
                        sent_it = true;
                        encrypt_into(&mut self.outgoing, 64, |out| {
                            traffic.queue_close_notify(out)
                        })
                        .map(|()| None)
                    }
                },
                // Early data is never enabled (no session resumption), so
                // rustls never offers it; refuse rather than guess.
                Ok(ConnectionState::ReadEarlyData(_)) => {
                    Err(rustls::Error::General("unexpected early data".to_owned()))
                }
                // `ConnectionState` is non-exhaustive: a state this code
                // does not know cannot be handled safely.
                Ok(_) => Err(rustls::Error::General(
                    "unknown TLS connection state".to_owned(),
                )),
            };
            discard_front(&mut self.incoming, &mut self.received, discard);
            if let Some(stop) = step? {
                return Ok((stop, sent_it));
            }
        }
    }

    /// Records a fatal error and queues the alerts rustls has for it.
    fn fail(&mut self, e: rustls::Error) {
        self.failed = Some(e);
        // rustls has queued the alert describing the error; while it has
        // something to send, `process_tls_records` hands that out before it
        // would look at incoming bytes again. Once the queue is empty it
        // must not be called: it would deframe the unconsumed bytes anew
        // (a second fatal alert for a bad record, or, given any other
        // buffer than the one its handshake deframer points into, a
        // panic — which the release build turns into an abort).
        for _ in 0..8 {
            if !self.conn.wants_write() {
                break;
            }
            let UnbufferedStatus { discard, state } = self
                .conn
                .process_tls_records(&mut self.incoming[..self.received]);
            let encoded = match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut self.outgoing, 512, |out| encode.encode(out)).is_ok()
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    true
                }
                _ => false,
            };
            discard_front(&mut self.incoming, &mut self.received, discard);
            if !encoded {
                break;
            }
        }
        // Nothing the peer sends is processed any more.
        self.incoming = Vec::new();
        self.received = 0;
    }

    /// Frees the buffers that are empty.
    fn release_idle_buffers(&mut self) {
        if self.received == 0 && self.incoming.capacity() != 0 {
            self.incoming = Vec::new();
        }
        if self.plain_read == self.plaintext.len() && self.plaintext.capacity() != 0 {
            self.plaintext = Vec::new();
            self.plain_read = 0;
        }
        if self.sent == self.outgoing.len() && self.outgoing.capacity() != 0 {
            self.outgoing = Vec::new();
            self.sent = 0;
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    /// Completes a server handshake on `io`, whose first bytes (at least a
    /// complete ClientHello) have already been read into `first`. On
    /// failure the alert rustls chose has been written (best effort) and
    /// the transport is returned for an orderly close.
    pub(crate) async fn accept(
        io: IO,
        config: Arc<ServerConfig>,
        first: &[u8],
    ) -> Result<Self, (io::Error, IO)> {
        let conn = match UnbufferedServerConnection::new(config) {
            Ok(c) => Box::new(c),
            Err(e) => return Err((protocol_error(e), io)),
        };
        let mut tls = Self {
            io,
            conn,
            incoming: first.to_vec(),
            received: first.len(),
            plaintext: Vec::new(),
            plain_read: 0,
            outgoing: Vec::new(),
            sent: 0,
            peer_closed: false,
            eof: false,
            close_queued: false,
            failed: None,
            hold: false,
        };
        match core::future::poll_fn(|cx| tls.poll_handshake(cx)).await {
            Ok(()) => {
                tls.release_idle_buffers();
                Ok(tls)
            }
            Err(e) => {
                if tls.failed.is_some() {
                    // Best effort: the alert tells the client why.
                    let _ = core::future::poll_fn(|cx| tls.poll_write_outgoing(cx)).await;
                }
                Err((e, tls.io))
            }
        }
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            self.process(ToSend::Nothing, None)
                .map_err(protocol_error)?;
            ready!(self.poll_write_outgoing(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.peer_closed || self.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                )));
            }
            ready!(self.poll_fill_incoming(cx))?;
        }
    }

    /// Reads more TLS bytes from the socket. Sets `eof` at end of input.
    fn poll_fill_incoming(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let limit = if self.conn.is_handshaking() {
            MAX_HANDSHAKE_BUFFER
        } else {
            MAX_RECORD
        };
        if self.received >= limit {
            // rustls would have consumed a complete record or message
            // by now: the peer's framing is invalid.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS message exceeds the buffer limit",
            )));
        }
        let want = (self.received + READ_SIZE).min(limit);
        if self.incoming.len() < want {
            self.incoming.resize(want, 0);
        }
        let mut buf = ReadBuf::new(&mut self.incoming[self.received..]);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                if n == 0 {
                    self.eof = true;
                }
                self.received += n;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // The connection is idle (or waiting mid-record): release
                // what is empty before the task sleeps.
                if !self.hold {
                    self.release_idle_buffers();
                }
                Poll::Pending
            }
        }
    }

    /// Writes `outgoing` to the socket; frees it once everything is out.
    fn poll_write_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.hold {
            self.outgoing.clear();
        } else {
            self.outgoing = Vec::new();
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Surfaces a protocol error for reads and writes, after a best-effort
    /// attempt to send its alert.
    fn poll_failed(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let e = self.failed.clone()?;
        let _ = self.poll_write_outgoing(cx);
        Some(protocol_error(e))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.plain_read < this.plaintext.len() {
                let n = buf.remaining().min(this.plaintext.len() - this.plain_read);
                buf.put_slice(&this.plaintext[this.plain_read..this.plain_read + n]);
                this.plain_read += n;
                if this.plain_read == this.plaintext.len() {
                    if this.hold {
                        this.plaintext.clear();
                    } else {
                        this.plaintext = Vec::new();
                    }
                    this.plain_read = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = this.poll_failed(cx) {
                return Poll::Ready(Err(e));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // End of input without close_notify: possibly a truncation
                // (rustls' buffered reader reports the same).
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            let before = buf.filled().len();
            if let Err(e) = this.process(ToSend::Nothing, Some(buf)) {
                let _ = this.poll_write_outgoing(cx);
                return Poll::Ready(Err(protocol_error(e)));
            }
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            if this.plain_read < this.plaintext.len() || this.peer_closed {
                continue;
            }
            // Anything rustls answered on its own (a KeyUpdate reply) goes
            // out before waiting; a full socket does not stop the read.
            if let Poll::Ready(Err(e)) = this.poll_write_outgoing(cx) {
                return Poll::Ready(Err(e));
            }
            ready!(this.poll_fill_incoming(cx))?;
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(e) = this.poll_failed(cx) {
            return Poll::Ready(Err(e));
        }
        if this.close_queued {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS connection already closed for writing",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Back-pressure: what was encrypted before must be on its way
        // first, so `outgoing` stays bounded.
        ready!(this.poll_write_outgoing(cx))?;
        let data = &data[..data.len().min(MAX_WRITE)];
        match this.process(ToSend::Data(data), None) {
            Ok((_, true)) => {}
            Ok((_, false)) => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "TLS connection cannot send application data",
                )));
            }
            Err(e) => {
                let _ = this.poll_write_outgoing(cx);
                return Poll::Ready(Err(protocol_error(e)));
            }
        }
        // The data is accepted; a full socket is waited for by the next
        // write or flush.
        if let Poll::Ready(Err(e)) = this.poll_write_outgoing(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_write_outgoing(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_queued && this.failed.is_none() {
            this.close_queued = true;
            // A close_notify that cannot be queued (the handshake never
            // finished, or both sides already closed) is simply not sent.
            let _ = this.process(ToSend::CloseNotify, None);
        }
        ready!(this.poll_write_outgoing(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Removes the first `n` bytes of `buf[..*len]`.
fn discard_front(buf: &mut [u8], len: &mut usize, n: usize) {
    let n = n.min(*len);
    if n == 0 {
        return;
    }
    buf.copy_within(n..*len, 0);
    *len -= n;
}

/// Appends what `encode` writes to `out`, growing it to the size rustls
/// asks for.
fn encode_into(
    out: &mut Vec<u8>,
    room: usize,
    encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    append_with(out, room, "encoding", encode, |e| match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    })
}

/// Appends what `encrypt` writes to `out`, growing it to the size rustls
/// asks for.
fn encrypt_into(
    out: &mut Vec<u8>,
    room: usize,
    encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), rustls::Error> {
    append_with(out, room, "encrypting", encrypt, |e| match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    })
}

/// Runs `write` on `room` bytes appended to `out`, growing the room to what
/// `required` reads from an "insufficient size" error and retrying; keeps
/// exactly the bytes written, and nothing on failure.
fn append_with<E: core::fmt::Display>(
    out: &mut Vec<u8>,
    mut room: usize,
    what: &str,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    required: impl Fn(&E) -> Option<usize>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => match required(&e) {
                Some(size) if size > room => room = size,
                _ => {
                    out.truncate(start);
                    return Err(rustls::Error::General(format!("{what} TLS data: {e}")));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A server configuration with a fresh self-signed certificate for
    /// `localhost`, and a client configuration trusting it.
    fn configs() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let der: CertificateDer<'static> = cert.der().clone();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A handshaken pair: (server under test, tokio-rustls client).
    async fn pair() -> (
        TlsStream<DuplexStream>,
        tokio_rustls::client::TlsStream<DuplexStream>,
    ) {
        let (server_cfg, client_cfg) = configs();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("localhost").expect("name");
        let client = tokio_rustls::TlsConnector::from(client_cfg).connect(name, b);
        let server = TlsStream::accept(a, server_cfg, &[]);
        let (client, server) = tokio::join!(client, server);
        let server = server.map_err(|(e, _)| e).expect("server handshake");
        (server, client.expect("client handshake"))
    }

    /// Whether a read on `server` is pending now (no data, no end).
    async fn read_is_pending(server: &mut TlsStream<DuplexStream>) -> bool {
        let mut one = [0u8; 1];
        core::future::poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut one);
            Poll::Ready(Pin::new(&mut *server).poll_read(cx, &mut buf).is_pending())
        })
        .await
    }

    /// One request from `client` and its response from `server`; then the
    /// server's next read must wait.
    async fn request_response(
        server: &mut TlsStream<DuplexStream>,
        client: &mut tokio_rustls::client::TlsStream<DuplexStream>,
        round: usize,
    ) {
        let request = format!("request {round}");
        client
            .write_all(request.as_bytes())
            .await
            .expect("client write");
        client.flush().await.expect("client flush");
        let mut got = vec![0u8; request.len()];
        server.read_exact(&mut got).await.expect("server read");
        assert_eq!(got, request.as_bytes());
        server.write_all(b"response").await.expect("server write");
        server.flush().await.expect("server flush");
        let mut resp = [0u8; 8];
        client.read_exact(&mut resp).await.expect("client read");
        assert_eq!(&resp, b"response");
        assert!(read_is_pending(server).await, "idle read must wait");
    }

    #[tokio::test]
    async fn exchanges_data_and_holds_no_buffer_while_idle() {
        let (mut server, mut client) = pair().await;
        assert_eq!(
            server.buffered_capacity(),
            0,
            "buffers kept after the handshake"
        );
        for round in 0..3 {
            request_response(&mut server, &mut client, round).await;
            assert_eq!(
                server.buffered_capacity(),
                0,
                "an idle connection must not keep its buffers (round {round})"
            );
            assert!(!server.read_would_not_block());
        }
    }

    /// A busy connection keeps its buffers between exchanges (no
    /// allocation per request) and frees them when told it is idle.
    #[tokio::test]
    async fn held_buffers_are_reused_until_released() {
        let (mut server, mut client) = pair().await;
        server.hold_buffers(true);
        let mut held = None;
        for round in 0..3 {
            request_response(&mut server, &mut client, round).await;
            let now = server.buffered_capacity();
            assert!(now > 0, "held buffers were freed (round {round})");
            assert_eq!(*held.get_or_insert(now), now, "buffers reallocated");
        }
        server.hold_buffers(false);
        assert_eq!(server.buffered_capacity(), 0, "released on request");
        // And the stream still works after the release.
        client.write_all(b"again").await.expect("write");
        client.flush().await.expect("client flush");
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.expect("server read");
        assert_eq!(&got, b"again");
    }

    #[tokio::test]
    async fn large_transfers_both_ways_and_key_updates() {
        let (mut server, mut client) = pair().await;
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        // Client → server, with a KeyUpdate in the middle.
        let sender = async {
            client
                .write_all(&payload[..100_000])
                .await
                .expect("write 1");
            client
                .get_mut()
                .1
                .refresh_traffic_keys()
                .expect("key update");
            client
                .write_all(&payload[100_000..])
                .await
                .expect("write 2");
            client.flush().await.expect("flush");
            client
        };
        let receiver = async {
            let mut got = vec![0u8; expected.len()];
            server.read_exact(&mut got).await.expect("server read");
            assert!(got == expected, "payload corrupted");
            server
        };
        let (mut client, mut server) = tokio::join!(sender, receiver);
        // Server → client, through the keys the KeyUpdate changed.
        let sender = async {
            server.write_all(&payload).await.expect("server write");
            server.flush().await.expect("server flush");
            server
        };
        let receiver = async {
            let mut got = vec![0u8; payload.len()];
            client.read_exact(&mut got).await.expect("client read");
            assert!(got == payload, "payload corrupted");
        };
        let (mut server, ()) = tokio::join!(sender, receiver);
        assert!(read_is_pending(&mut server).await);
        assert_eq!(server.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn close_notify_both_ways() {
        let (mut server, mut client) = pair().await;
        // The client's close_notify ends the server's reads cleanly.
        client.shutdown().await.expect("client shutdown");
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("clean end");
        assert!(rest.is_empty());
        // The server's close_notify ends the client's reads cleanly.
        server.shutdown().await.expect("server shutdown");
        let mut rest = Vec::new();
        client
            .read_to_end(&mut rest)
            .await
            .expect("client clean end");
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn end_of_input_without_close_notify_is_an_error() {
        let (mut server, client) = pair().await;
        // Dropping the client's transport without close_notify.
        let (io, _) = client.into_inner();
        drop(io);
        let mut rest = Vec::new();
        let e = server.read_to_end(&mut rest).await.expect_err("truncation");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_corrupted_record_fails_the_connection_with_an_alert() {
        let (mut server, client) = pair().await;
        let (mut raw, _) = client.into_inner();
        // An application-data record whose tag cannot verify.
        let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        record.extend_from_slice(&[0x55; 32]);
        raw.write_all(&record).await.expect("write");
        let mut buf = [0u8; 16];
        let e = server.read(&mut buf).await.expect_err("bad record");
        let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        assert!(
            matches!(inner, Some(rustls::Error::DecryptError)),
            "got {e:?}"
        );
        // The alert (an encrypted record) reached the peer.
        let mut alert = [0u8; 5];
        raw.read_exact(&mut alert).await.expect("alert record");
        assert_eq!(alert[0], 0x17, "an encrypted alert record");
        // The failure is sticky.
        assert!(server.write_all(b"x").await.is_err());
    }

    #[tokio::test]
    async fn handshake_failure_returns_the_transport() {
        let (server_cfg, _) = configs();
        let (a, mut b) = tokio::io::duplex(4096);
        // Not a ClientHello: a handshake record with garbage.
        b.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00])
            .await
            .expect("write");
        let failed = TlsStream::accept(a, server_cfg, &[]).await;
        let Err((e, _io)) = failed else {
            panic!("handshake must fail")
        };
        assert!(
            e.get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_some(),
            "a rustls error: {e:?}"
        );
        // rustls' alert was written before giving the transport back.
        let mut alert = [0u8; 7];
        b.read_exact(&mut alert).await.expect("alert");
        assert_eq!(alert[0], 0x15, "an alert record");
    }

    /// A client without a certificate at a server that requires one: the
    /// error comes while the client's second flight (Certificate, then
    /// Finished) is still partly unconsumed in `incoming`. Reporting it must
    /// not hand rustls a buffer other than the one its deframer points
    /// into (that panicked, and the release build aborts on panics: one
    /// such client stopped the gateway). Found by the http_head fuzz target.
    #[tokio::test]
    async fn a_missing_client_certificate_fails_cleanly_with_an_alert() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let der: CertificateDer<'static> = cert.der().clone();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der.clone()).expect("root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots.clone()),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let server_cfg = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![der],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        for _ in 0..20 {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let name = ServerName::try_from("localhost").expect("name");
            let client = async {
                let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client_cfg.clone()))
                    .connect(name, b)
                    .await?;
                // TLS 1.3: the client learns of the refusal on its first read.
                let mut one = [0u8; 1];
                tls.read(&mut one).await
            };
            let server = TlsStream::accept(a, Arc::new(server_cfg.clone()), &[]);
            let (client, server) = tokio::join!(client, server);
            let Err((e, _io)) = server else {
                panic!("the handshake must fail without a client certificate")
            };
            assert!(
                matches!(
                    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
                    Some(rustls::Error::NoCertificatesPresented)
                ),
                "{e:?}"
            );
            let client_err = client.expect_err("the client is refused");
            assert!(
                client_err.to_string().contains("CertificateRequired"),
                "the client hears why: {client_err}"
            );
        }
    }
}
