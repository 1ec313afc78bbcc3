//! The client's address for per-IP limits: the TCP peer, unless the peer is a trusted proxy,
//! in which case `X-Forwarded-For` is read from the right, skipping trusted proxies, and the
//! first address not trusted is the client. Untrusted peers cannot spoof it.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// `10.0.0.0/8`, `2001:db8::/32`, or a single address.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is not an address or a CIDR network"))
}

/// Made once: a `&str` header name is parsed at every lookup.
const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(&canonical(*ip)));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let hops: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !is_trusted(&client) {
                    break;
                }
            }
            // Garbage: nothing left of it can be believed.
            Err(_) => break,
        }
    }
    client
}

/// IPv4-mapped IPv6 addresses as IPv4, so one client has one address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn trusts_only_trusted_proxies() {
        let trusted = vec![
            parse_net("10.0.0.0/8").unwrap(),
            parse_net("127.0.0.1").unwrap(),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(ip("203.0.113.9"), &headers(&["1.2.3.4"]), &trusted),
            ip("203.0.113.9")
        );
        // Through one trusted proxy.
        assert_eq!(
            client_ip(ip("10.1.1.1"), &headers(&["198.51.100.7"]), &trusted),
            ip("198.51.100.7")
        );
        // A client-supplied entry on the left cannot win: the rightmost untrusted one does.
        assert_eq!(
            client_ip(
                ip("127.0.0.1"),
                &headers(&["6.6.6.6, 198.51.100.7", "10.2.2.2"]),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.1.1.1"), &headers(&[]), &trusted),
            ip("10.1.1.1")
        );
        // Garbage stops the walk at the last good hop.
        assert_eq!(
            client_ip(ip("10.1.1.1"), &headers(&["nonsense, 10.3.3.3"]), &trusted),
            ip("10.3.3.3")
        );
        // IPv4-mapped IPv6 peers count as IPv4.
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &headers(&["198.51.100.7"]), &trusted),
            ip("198.51.100.7")
        );
        assert!(parse_net("10.0.0.0/33").is_err());
    }
}
