//! The PROXY protocol (v1 text and v2 binary) that load balancers such as AWS
//! NLB put in front of a connection to say who the client is. A pure parser:
//! it never panics on any input and says when it needs more bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\x00\r\nQUIT\n";
/// Longest v1 line, CRLF included (the spec's limit).
const V1_MAX: usize = 107;
/// Largest v2 header accepted (address block plus TLVs).
pub const V2_MAX: usize = 16 + 1024;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The client's address; `None` for `LOCAL`/`UNKNOWN` (health checks).
    pub source: Option<SocketAddr>,
}

/// Why bytes are not a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The connection does not start with a PROXY header at all.
    #[error("no PROXY protocol header")]
    Missing,
    /// It starts like one but is malformed.
    #[error("malformed PROXY protocol header: {0}")]
    Invalid(&'static str),
}

/// Parses a header at the start of `buf`: `Ok(None)` if more bytes are
/// needed, else the header and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    let n = buf.len().min(V2_SIG.len());
    if buf[..n] == V2_SIG[..n] {
        return if buf.len() < 16 { Ok(None) } else { parse_v2(buf) };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if buf.len() < 6 { Ok(None) } else { parse_v1(buf) };
    }
    Err(Error::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX { Err(Error::Invalid("v1 line too long")) } else { Ok(None) };
    };
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| Error::Invalid("v1 line is not text"))?;
    let mut parts = line.split(' ');
    let family = parts.next().unwrap_or("");
    if family == "UNKNOWN" {
        return Ok(Some((Header { source: None }, end + 2)));
    }
    let fields: Vec<&str> = parts.collect();
    let [src, _dst, sport, _dport] = fields.as_slice() else {
        return Err(Error::Invalid("v1 needs 4 fields after the family"));
    };
    let ip: IpAddr = match family {
        "TCP4" => IpAddr::V4(src.parse::<Ipv4Addr>().map_err(|_| Error::Invalid("v1 bad IPv4 source"))?),
        "TCP6" => IpAddr::V6(src.parse::<Ipv6Addr>().map_err(|_| Error::Invalid("v1 bad IPv6 source"))?),
        _ => return Err(Error::Invalid("v1 family must be TCP4, TCP6 or UNKNOWN")),
    };
    let port: u16 = sport.parse().map_err(|_| Error::Invalid("v1 bad source port"))?;
    Ok(Some((Header { source: Some(SocketAddr::new(ip, port)) }, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(Error::Invalid("v2 version must be 2"));
    }
    let family = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = 16 + len;
    if total > V2_MAX {
        return Err(Error::Invalid("v2 header too large"));
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[16..total];
    let source = match (ver_cmd & 0x0f, family) {
        (0, _) => None,
        (1, 0x11 | 0x12) => {
            let a = body.get(..12).ok_or(Error::Invalid("v2 IPv4 block too short"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[8], a[9]])))
        }
        (1, 0x21 | 0x22) => {
            let a = body.get(..36).ok_or(Error::Invalid("v2 IPv6 block too short"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), u16::from_be_bytes([a[32], a[33]])))
        }
        (1, _) => None,
        _ => return Err(Error::Invalid("v2 command must be LOCAL or PROXY")),
    };
    Ok(Some((Header { source }, total)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v2(cmd: u8, fam: u8, addr: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut b = V2_SIG.to_vec();
        b.push(0x20 | cmd);
        b.push(fam);
        b.extend_from_slice(&u16::try_from(addr.len()).unwrap().to_be_bytes());
        b.extend_from_slice(addr);
        b.extend_from_slice(tail);
        b
    }

    #[test]
    fn v1() {
        let b = b"PROXY TCP4 192.0.2.1 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let (h, n) = parse(b).unwrap().unwrap();
        assert_eq!(h.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(&b[n..n + 3], b"GET");
        let (h, _) = parse(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n").unwrap().unwrap();
        assert_eq!(h.source, Some("[2001:db8::1]:1".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().0.source, None);
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(None), "incomplete");
        assert_eq!(parse(b"PRO"), Ok(None));
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 x 1\r\n").is_err());
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Error::Missing));
        assert!(
            parse(&[b'P', b'R', b'O', b'X', b'Y', b' '].iter().copied().chain(std::iter::repeat_n(b'1', 200)).collect::<Vec<_>>()).is_err()
        );
    }

    #[test]
    fn v2_variants() {
        let addr4 = [192, 0, 2, 1, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb];
        let b = v2(1, 0x11, &addr4, b"GET");
        let (h, n) = parse(&b).unwrap().unwrap();
        assert_eq!(h.source, Some("192.0.2.1:8080".parse().unwrap()));
        assert_eq!(&b[n..], b"GET");
        let mut addr6 = [0u8; 36];
        addr6[0] = 0x20;
        addr6[1] = 0x01;
        addr6[15] = 1;
        addr6[32] = 0;
        addr6[33] = 80;
        let (h, _) = parse(&v2(1, 0x21, &addr6, b"")).unwrap().unwrap();
        assert_eq!(h.source, Some("[2001::1]:80".parse().unwrap()));
        assert_eq!(parse(&v2(0, 0x00, &[], b"")).unwrap().unwrap().0.source, None, "LOCAL");
        let full = v2(1, 0x11, &addr4, b"");
        assert_eq!(parse(&full[..20]), Ok(None), "needs the whole address block");
        assert!(parse(&v2(1, 0x11, &addr4[..4], b"")).is_err(), "short block");
        let mut bad = full.clone();
        bad[12] = 0x31;
        assert!(parse(&bad).is_err(), "version 3");
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_after_a_signature(bytes in proptest::collection::vec(any::<u8>(), 0..300), v2sig in any::<bool>()) {
            let mut b = if v2sig { V2_SIG.to_vec() } else { b"PROXY ".to_vec() };
            b.extend(bytes);
            if let Ok(Some((_, n))) = parse(&b) {
                prop_assert!(n <= b.len());
            }
        }

        #[test]
        fn v1_roundtrip(a in any::<u32>(), p in any::<u16>()) {
            let line = format!("PROXY TCP4 {} 10.0.0.1 {p} 443\r\n", Ipv4Addr::from(a));
            let (h, n) = parse(line.as_bytes()).unwrap().unwrap();
            prop_assert_eq!(n, line.len());
            prop_assert_eq!(h.source, Some(SocketAddr::new(IpAddr::V4(a.into()), p)));
        }
    }
}
