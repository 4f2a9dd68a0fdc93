//! Who the client is: the TCP peer, unless the peer is a configured trusted proxy, in which
//! case the address that proxy forwarded (`Forwarded: for=`, RFC 7239, or else
//! `X-Forwarded-For`). Rate limits count by this address, and the gateway passes it to the
//! services inside its signed assertion, so the users service can limit logins by it too.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, header};
use ipnet::IpNet;

/// A network (`10.0.0.0/8`) or a single address (`10.0.0.7`) of `SHOP_TRUSTED_PROXIES`.
pub fn parse_network(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither an address nor a network (a.b.c.d/n)"))
}

/// The client's address. Walking the forwarded chain from the nearest hop outwards, every
/// trusted proxy is skipped and the first other address is the client; an entry that is not
/// an address ends the walk at the last trusted hop (never trusting what came before it).
pub fn address(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = peer.ip();
    if !is_trusted(&client) {
        return client;
    }
    for hop in forwarded_chain(headers).iter().rev() {
        match hop {
            Some(ip) if is_trusted(ip) => client = *ip,
            Some(ip) => return *ip,
            None => return client,
        }
    }
    client
}

/// The `for` addresses of the request's forwarding headers, client first (`None` for an
/// entry that is not an address: `unknown`, an obfuscated name, garbage).
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect::<Vec<_>>()
    };
    let forwarded = values(header::FORWARDED);
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, v)| node_address(v))
            })
            .collect();
    }
    values(header::HeaderName::from_static("x-forwarded-for"))
        .iter()
        .map(|v| node_address(v))
        .collect()
}

/// The address of a node: `1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:443"`, `2001:db8::1`.
fn node_address(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"');
    if let Ok(ip) = v.parse() {
        return Some(ip);
    }
    if let Ok(sock) = v.parse::<SocketAddr>() {
        return Some(sock.ip());
    }
    v.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| parse_network(s).unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=2.2.2.2")]);
        assert_eq!(address(peer("9.9.9.9"), &h, &[]), ip("9.9.9.9"));
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(address(peer("9.9.9.9"), &h, &trusted), ip("9.9.9.9"));
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let trusted = nets(&["10.0.0.0/8", "192.168.1.7"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.5")]);
        assert_eq!(address(peer("10.1.2.3"), &h, &trusted), ip("203.0.113.5"));
        // Through two trusted proxies; what the client wrote itself further left is ignored.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.5, 192.168.1.7")]);
        assert_eq!(address(peer("10.1.2.3"), &h, &trusted), ip("203.0.113.5"));
        // Several header lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.5"),
        ]);
        assert_eq!(address(peer("10.1.2.3"), &h, &trusted), ip("203.0.113.5"));
        // No header: the proxy itself.
        assert_eq!(
            address(peer("10.1.2.3"), &HeaderMap::new(), &trusted),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn forwarded_is_preferred_and_parsed() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[
            (
                "forwarded",
                r#"for="[2001:db8::1]:4711";proto=https, for=10.0.0.2"#,
            ),
            ("x-forwarded-for", "7.7.7.7"),
        ]);
        assert_eq!(address(peer("10.0.0.1"), &h, &trusted), ip("2001:db8::1"));
        let h = headers(&[("forwarded", "For=198.51.100.17:8080")]);
        assert_eq!(address(peer("10.0.0.1"), &h, &trusted), ip("198.51.100.17"));
    }

    #[test]
    fn garbage_ends_the_walk_at_the_last_trusted_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "1.1.1.1, not-an-ip, 10.0.0.9")]);
        assert_eq!(address(peer("10.0.0.1"), &h, &trusted), ip("10.0.0.9"));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(address(peer("10.0.0.1"), &h, &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn networks_parse() {
        assert!(parse_network("10.0.0.0/8").is_ok());
        assert!(parse_network(" 192.168.1.7 ").is_ok());
        assert!(parse_network("::1").is_ok());
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("proxy.local").is_err());
    }
}
