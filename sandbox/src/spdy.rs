//! Port-forward as kubectl 1.32 speaks it, to a real TCP backend: SPDY/3.1 framing with the
//! `portforward.k8s.io` stream protocol, carried either by the connection a `SPDY/3.1`
//! upgrade hands over or tunnelled in the binary messages of a WebSocket
//! (`SPDY/3.1+portforward.k8s.io`, kubectl's first choice; message boundaries mean nothing,
//! the messages are one byte stream).
//!
//! For every local connection kubectl opens two streams: an error stream, then (after our
//! reply) a data stream. The data stream's bytes go to a fresh TCP connection to the
//! backend and back; its FIN half-closes that connection, and the backend's EOF becomes our
//! FIN on the data stream and then on the error stream, which is what kubectl waits for
//! before it closes the local connection. A backend that refuses the connection is
//! reported on the error stream, as the kubelet does.
//!
//! The sandbox carries no zlib, so it does not read the compressed header blocks of
//! kubectl's `SYN_STREAM`s: it pairs streams by order (error, then data), which is how one
//! local connection at a time opens them; connections opened concurrently may pair their
//! error streams crosswise, which only changes which error stream closes first. Its own
//! header blocks are empty and written as stored (uncompressed) deflate blocks of one zlib
//! stream, each ended by a sync flush's empty stored block as Go's writer ends them, which
//! every zlib reader accepts, with or without the SPDY dictionary. Flow
//! control (`WINDOW_UPDATE`) is not enforced either way; `PING`s are answered.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;
/// Frames larger than this are a broken peer, not a reason to buffer 16 MiB.
const MAX_FRAME: usize = 1 << 20;
/// How much of the backend's output goes into one data frame.
const CHUNK: usize = 32 * 1024;

/// One SPDY frame, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Control {
        kind: u16,
        flags: u8,
        payload: Bytes,
    },
    Data {
        stream: u32,
        flags: u8,
        payload: Bytes,
    },
}

/// Takes the next whole frame off the front of `buf`, if it holds one.
fn next_frame(buf: &mut BytesMut) -> Result<Option<Frame>, &'static str> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let length = usize::from(buf[5]) << 16 | usize::from(buf[6]) << 8 | usize::from(buf[7]);
    if length > MAX_FRAME {
        return Err("frame too large");
    }
    if buf.len() < 8 + length {
        return Ok(None);
    }
    let head = buf.split_to(8);
    let payload = buf.split_to(length).freeze();
    let flags = head[4];
    Ok(Some(if head[0] & 0x80 != 0 {
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err("not SPDY/3");
        }
        Frame::Control {
            kind: u16::from_be_bytes([head[2], head[3]]),
            flags,
            payload,
        }
    } else {
        Frame::Data {
            stream: u32::from_be_bytes([head[0], head[1], head[2], head[3]]),
            flags,
            payload,
        }
    }))
}

fn header(out: &mut BytesMut, first: u32, flags: u8, length: usize) {
    out.put_u32(first);
    // Lengths are at most CHUNK or a few bytes here, so 24 bits hold them.
    out.put_u8(flags);
    out.put_uint(length as u64, 3);
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + payload.len());
    header(
        &mut out,
        0x8000_0000 | u32::from(VERSION) << 16 | u32::from(kind),
        flags,
        payload.len(),
    );
    out.put_slice(payload);
    out.freeze()
}

fn data(stream: u32, flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + payload.len());
    header(&mut out, stream & 0x7fff_ffff, flags, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// Empty name/value blocks, as consecutive pieces of one zlib stream.
struct HeaderWriter {
    started: bool,
}

impl HeaderWriter {
    fn empty_block(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(11);
        if !self.started {
            // CMF/FLG: deflate, 32 KiB window, no preset dictionary; a multiple of 31.
            out.extend_from_slice(&[0x78, 0x01]);
            self.started = true;
        }
        // A non-final stored block holding the 4-byte pair count 0, then the empty stored
        // block a sync flush ends with: it is what tells a streaming inflater (Go's) to hand
        // out what it has without reading past this frame.
        out.extend_from_slice(&[0x00, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0]);
        out.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);
        out
    }

    fn syn_reply(&mut self, stream: u32) -> Bytes {
        let mut payload = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
        payload.extend(self.empty_block());
        control(SYN_REPLY, 0, &payload)
    }
}

fn stream_id(payload: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = payload.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes) & 0x7fff_ffff)
}

/// A data stream's way to its backend connection: bytes, and `None` for the client's FIN.
type ToBackend = mpsc::UnboundedSender<Option<Bytes>>;

/// Serves one port-forward connection: `input` is the client's byte stream, `output` takes
/// the bytes to send back. Ends when the client goes away or says GOAWAY.
pub(crate) async fn serve(
    mut input: mpsc::Receiver<Bytes>,
    output: mpsc::UnboundedSender<Bytes>,
    backend: SocketAddr,
) {
    let mut buf = BytesMut::new();
    let mut headers = HeaderWriter { started: false };
    let mut waiting_error: Option<u32> = None;
    let mut streams: HashMap<u32, ToBackend> = HashMap::new();
    while let Some(chunk) = input.recv().await {
        buf.extend_from_slice(&chunk);
        loop {
            let frame = match next_frame(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(why) => {
                    tracing::debug!(why, "sandbox port-forward: broken SPDY stream");
                    return;
                }
            };
            match frame {
                Frame::Control {
                    kind: SYN_STREAM,
                    payload,
                    ..
                } => {
                    let Some(id) = stream_id(&payload) else {
                        return;
                    };
                    if output.send(headers.syn_reply(id)).is_err() {
                        return;
                    }
                    match waiting_error.take() {
                        None => waiting_error = Some(id),
                        Some(error) => {
                            let (to_backend, from_client) = mpsc::unbounded_channel();
                            streams.insert(id, to_backend);
                            tokio::spawn(pump(backend, id, error, from_client, output.clone()));
                        }
                    }
                }
                Frame::Control {
                    kind: RST_STREAM,
                    payload,
                    ..
                } => {
                    if let Some(id) = stream_id(&payload) {
                        // Dropping the sender ends that stream's backend connection.
                        streams.remove(&id);
                    }
                }
                Frame::Control {
                    kind: PING,
                    flags,
                    payload,
                } => {
                    if output.send(control(PING, flags, &payload)).is_err() {
                        return;
                    }
                }
                Frame::Control { kind: GOAWAY, .. } => return,
                // SETTINGS, WINDOW_UPDATE, HEADERS: nothing to do for a sandbox.
                Frame::Control { .. } => {}
                Frame::Data {
                    stream,
                    flags,
                    mut payload,
                } => {
                    let Some(to_backend) = streams.get(&stream) else {
                        // The error stream's FIN (kubectl writes nothing else there).
                        continue;
                    };
                    if payload.has_remaining() {
                        let _ = to_backend.send(Some(payload.split_to(payload.len())));
                    }
                    if flags & FLAG_FIN != 0 {
                        let _ = to_backend.send(None);
                    }
                }
            }
        }
    }
}

/// One forwarded connection: the data stream `id` to a new TCP connection to `backend`;
/// `error` is its error stream.
async fn pump(
    backend: SocketAddr,
    id: u32,
    error: u32,
    mut from_client: mpsc::UnboundedReceiver<Option<Bytes>>,
    output: mpsc::UnboundedSender<Bytes>,
) {
    let tcp = match tokio::net::TcpStream::connect(backend).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let message = format!("error forwarding port to pod: dial {backend}: {e}");
            let _ = output.send(data(error, FLAG_FIN, message.as_bytes()));
            let _ = output.send(data(id, FLAG_FIN, &[]));
            return;
        }
    };
    let (mut reader, mut writer) = tcp.into_split();
    let upstream = async move {
        while let Some(Some(bytes)) = from_client.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
        // The client's FIN (or its stream's reset): no more bytes for the backend.
        let _ = writer.shutdown().await;
    };
    let downstream = async {
        let mut chunk = vec![0; CHUNK];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if output.send(data(id, 0, &chunk[..n])).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = output.send(data(id, FLAG_FIN, &[]));
        let _ = output.send(data(error, FLAG_FIN, &[]));
    };
    // The upstream half may still be waiting for a FIN when the backend is done: the
    // stream is over once the backend closed.
    tokio::select! {
        () = downstream => {}
        () = async { upstream.await; std::future::pending::<()>().await } => {}
    }
}

/// [`serve`] over an upgraded connection (the `SPDY/3.1` upgrade).
pub(crate) async fn over_io<S>(io: S, backend: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let (tx, input) = mpsc::channel(16);
    let (output, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let read = async move {
        let mut chunk = vec![0; CHUNK];
        while let Ok(n @ 1..) = reader.read(&mut chunk).await {
            if tx.send(Bytes::copy_from_slice(&chunk[..n])).await.is_err() {
                return;
            }
        }
    };
    let write = async move {
        while let Some(bytes) = rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    };
    tokio::join!(read, write, serve(input, output, backend));
}

/// [`serve`] tunnelled in a WebSocket's binary messages (`SPDY/3.1+portforward.k8s.io`).
pub(crate) async fn over_websocket(socket: axum::extract::ws::WebSocket, backend: SocketAddr) {
    use axum::extract::ws::Message;
    use futures_util::{SinkExt as _, StreamExt as _};
    let (mut sink, mut stream) = socket.split();
    let (tx, input) = mpsc::channel(16);
    let (output, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let read = async move {
        while let Some(Ok(message)) = stream.next().await {
            let sent = match message {
                Message::Binary(bytes) => tx.send(bytes).await.is_ok(),
                Message::Close(_) => false,
                // Pings are answered by the WebSocket layer; text means nothing here.
                _ => true,
            };
            if !sent {
                return;
            }
        }
    };
    let write = async move {
        while let Some(bytes) = rx.recv().await {
            if sink.send(Message::Binary(bytes)).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    };
    tokio::join!(read, write, serve(input, output, backend));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn_stream(id: u32) -> Bytes {
        let mut payload = id.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        // A header block we do not read.
        payload.extend_from_slice(&[0x78, 0xbb, 1, 2, 3]);
        control(SYN_STREAM, 0, &payload)
    }

    async fn frames(rx: &mut mpsc::UnboundedReceiver<Bytes>, n: usize) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        while out.len() < n {
            buf.extend_from_slice(&rx.recv().await.expect("a frame"));
            while let Some(f) = next_frame(&mut buf).unwrap() {
                out.push(f);
            }
        }
        out
    }

    #[test]
    fn frames_round_trip_and_header_blocks_are_one_zlib_stream() {
        let mut buf = BytesMut::from(&data(3, FLAG_FIN, b"hi")[..]);
        buf.extend_from_slice(&control(PING, 0, &[0, 0, 0, 1]));
        assert_eq!(
            next_frame(&mut buf).unwrap(),
            Some(Frame::Data {
                stream: 3,
                flags: FLAG_FIN,
                payload: Bytes::from_static(b"hi")
            })
        );
        assert!(matches!(
            next_frame(&mut buf).unwrap(),
            Some(Frame::Control { kind: PING, .. })
        ));
        assert_eq!(next_frame(&mut buf).unwrap(), None);
        let mut h = HeaderWriter { started: false };
        let first = h.empty_block();
        assert_eq!(&first[..2], [0x78, 0x01]);
        assert_eq!(u16::from_be_bytes([0x78, 0x01]) % 31, 0);
        assert_eq!(h.empty_block(), first[2..]);
        let mut big = BytesMut::from(&[0x80, 3, 0, 1, 0, 0x20, 0, 0][..]);
        assert!(next_frame(&mut big).is_err());
    }

    #[tokio::test]
    async fn a_data_stream_reaches_the_backend_and_closes_both_streams() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let (tx, input) = mpsc::channel(8);
        let (output, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(serve(input, output, backend));
        tx.send(syn_stream(1)).await.unwrap();
        tx.send(data(1, FLAG_FIN, &[])).await.unwrap();
        tx.send(syn_stream(3)).await.unwrap();
        let replies = frames(&mut rx, 2).await;
        assert!(replies.iter().all(|f| matches!(
            f,
            Frame::Control {
                kind: SYN_REPLY,
                ..
            }
        )));
        tx.send(data(3, FLAG_FIN, b"ping")).await.unwrap();
        let rest = frames(&mut rx, 3).await;
        assert_eq!(
            rest,
            [
                Frame::Data {
                    stream: 3,
                    flags: 0,
                    payload: Bytes::from_static(b"ping")
                },
                Frame::Data {
                    stream: 3,
                    flags: FLAG_FIN,
                    payload: Bytes::new()
                },
                Frame::Data {
                    stream: 1,
                    flags: FLAG_FIN,
                    payload: Bytes::new()
                },
            ]
        );
    }
}
