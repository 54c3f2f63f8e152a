//! Open connections per client address (`limit-connections`). A connection
//! holds a [`ConnectionPermit`]; the count drops when it closes.

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;

/// Counts open connections by client.
#[derive(Default)]
pub struct ConnectionLimiter {
    open: DashMap<IpAddr, u32>,
}

/// One open connection of a client; released on drop.
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    key: IpAddr,
}

impl ConnectionLimiter {
    /// A permit for one more connection from `key`, unless it has `max` open
    /// already (`max` 0 = unlimited).
    pub fn acquire(self: &Arc<Self>, key: IpAddr, max: u32) -> Option<ConnectionPermit> {
        let mut n = self.open.entry(key).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        drop(n);
        Some(ConnectionPermit { limiter: self.clone(), key })
    }

    /// Clients with open connections.
    pub fn clients(&self) -> usize {
        self.open.len()
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limiter.open.remove_if_mut(&self.key, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_releases() {
        let l = Arc::new(ConnectionLimiter::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = l.acquire(ip, 2).unwrap();
        let b = l.acquire(ip, 2).unwrap();
        assert!(l.acquire(ip, 2).is_none());
        assert!(l.acquire("10.0.0.2".parse().unwrap(), 2).is_some());
        drop(a);
        let c = l.acquire(ip, 2).unwrap();
        drop((b, c));
        assert_eq!(l.clients(), 0, "entries go away with the last connection");
    }
}
