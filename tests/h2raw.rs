//! Hand-made HTTP/2 frames (RFC 9113) for abusive clients: the preface,
//! SETTINGS, HEADERS / CONTINUATION carrying HPACK literals without indexing
//! (RFC 7541 §6.2.2, no table state to share with the server), RST_STREAM, and
//! a reader that tells which frames came back.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame types.
pub const HEADERS: u8 = 0x1;
/// RST_STREAM.
pub const RST_STREAM: u8 = 0x3;
/// SETTINGS.
pub const SETTINGS: u8 = 0x4;
/// PING.
pub const PING: u8 = 0x6;
/// GOAWAY.
pub const GOAWAY: u8 = 0x7;
/// CONTINUATION.
pub const CONTINUATION: u8 = 0x9;
/// Flags.
pub const END_STREAM: u8 = 0x1;
/// ACK (SETTINGS, PING).
pub const ACK: u8 = 0x1;
/// END_HEADERS.
pub const END_HEADERS: u8 = 0x4;
/// RST_STREAM error code CANCEL.
pub const CANCEL: u32 = 0x8;

/// One frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    assert!(len < 1 << 24, "frame too long");
    let mut b = len.to_be_bytes()[1..].to_vec();
    b.extend_from_slice(&[kind, flags]);
    b.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// An HPACK integer with an `n`-bit prefix, the prefix's other bits `first`.
fn integer(first: u8, n: u32, mut v: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header field as an HPACK "literal without indexing — new name", no Huffman.
pub fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00];
    integer(0, 7, name.len(), &mut out);
    out.extend_from_slice(name.as_bytes());
    integer(0, 7, value.len(), &mut out);
    out.extend_from_slice(value.as_bytes());
    out
}

/// The header block of `GET path` on `authority`.
pub fn get_block(authority: &str, path: &str) -> Vec<u8> {
    [literal(":method", "GET"), literal(":scheme", "http"), literal(":authority", authority), literal(":path", path)].concat()
}

/// A frame read back.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream id.
    pub stream: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A GOAWAY's error code.
    pub fn goaway_code(&self) -> Option<u32> {
        (self.kind == GOAWAY && self.payload.len() >= 8)
            .then(|| u32::from_be_bytes([self.payload[4], self.payload[5], self.payload[6], self.payload[7]]))
    }
}

/// Reads one frame; `None` at EOF.
pub async fn read_frame<R: AsyncRead + Unpin>(s: &mut R) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 9];
    match s.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Ok(Some(Frame { kind: head[3], flags: head[4], stream, payload }))
}

/// Connects, sends the preface and empty SETTINGS, and acknowledges the
/// server's SETTINGS.
pub async fn handshake(s: &mut TcpStream) -> io::Result<()> {
    s.write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat()).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let f = timeout_at(deadline, read_frame(s)).await.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no SETTINGS"))??;
        match f {
            Some(f) if f.kind == SETTINGS && f.flags & ACK == 0 => return s.write_all(&frame(SETTINGS, ACK, 0, &[])).await,
            Some(_) => {}
            None => return Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// How a connection's frames ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every frame received.
    pub frames: Vec<Frame>,
    /// The connection closed or was reset.
    pub closed: bool,
}

impl Outcome {
    /// The GOAWAY's error code, if one came.
    pub fn goaway(&self) -> Option<u32> {
        self.frames.iter().find_map(Frame::goaway_code)
    }

    /// Streams that got response HEADERS.
    pub fn answered(&self) -> usize {
        self.frames.iter().filter(|f| f.kind == HEADERS).map(|f| f.stream).collect::<std::collections::HashSet<_>>().len()
    }
}

/// Reads frames until the connection ends or `wait` passes, stopping early
/// (and not closing) when `stop` says so.
pub async fn read_until<R: AsyncRead + Unpin>(s: &mut R, wait: Duration, mut stop: impl FnMut(&Frame) -> bool) -> Outcome {
    let deadline = Instant::now() + wait;
    let mut out = Outcome::default();
    loop {
        match timeout_at(deadline, read_frame(s)).await {
            Ok(Ok(Some(f))) => {
                let done = stop(&f);
                out.frames.push(f);
                if done {
                    return out;
                }
            }
            Ok(Ok(None) | Err(_)) => {
                out.closed = true;
                return out;
            }
            Err(_) => return out,
        }
    }
}

/// How an HPACK field representation asks the decoder to treat its table
/// (RFC 7541 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rep {
    /// Indexed field: taken from the table.
    Indexed,
    /// Literal with incremental indexing: added to the table.
    Added,
    /// Literal without indexing.
    NotIndexed,
    /// Literal never indexed (by the decoder, nor by any intermediary).
    NeverIndexed,
    /// Dynamic table size update.
    SizeUpdate,
}

/// The representations of an HPACK header block, in order (strings skipped,
/// Huffman or not, without decoding them).
pub fn representations(block: &[u8]) -> Result<Vec<Rep>, String> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < block.len() {
        let b = block[at];
        let (rep, prefix) = match b {
            _ if b & 0x80 != 0 => (Rep::Indexed, 7),
            _ if b & 0xc0 == 0x40 => (Rep::Added, 6),
            _ if b & 0xe0 == 0x20 => (Rep::SizeUpdate, 5),
            _ if b & 0xf0 == 0x10 => (Rep::NeverIndexed, 4),
            _ => (Rep::NotIndexed, 4),
        };
        let index = read_integer(block, &mut at, prefix)?;
        if matches!(rep, Rep::Added | Rep::NotIndexed | Rep::NeverIndexed) {
            // A name of its own when the index is 0, then the value.
            for _ in 0..if index == 0 { 2 } else { 1 } {
                let len = read_integer(block, &mut at, 7)?;
                at = at.checked_add(len).filter(|end| *end <= block.len()).ok_or("a string runs past the block")?;
            }
        }
        out.push(rep);
    }
    Ok(out)
}

/// An HPACK integer with an `n`-bit prefix at `block[*at]`; moves `at` past it.
fn read_integer(block: &[u8], at: &mut usize, n: u32) -> Result<usize, String> {
    let max = (1usize << n) - 1;
    let first = *block.get(*at).ok_or("the block ends inside an integer")? as usize & max;
    *at += 1;
    if first < max {
        return Ok(first);
    }
    let mut v = max;
    for shift in (0..28).step_by(7) {
        let b = *block.get(*at).ok_or("the block ends inside an integer")?;
        *at += 1;
        v += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("an integer too long".into())
}
