//! Who the client is. The socket peer (or the PROXY protocol source), unless
//! that peer is a trusted proxy: then the right-most `X-Forwarded-For` entry
//! that is not itself a trusted proxy. A header sent by an untrusted peer
//! changes nothing.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use proto::net::{Cidr, canonical};

/// The client of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// Its address, as far as it can be believed.
    pub ip: IpAddr,
    /// Whether the incoming `X-Forwarded-For` came from a trusted proxy (and
    /// is therefore kept and extended upstream, rather than replaced).
    pub forwarded_trusted: bool,
}

fn trusted(ip: IpAddr, proxies: &[Cidr]) -> bool {
    proxies.iter().any(|c| c.contains(ip))
}

/// Parses one `X-Forwarded-For` entry: an IP, possibly with a port.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip())
}

/// The client of a request that came from `peer`.
pub fn identify(peer: IpAddr, headers: &HeaderMap, proxies: &[Cidr]) -> Client {
    let peer = canonical(peer);
    if proxies.is_empty() || !trusted(peer, proxies) {
        return Client { ip: peer, forwarded_trusted: false };
    }
    let mut client = peer;
    let hops = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
    'outer: for value in hops.iter().rev() {
        for hop in value.rsplit(',') {
            match parse_hop(hop) {
                Some(ip) => {
                    client = canonical(ip);
                    if !trusted(client, proxies) {
                        break 'outer;
                    }
                }
                // Junk: the nearest hop we could read is all we know.
                None => break 'outer,
            }
        }
    }
    Client { ip: client, forwarded_trusted: true }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(xff: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
        m
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_cannot_forge() {
        let proxies: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(identify(ip("203.0.113.9"), &h("1.2.3.4"), &proxies).ip, ip("203.0.113.9"));
        assert_eq!(identify(ip("203.0.113.9"), &h("1.2.3.4"), &[]).ip, ip("203.0.113.9"));
    }

    #[test]
    fn trusted_peers_yield_the_rightmost_untrusted_hop() {
        let proxies: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let c = identify(ip("10.0.0.2"), &h("6.6.6.6, 198.51.100.7, 10.0.0.5"), &proxies);
        assert_eq!(c, Client { ip: ip("198.51.100.7"), forwarded_trusted: true });
        assert_eq!(identify(ip("10.0.0.2"), &h("10.0.0.9"), &proxies).ip, ip("10.0.0.9"), "all trusted: the left-most");
        assert_eq!(identify(ip("10.0.0.2"), &h("junk, 10.0.0.9"), &proxies).ip, ip("10.0.0.9"));
        assert_eq!(identify(ip("10.0.0.2"), &h("[2001:db8::1]:443"), &proxies).ip, ip("2001:db8::1"));
        assert_eq!(identify(ip("10.0.0.2"), &HeaderMap::new(), &proxies).ip, ip("10.0.0.2"));
    }
}
