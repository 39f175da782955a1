//! Who the client is, behind proxies we trust and ones we do not.
//!
//! Behind ingress-nginx the TCP peer is the controller, so the peer address
//! alone puts every shopper in one rate-limit bucket. `X-Forwarded-For`
//! names the real client, but every entry left of the ones our own proxies
//! appended was written by the client and can say anything. So we do what
//! nginx's `real_ip_recursive` and similar proxies do: start at the peer and
//! walk the header from the right while the address is one of our trusted
//! proxy networks (`TRUSTED_PROXIES`); the first address that is not trusted
//! is the client. An untrusted peer is the client itself and its header is
//! ignored.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use axum::http::HeaderMap;

/// How many `X-Forwarded-For` entries are examined at most. Real proxy
/// chains are a handful of hops; the cap keeps a header full of addresses
/// in our own networks from costing more than a bounded walk.
const MAX_HOPS: usize = 32;

/// One network in CIDR notation (`10.0.0.0/8`, `fd00::/8`); a bare address
/// is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, unmap(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_v4(ip, self.prefix) == mask_v4(net, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(ip, self.prefix) == mask_v6(net, self.prefix)
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let written: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR"))?;
        let max = if written.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}` has a prefix length outside 0..={max}"))?,
        };
        // `::ffff:10.0.0.0/104` is `10.0.0.0/8`: peers are matched unmapped.
        match unmap(written) {
            v4 @ IpAddr::V4(_) if written.is_ipv6() => {
                let prefix = prefix.checked_sub(96).ok_or_else(|| {
                    format!("`{s}`: an IPv4-mapped network needs a prefix of at least 96")
                })?;
                Ok(Self {
                    network: v4,
                    prefix,
                })
            }
            network => Ok(Self { network, prefix }),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The networks whose `X-Forwarded-For` entries we believe: the Ingress
/// controller's pods (and any proxy in front of it that is ours).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn none() -> Self {
        Self(Vec::new())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client's address, normalised to a rate-limit key (see
    /// [`normalise`]).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        normalise(self.client_address(peer, headers))
    }

    /// The right-most address that is not a trusted proxy, starting at the
    /// peer. If every address is trusted (a request from inside our own
    /// network), the left-most one examined; if an entry is not an address,
    /// the trusted hop that passed it on (a malformed header must not let a
    /// client choose its own key).
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = unmap(peer);
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        // Several header lines are one list, in order (RFC 9110 §5.3).
        let entries = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .flat_map(|value| {
                let text = value.to_str().unwrap_or("");
                text.rsplit(',').map(str::trim)
            })
            .take(MAX_HOPS);
        for entry in entries {
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !self.contains(ip) {
                return ip;
            }
        }
        client
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of CIDRs; empty means no proxy is trusted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`) as some proxies write it.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(unmap(ip));
    }
    if let Ok(addr) = entry.parse::<std::net::SocketAddr>() {
        return Some(unmap(addr.ip()));
    }
    None
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, what a dual-stack
/// listener reports for IPv4 peers) is the IPv4 address.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The rate-limit key of an address: IPv4 as is; IPv6 cut to its /64,
/// because one subscriber usually gets a whole /64 and could otherwise use
/// a fresh address (and a fresh bucket) for every request.
pub fn normalise(ip: IpAddr) -> IpAddr {
    match unmap(ip) {
        IpAddr::V6(v6) => IpAddr::V6(mask_v6(v6, 64)),
        v4 => v4,
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(ip);
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from(bits & mask)
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(ip);
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    Ipv6Addr::from(bits & mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn proxies(list: &str) -> TrustedProxies {
        list.parse().expect("valid list")
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.244.3.7")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(
            net.contains(ip("::ffff:10.1.2.3")),
            "IPv4-mapped peers match IPv4 networks"
        );
        let host: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(host.to_string(), "127.0.0.1/32");
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12:3456::1")) && !v6.contains(ip("fe80::1")));
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        assert!("::ffff:10.0.0.0/64".parse::<Cidr>().is_err());
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::1")));
        for bad in ["10.0.0.0/33", "::/129", "ten/8", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(
            proxies(" 10.0.0.0/8 , 127.0.0.1/32,").to_string(),
            "10.0.0.0/8,127.0.0.1/32"
        );
        assert!(proxies("").is_empty());
        assert!("10.0.0.0/8,nonsense".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn untrusted_peer_is_the_client_and_its_header_is_ignored() {
        let trusted = proxies("10.0.0.0/8");
        let headers = xff(&["198.51.100.1"]);
        assert_eq!(
            trusted.client_address(ip("203.0.113.9"), &headers),
            ip("203.0.113.9")
        );
        // With no trusted proxies at all, the header never matters.
        assert_eq!(
            TrustedProxies::none().client_address(ip("10.1.1.1"), &headers),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn spoofed_left_most_entry_is_ignored() {
        // The client wrote "1.2.3.4"; the Ingress (10.0.0.5) appended the
        // address it saw, 203.0.113.9. The client is 203.0.113.9.
        let trusted = proxies("10.0.0.0/8");
        let headers = xff(&["1.2.3.4, 203.0.113.9"]);
        assert_eq!(
            trusted.client_address(ip("10.0.0.5"), &headers),
            ip("203.0.113.9")
        );
        // Writing an address inside our own network does not help either.
        let headers = xff(&["10.9.9.9, 203.0.113.9"]);
        assert_eq!(
            trusted.client_address(ip("10.0.0.5"), &headers),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_chain_of_trusted_proxies_is_walked_through() {
        // client → CDN edge (192.0.2.10, trusted) → Ingress (10.0.0.5).
        let trusted = proxies("10.0.0.0/8,192.0.2.0/24");
        let headers = xff(&["6.6.6.6, 203.0.113.9", "192.0.2.10"]);
        assert_eq!(
            trusted.client_address(ip("10.0.0.5"), &headers),
            ip("203.0.113.9"),
            "two header lines are one list"
        );
        // Ports and IPv4-mapped forms are understood.
        let headers = xff(&["[2001:db8::7]:4711, 192.0.2.10:80"]);
        assert_eq!(
            trusted.client_address(ip("::ffff:10.0.0.5"), &headers),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn all_trusted_or_malformed_stops_at_the_last_trusted_hop() {
        let trusted = proxies("10.0.0.0/8");
        // A request from inside the cluster through the Ingress.
        let headers = xff(&["10.2.0.1"]);
        assert_eq!(
            trusted.client_address(ip("10.0.0.5"), &headers),
            ip("10.2.0.1")
        );
        // No header: the trusted peer itself.
        assert_eq!(
            trusted.client_address(ip("10.0.0.5"), &HeaderMap::new()),
            ip("10.0.0.5")
        );
        // Garbage right of the client's entry: the hop that passed it on.
        let headers = xff(&["203.0.113.9, garbage, 10.0.0.7"]);
        assert_eq!(
            trusted.client_address(ip("10.0.0.5"), &headers),
            ip("10.0.0.7")
        );
    }

    #[test]
    fn a_long_header_of_trusted_addresses_is_cut_short() {
        let trusted = proxies("10.0.0.0/8");
        let long = vec!["10.0.0.1"; 1000].join(",") + ", 10.0.0.2";
        let headers = xff(&[&format!("203.0.113.9, {long}")]);
        // 32 hops examined, all trusted: the client is not reached and the
        // key is a trusted address (a shared bucket), never one it chose.
        assert!(trusted.contains(trusted.client_address(ip("10.0.0.5"), &headers)));
    }

    #[test]
    fn keys_are_normalised() {
        assert_eq!(normalise(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(normalise(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(
            normalise(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            normalise(ip("2001:db8:1:2::1")),
            normalise(ip("2001:db8:1:2:ffff::9")),
            "one /64, one key"
        );
        assert_ne!(
            normalise(ip("2001:db8:1:2::1")),
            normalise(ip("2001:db8:1:3::1"))
        );
        let trusted = proxies("127.0.0.1/32");
        let headers = xff(&["2001:db8:1:2::99"]);
        assert_eq!(
            trusted.client(ip("127.0.0.1"), &headers),
            ip("2001:db8:1:2::")
        );
    }
}
