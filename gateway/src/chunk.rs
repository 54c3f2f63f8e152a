//! Small byte strings cut from a per-thread buffer, so that each costs no
//! allocation of its own and its slices and clones only count references
//! (a `Bytes` made from a `Vec` allocates again on its first clone). A
//! buffer is freed once the last string cut from it is gone, so what lives
//! long (a request id that travels with a streamed answer) should come from
//! a buffer of its own kind, not one shared with the short-lived.

use std::cell::RefCell;
use std::thread::LocalKey;

use bytes::{Bytes, BytesMut};

/// A kind of string and its buffer size.
pub struct Chunks {
    buf: &'static LocalKey<RefCell<BytesMut>>,
    size: usize,
}

impl Chunks {
    /// Strings cut from buffers of `size` bytes held in `buf`.
    pub const fn new(buf: &'static LocalKey<RefCell<BytesMut>>, size: usize) -> Self {
        Self { buf, size }
    }

    /// `data` as shared `Bytes`: cut from this thread's buffer, or on its own
    /// when longer than half of one (a new buffer would waste the rest of the
    /// current one). Any string keeps its whole buffer alive as long as it
    /// lives: a long-lived short one costs a buffer, not its own size.
    pub fn copy(&self, data: &[u8]) -> Bytes {
        if data.len() > self.size / 2 {
            return Bytes::from(data.to_vec());
        }
        self.buf.with(|c| {
            let mut c = c.borrow_mut();
            if c.capacity() < data.len() {
                *c = BytesMut::with_capacity(self.size);
            }
            c.extend_from_slice(data);
            c.split().freeze()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static BUF: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    }
    static SMALL: Chunks = Chunks::new(&BUF, 64);

    #[test]
    fn strings_keep_their_bytes_across_buffers() {
        let parts: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; usize::from(i % 20)]).collect();
        let cut: Vec<Bytes> = parts.iter().map(|p| SMALL.copy(p)).collect();
        for (p, c) in parts.iter().zip(&cut) {
            assert_eq!(&p[..], &c[..]);
        }
        // Slices and clones of a cut string see the same bytes.
        let s = SMALL.copy(b"hello world");
        assert_eq!(&s.slice(6..)[..], b"world");
        assert_eq!(s.clone(), Bytes::from_static(b"hello world"));
    }

    #[test]
    fn a_long_string_gets_its_own_buffer() {
        let long = vec![7u8; 100];
        assert_eq!(&SMALL.copy(&long)[..], &long[..]);
    }
}
