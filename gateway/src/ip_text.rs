//! An IP address as text, written without the formatter. The peer's address goes into
//! `X-Forwarded-For` and the audit record on every request, and `Display` for an IPv4
//! address (four padded integers) cost more than the rest of the header block.

use std::io::Write;
use std::net::IpAddr;

/// Longest text of an IP address: an IPv6 address with an embedded IPv4 one.
const MAX_LEN: usize = 45;

/// An IP address's text, as `Display` writes it, held on the stack.
pub struct IpText {
    buf: [u8; MAX_LEN],
    len: usize,
}

impl IpText {
    /// The text of `ip`; IPv4 digit by digit, IPv6 (rare here) through `Display`.
    pub fn new(ip: IpAddr) -> Self {
        let mut text = IpText {
            buf: [0; MAX_LEN],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                let mut out = &mut text.buf[..];
                write!(out, "{v6}").expect("an IPv6 address fits in 45 bytes");
                text.len = MAX_LEN - out.len();
            }
        }
        text
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).expect("digits, dots, colons and hex")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_writes_what_display_writes() {
        for octet in 0..=255u8 {
            for ip in [
                IpAddr::from([octet, 0, 9, 10]),
                IpAddr::from([99, octet, 100, 255]),
                IpAddr::from([1, 2, octet, octet]),
            ] {
                assert_eq!(IpText::new(ip).as_str(), ip.to_string());
            }
        }
        for v6 in [
            "::1",
            "::ffff:10.0.0.1",
            "2001:db8::ff00:42:8329",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
        ] {
            let ip: IpAddr = v6.parse().unwrap();
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }
}
