//! An observe-only, incremental reader of WebSocket frames (RFC 6455) and the Kubernetes
//! channel protocols (`v5`/`v4`/`v3`/`channel.k8s.io` and the `base64` variants).
//!
//! It is fed copies of the bytes the splice relays, in whatever pieces the sockets return
//! them, and tells which channel each payload byte belongs to. It never buffers a
//! message: a frame header (at most 14 bytes) and a base64 carry (at most 3 characters)
//! are all it holds, so a 1 GiB message costs nothing. Client frames are masked, server
//! frames are not; both are read by their mask bit. Control frames (close, ping, pong)
//! may come between the fragments of a message and carry no terminal data. A frame with
//! a reserved bit set (a compression extension Kubernetes does not negotiate) or an
//! unknown opcode makes the stream unreadable: the recording ends, the relay does not
//! notice, it never waits for this reader.

use base64::Engine as _;

/// How the channel protocol puts a channel number and its data into a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Binary messages: the first byte is the channel, the rest is data.
    Binary,
    /// Text messages: the first character is the channel digit, the rest is base64.
    Base64,
}

impl Encoding {
    /// The encoding a negotiated `Sec-WebSocket-Protocol` implies; `None` for protocols
    /// that are not the channel protocol (nothing to record).
    pub fn of(subprotocol: &str) -> Option<Self> {
        match subprotocol.trim() {
            "v5.channel.k8s.io" | "v4.channel.k8s.io" | "v3.channel.k8s.io"
            | "v2.channel.k8s.io" | "channel.k8s.io" => Some(Encoding::Binary),
            "v4.base64.channel.k8s.io" | "base64.channel.k8s.io" => Some(Encoding::Base64),
            _ => None,
        }
    }
}

/// What a run of frame bytes held.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Data of one channel, in order.
    Data(u8, &'a [u8]),
    /// The end of a message whose channel was this.
    End(u8),
}

/// Why a stream cannot be read as the channel protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    /// RSV bits: an extension is in use.
    #[error("a websocket frame uses an extension")]
    Extension,
    /// An opcode RFC 6455 does not define.
    #[error("a websocket frame has an unknown opcode")]
    Opcode,
    /// A continuation frame without a message to continue, or a new message before the
    /// last one ended.
    #[error("websocket fragments out of order")]
    Fragments,
    /// A text message that is not base64.
    #[error("a base64 channel message is not base64")]
    Base64,
}

#[derive(Debug)]
enum State {
    /// Collecting a frame header.
    Header { buf: [u8; 14], have: usize },
    /// Inside a frame's payload.
    Payload {
        remaining: u64,
        mask: Option<[u8; 4]>,
        /// Payload bytes already seen, for the mask's phase.
        offset: usize,
        /// Data (true) or control frame (skipped).
        data: bool,
        fin: bool,
    },
}

/// One direction's reader.
#[derive(Debug)]
pub struct Reader {
    encoding: Encoding,
    state: State,
    /// Inside a fragmented data message.
    in_message: bool,
    /// The current message's channel, once its first payload byte was seen.
    channel: Option<u8>,
    /// Base64 characters waiting for a full quantum.
    carry: [u8; 4],
    carried: usize,
    /// Unmasked or decoded bytes handed out, reused.
    scratch: Vec<u8>,
}

const SCRATCH: usize = 4096;

impl Reader {
    /// A reader at the start of a stream.
    pub fn new(encoding: Encoding) -> Self {
        Reader {
            encoding,
            state: State::Header {
                buf: [0; 14],
                have: 0,
            },
            in_message: false,
            channel: None,
            carry: [0; 4],
            carried: 0,
            scratch: Vec::with_capacity(SCRATCH),
        }
    }

    /// Reads `bytes`, the next ones of the stream, and hands each piece of channel data to
    /// `out` in order.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        out: &mut dyn FnMut(Piece<'_>),
    ) -> Result<(), Unreadable> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Header { buf, have } => {
                    let need = header_len(&buf[..*have]);
                    bytes = super::fill(buf, have, need, bytes);
                    // The length and mask bits may have made the header longer.
                    if *have == header_len(&buf[..*have]) {
                        let header = *buf;
                        let len = *have;
                        self.start_frame(&header[..len], out)?;
                    }
                }
                State::Payload {
                    remaining,
                    mask,
                    offset,
                    data,
                    fin,
                } => {
                    let take = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len())
                        .min(SCRATCH);
                    let (chunk, rest) = bytes.split_at(take);
                    bytes = rest;
                    *remaining -= take as u64;
                    let (is_data, last, fin) = (*data, *remaining == 0, *fin);
                    if is_data {
                        self.scratch.clear();
                        self.scratch.extend_from_slice(chunk);
                        if let Some(key) = mask {
                            for (i, b) in self.scratch.iter_mut().enumerate() {
                                *b ^= key[(*offset + i) % 4];
                            }
                        }
                        *offset = (*offset + take) % 4;
                        let plain = std::mem::take(&mut self.scratch);
                        let done = self.payload(&plain, out);
                        self.scratch = plain;
                        done?;
                    }
                    if last {
                        self.end_frame(is_data, fin, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn start_frame(&mut self, h: &[u8], out: &mut dyn FnMut(Piece<'_>)) -> Result<(), Unreadable> {
        let fin = h[0] & 0x80 != 0;
        if h[0] & 0x70 != 0 {
            return Err(Unreadable::Extension);
        }
        let opcode = h[0] & 0x0f;
        let data = match opcode {
            0 if self.in_message => true,
            0 => return Err(Unreadable::Fragments),
            1 | 2 if self.in_message => return Err(Unreadable::Fragments),
            1 | 2 => {
                self.in_message = true;
                self.channel = None;
                self.carried = 0;
                true
            }
            8..=10 => false,
            _ => return Err(Unreadable::Opcode),
        };
        let masked = h[1] & 0x80 != 0;
        let (remaining, at) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => (
                u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                10,
            ),
            n => (u64::from(n), 2),
        };
        let mask = masked.then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
        self.state = State::Payload {
            remaining,
            mask,
            offset: 0,
            data,
            fin,
        };
        if remaining == 0 {
            self.end_frame(data, fin, out)?;
        }
        Ok(())
    }

    fn end_frame(
        &mut self,
        data: bool,
        fin: bool,
        out: &mut dyn FnMut(Piece<'_>),
    ) -> Result<(), Unreadable> {
        self.state = State::Header {
            buf: [0; 14],
            have: 0,
        };
        if data && fin {
            self.in_message = false;
            if self.carried > 0 {
                // A final quantum without its padding.
                let carry = self.carry;
                self.decode(&carry[..self.carried], out)?;
                self.carried = 0;
            }
            if let Some(channel) = self.channel.take() {
                out(Piece::End(channel));
            }
        }
        Ok(())
    }

    fn payload(
        &mut self,
        mut plain: &[u8],
        out: &mut dyn FnMut(Piece<'_>),
    ) -> Result<(), Unreadable> {
        let channel = match self.channel {
            Some(c) => c,
            None => {
                let Some((&first, rest)) = plain.split_first() else {
                    return Ok(());
                };
                plain = rest;
                let c = match self.encoding {
                    Encoding::Binary => first,
                    // '0'..'9'; anything else is a channel no terminal uses.
                    Encoding::Base64 => first.wrapping_sub(b'0'),
                };
                self.channel = Some(c);
                c
            }
        };
        match self.encoding {
            Encoding::Binary => {
                if !plain.is_empty() {
                    out(Piece::Data(channel, plain));
                }
                Ok(())
            }
            Encoding::Base64 => {
                while !plain.is_empty() {
                    if self.carried > 0 || plain.len() < 4 {
                        let take = (4 - self.carried).min(plain.len());
                        self.carry[self.carried..self.carried + take]
                            .copy_from_slice(&plain[..take]);
                        self.carried += take;
                        plain = &plain[take..];
                        if self.carried == 4 {
                            let carry = self.carry;
                            self.carried = 0;
                            self.decode(&carry, out)?;
                        }
                        continue;
                    }
                    let whole = plain.len() / 4 * 4;
                    let (quanta, rest) = plain.split_at(whole.min(SCRATCH / 4 * 4));
                    self.decode(quanta, out)?;
                    plain = rest;
                }
                Ok(())
            }
        }
    }

    fn decode(&mut self, text: &[u8], out: &mut dyn FnMut(Piece<'_>)) -> Result<(), Unreadable> {
        let Some(channel) = self.channel else {
            return Ok(());
        };
        let engine = &base64::engine::general_purpose::STANDARD;
        let mut decoded = Vec::with_capacity(text.len() / 4 * 3 + 3);
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let result = if text.len().is_multiple_of(4) {
            engine.decode_vec(text, &mut decoded)
        } else {
            lenient.decode_vec(text, &mut decoded)
        };
        result.map_err(|_| Unreadable::Base64)?;
        if !decoded.is_empty() {
            out(Piece::Data(channel, &decoded));
        }
        Ok(())
    }
}

/// The length of the frame header that starts with `have` (2 until its second byte is
/// known).
fn header_len(have: &[u8]) -> usize {
    if have.len() < 2 {
        return 2;
    }
    let extended = match have[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if have[1] & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One frame as a peer writes it.
    pub(crate) fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => f.push(m | n as u8),
            n @ 126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                f.extend_from_slice(&key);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }

    /// Everything `reader` makes of `stream` fed in pieces of `step` bytes: per channel
    /// data joined, and the message ends.
    pub(crate) fn read_all(
        encoding: Encoding,
        stream: &[u8],
        step: usize,
    ) -> Result<Vec<(u8, Vec<u8>)>, Unreadable> {
        let mut reader = Reader::new(encoding);
        let mut got: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut open = false;
        for piece in stream.chunks(step.max(1)) {
            reader.feed(piece, &mut |p| match p {
                Piece::Data(c, d) => {
                    if open && got.last().is_some_and(|(lc, _)| *lc == c) {
                        if let Some(l) = got.last_mut() {
                            l.1.extend_from_slice(d);
                        }
                    } else {
                        got.push((c, d.to_vec()));
                        open = true;
                    }
                }
                Piece::End(_) => open = false,
            })?;
        }
        Ok(got)
    }

    #[test]
    fn masked_fragmented_messages_with_control_frames_between_are_read_in_order() {
        let key = Some([9, 8, 7, 6]);
        let mut s = frame(false, 2, b"\0ec", key);
        s.extend(frame(true, 9, b"ping", key));
        s.extend(frame(false, 0, b"ho ", key));
        s.extend(frame(true, 0, b"hi\n", key));
        s.extend(frame(true, 2, &[4], key));
        s.extend(frame(true, 2, b"\x01out", None));
        s.extend(frame(true, 8, &[3, 232], key));
        for step in [1, 2, 3, 5, 7, 64, 4096] {
            assert_eq!(
                read_all(Encoding::Binary, &s, step).unwrap(),
                vec![(0, b"echo hi\n".to_vec()), (1, b"out".to_vec())],
                "step {step}"
            );
        }
    }

    #[test]
    fn long_frames_use_the_extended_lengths() {
        let big = vec![b'x'; 70_000];
        let mid = vec![b'y'; 300];
        let mut payload = vec![1];
        payload.extend_from_slice(&big);
        let mut s = frame(true, 2, &payload, Some([1, 2, 3, 4]));
        let mut payload = vec![2];
        payload.extend_from_slice(&mid);
        s.extend(frame(true, 2, &payload, None));
        assert_eq!(
            read_all(Encoding::Binary, &s, 1000).unwrap(),
            vec![(1, big), (2, mid)]
        );
    }

    #[test]
    fn base64_messages_are_decoded_across_any_split() {
        let text = base64::engine::general_purpose::STANDARD.encode(b"ls -la\r");
        let mut payload = b"0".to_vec();
        payload.extend_from_slice(text.as_bytes());
        let (a, b) = payload.split_at(3);
        let mut s = frame(false, 1, a, Some([5, 5, 5, 5]));
        s.extend(frame(true, 0, b, Some([1, 0, 1, 0])));
        let out = base64::engine::general_purpose::STANDARD.encode(b"total 0\n");
        s.extend(frame(true, 1, format!("1{out}").as_bytes(), None));
        for step in [1, 2, 3, 4, 9, 100] {
            assert_eq!(
                read_all(Encoding::Base64, &s, step).unwrap(),
                vec![(0, b"ls -la\r".to_vec()), (1, b"total 0\n".to_vec())],
                "step {step}"
            );
        }
        let bad = frame(true, 1, b"1@@@@", None);
        assert_eq!(
            read_all(Encoding::Base64, &bad, 10),
            Err(Unreadable::Base64)
        );
    }

    #[test]
    fn what_cannot_be_read_is_said() {
        assert_eq!(
            read_all(Encoding::Binary, &frame(true, 0x42, b"\x01x", None), 9),
            Err(Unreadable::Extension)
        );
        assert_eq!(
            read_all(Encoding::Binary, &frame(true, 3, b"\x01x", None), 9),
            Err(Unreadable::Opcode)
        );
        assert_eq!(
            read_all(Encoding::Binary, &frame(true, 0, b"\x01x", None), 9),
            Err(Unreadable::Fragments)
        );
        let mut s = frame(false, 2, b"\x01x", None);
        s.extend(frame(true, 2, b"\x01y", None));
        assert_eq!(
            read_all(Encoding::Binary, &s, 9),
            Err(Unreadable::Fragments)
        );
        assert_eq!(Encoding::of("SPDY/3.1+portforward.k8s.io"), None);
        assert_eq!(Encoding::of("v5.channel.k8s.io"), Some(Encoding::Binary));
        assert_eq!(
            Encoding::of("base64.channel.k8s.io"),
            Some(Encoding::Base64)
        );
    }

    /// A tiny deterministic generator, so the property test needs no crate and repeats.
    pub(crate) struct Lcg(pub(crate) u64);

    impl Lcg {
        pub(crate) fn next(&mut self, below: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % below.max(1)
        }
    }

    /// Random messages, fragmented at random, masked or not, with control frames between
    /// fragments, fed in random pieces: what comes out is what went in, and arbitrary
    /// garbage never panics.
    #[test]
    fn property_random_streams_round_trip_and_garbage_never_panics() {
        let mut rng = Lcg(17);
        for _ in 0..300 {
            let mut stream = Vec::new();
            let mut want: Vec<(u8, Vec<u8>)> = Vec::new();
            for _ in 0..rng.next(6) + 1 {
                let channel = [0u8, 1, 2][rng.next(3)];
                let data: Vec<u8> = (0..rng.next(300) + 1)
                    .map(|_| rng.next(256) as u8)
                    .collect();
                let mut payload = vec![channel];
                payload.extend_from_slice(&data);
                let mut parts = Vec::new();
                let mut rest = &payload[..];
                while !rest.is_empty() {
                    let n = (rng.next(rest.len()) + 1).min(rest.len());
                    parts.push(&rest[..n]);
                    rest = &rest[n..];
                }
                for (i, part) in parts.iter().enumerate() {
                    let mask = (rng.next(2) == 0).then(|| [rng.next(256) as u8; 4]);
                    let op = if i == 0 { 2 } else { 0 };
                    stream.extend(frame(i + 1 == parts.len(), op, part, mask));
                    if rng.next(4) == 0 {
                        stream.extend(frame(true, 9, b"p", mask));
                    }
                }
                match want.last_mut() {
                    Some((c, d)) if *c == channel => d.extend_from_slice(&data),
                    _ => want.push((channel, data)),
                }
            }
            let step = rng.next(40) + 1;
            let mut got = read_all(Encoding::Binary, &stream, step).unwrap();
            // Adjacent messages of one channel read as one run here.
            let mut joined: Vec<(u8, Vec<u8>)> = Vec::new();
            for (c, d) in got.drain(..) {
                match joined.last_mut() {
                    Some((lc, ld)) if *lc == c => ld.extend_from_slice(&d),
                    _ => joined.push((c, d)),
                }
            }
            assert_eq!(joined, want);

            let garbage: Vec<u8> = (0..rng.next(200)).map(|_| rng.next(256) as u8).collect();
            let _ = read_all(Encoding::Binary, &garbage, step);
            let _ = read_all(Encoding::Base64, &garbage, step);
        }
    }
}
