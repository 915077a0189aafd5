//! An observe-only, incremental reader of SPDY/3.1 framing, for recording exec and attach
//! sessions that kubectl opened over SPDY.
//!
//! It tells which stream each data byte belongs to and when the client opened a stream
//! (`SYN_STREAM`). It does not read the header blocks: they are zlib-compressed with the
//! SPDY dictionary and one compression context per direction, and the gateway carries no
//! zlib. Which stream is which is instead known from the order client-go creates them in
//! (the error stream, then stdin, stdout, stderr, resize, each only when asked for: see
//! [`crate::recording::Streams`]), the way the sandbox pairs port-forward streams. Only
//! the 8-byte frame header and a stream ID are ever held, whatever the frame's length.

/// What a run of SPDY bytes held.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// The sender opened stream `id`.
    Opened(u32),
    /// Data on stream `id`, in order.
    Data(u32, &'a [u8]),
}

/// Why a stream cannot be read as SPDY/3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    /// A control frame of another SPDY version.
    #[error("a control frame is not SPDY/3")]
    Version,
}

const SYN_STREAM: u16 = 1;

#[derive(Debug)]
enum State {
    Header {
        buf: [u8; 8],
        have: usize,
    },
    Control {
        remaining: usize,
        /// A `SYN_STREAM`'s stream ID, while its first four bytes arrive.
        id: Option<([u8; 4], usize)>,
    },
    Data {
        stream: u32,
        remaining: usize,
    },
}

/// One direction's reader.
#[derive(Debug)]
pub struct Reader {
    state: State,
}

impl Default for Reader {
    fn default() -> Self {
        Reader {
            state: State::Header {
                buf: [0; 8],
                have: 0,
            },
        }
    }
}

impl Reader {
    /// Reads `bytes`, the next ones of the stream, handing each piece to `out` in order.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        out: &mut dyn FnMut(Piece<'_>),
    ) -> Result<(), Unreadable> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Header { buf, have } => {
                    bytes = super::fill(buf, have, 8, bytes);
                    if *have == 8 {
                        let h = *buf;
                        let length =
                            usize::from(h[5]) << 16 | usize::from(h[6]) << 8 | usize::from(h[7]);
                        self.state = if h[0] & 0x80 != 0 {
                            if u16::from_be_bytes([h[0] & 0x7f, h[1]]) != 3 {
                                return Err(Unreadable::Version);
                            }
                            let kind = u16::from_be_bytes([h[2], h[3]]);
                            State::Control {
                                remaining: length,
                                id: (kind == SYN_STREAM).then_some(([0; 4], 0)),
                            }
                        } else {
                            State::Data {
                                stream: u32::from_be_bytes([h[0] & 0x7f, h[1], h[2], h[3]]),
                                remaining: length,
                            }
                        };
                    }
                }
                State::Control { remaining, id } => {
                    let take = (*remaining).min(bytes.len());
                    if let Some((buf, have)) = id {
                        let n = (4 - *have).min(take);
                        buf[*have..*have + n].copy_from_slice(&bytes[..n]);
                        *have += n;
                        if *have == 4 {
                            out(Piece::Opened(u32::from_be_bytes(*buf) & 0x7fff_ffff));
                            *id = None;
                        }
                    }
                    *remaining -= take;
                    bytes = &bytes[take..];
                }
                State::Data { stream, remaining } => {
                    let take = (*remaining).min(bytes.len());
                    if take > 0 {
                        out(Piece::Data(*stream, &bytes[..take]));
                    }
                    *remaining -= take;
                    bytes = &bytes[take..];
                }
            }
            let finished = match &self.state {
                State::Control { remaining, .. } | State::Data { remaining, .. } => *remaining == 0,
                State::Header { .. } => false,
            };
            if finished {
                self.state = State::Header {
                    buf: [0; 8],
                    have: 0,
                };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn syn_stream(id: u32) -> Vec<u8> {
        // Stream ID, associated ID, priority and slot, then a (here meaningless)
        // compressed header block.
        let mut payload = id.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&[0x78, 0xbb, 1, 2, 3, 4, 5]);
        let mut f = vec![0x80, 3, 0, 1, 0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.extend(payload);
        f
    }

    pub(crate) fn data(id: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = id.to_be_bytes().to_vec();
        f.push(0);
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(payload);
        f
    }

    fn ping() -> Vec<u8> {
        vec![0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]
    }

    #[test]
    fn streams_and_their_data_are_read_across_any_split() {
        let mut s = syn_stream(1);
        s.extend(syn_stream(3));
        s.extend(ping());
        s.extend(data(3, b"echo hi\n"));
        s.extend(data(1, b""));
        s.extend(data(3, b"exit\n"));
        for step in [1, 2, 3, 7, 1000] {
            let mut reader = Reader::default();
            let mut got: Vec<(Option<u32>, u32, Vec<u8>)> = Vec::new();
            for piece in s.chunks(step) {
                reader
                    .feed(piece, &mut |p| match p {
                        Piece::Opened(id) => got.push((None, id, Vec::new())),
                        Piece::Data(id, d) => match got.last_mut() {
                            Some((Some(last), _, buf)) if *last == id => buf.extend_from_slice(d),
                            _ => got.push((Some(id), id, d.to_vec())),
                        },
                    })
                    .unwrap();
            }
            assert_eq!(
                got,
                vec![
                    (None, 1, vec![]),
                    (None, 3, vec![]),
                    (Some(3), 3, b"echo hi\nexit\n".to_vec()),
                ],
                "step {step}"
            );
        }
        let mut other = Reader::default();
        assert_eq!(
            other.feed(&[0x80, 2, 0, 1, 0, 0, 0, 0], &mut |_| {}),
            Err(Unreadable::Version)
        );
    }
}
