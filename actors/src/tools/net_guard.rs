//! Where the `http` tool may connect, judged by IP address, not by name: a step must not be
//! able to reach the node itself (its admin listener stops actors unauthenticated on
//! loopback), the machine's other local services, the private network or a cloud metadata
//! endpoint just because a name in `tools.http.allow_hosts` (or `"*"`) resolves there.
//!
//! [`Guard::check`] refuses loopback, private (RFC 1918, fc00::/7), link-local, unspecified,
//! multicast, broadcast, CGNAT and reserved addresses (IPv4-mapped and NAT64 forms included)
//! unless a CIDR of `tools.http.allow_cidrs` contains them, and refuses the node's own
//! listeners always. [`GuardedResolver`] is the DNS resolver of the tool's client: it
//! resolves the name and hands reqwest only the addresses the guard accepts, so the address
//! checked is the address connected to (no gap for a DNS answer that changes in between).
//! IP literals never reach a resolver; the tool checks them itself before each hop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, LazyLock};

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Address ranges refused unless allowlisted, with the name used in refusals.
static SPECIAL: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    [
        ("0.0.0.0/8", "unspecified (\"this network\")"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata lives here)"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("198.18.0.0/15", "benchmarking"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved (and broadcast)"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "unique local (private)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    ]
    .into_iter()
    .filter_map(|(net, what)| net.parse().ok().map(|net| (net, what)))
    .collect()
});

/// A connection the guard will not allow; the message names the address and the setting.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
#[error("{0}")]
pub struct Refused(pub String);

/// The address rules of the `http` tool.
#[derive(Debug, Default)]
pub struct Guard {
    allow: Vec<IpNet>,
    /// The node's listeners; an unspecified listener address stands for every address of
    /// the machine, expanded when the guard is built.
    own: Vec<SocketAddr>,
}

impl Guard {
    /// `allow` are the parsed `tools.http.allow_cidrs`; `listeners` the node's own sockets.
    pub fn new(allow: Vec<IpNet>, listeners: &[SocketAddr]) -> Guard {
        let mut own = Vec::new();
        for listener in listeners {
            let ip = listener.ip().to_canonical();
            if ip.is_unspecified() {
                // Bound to every interface: every local address reaches it.
                own.push(SocketAddr::new(ip, listener.port()));
                own.extend(
                    local_addresses()
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, listener.port())),
                );
            } else {
                own.push(SocketAddr::new(ip, listener.port()));
            }
        }
        Guard { allow, own }
    }

    /// Whether a connection to `addr` may be made.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Refused> {
        let ip = canonical(addr.ip());
        let port = addr.port();
        let unspecified_listener = |own: &SocketAddr| own.ip().is_unspecified() && is_local(ip);
        if self
            .own
            .iter()
            .any(|own| own.port() == port && (own.ip() == ip || unspecified_listener(own)))
        {
            return Err(Refused(format!(
                "http: {addr} is one of this node's own listeners; steps may never call the node itself"
            )));
        }
        let Some(what) = classify(ip) else {
            return Ok(());
        };
        if self.allow.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        Err(Refused(format!(
            "http: {addr} is a {what} address, refused; to allow it add a CIDR containing {ip} to tools.http.allow_cidrs"
        )))
    }
}

/// The address as its plain IPv4 form when it embeds one (IPv4-mapped `::ffff:a.b.c.d`,
/// NAT64 `64:ff9b::a.b.c.d`), so the IPv4 rules apply to it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                IpAddr::V4(Ipv4Addr::new(a, b, c, d))
            } else {
                IpAddr::V6(v6)
            }
        }
        v4 => v4,
    }
}

/// The kind of special address `ip` is, or `None` for an ordinary (public) one.
fn classify(ip: IpAddr) -> Option<&'static str> {
    SPECIAL
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, what)| *what)
}

/// Loopback or one of this machine's interface addresses.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || local_addresses().contains(&ip)
}

/// This machine's interface addresses; empty if they cannot be listed.
fn local_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .map(canonical)
        .collect()
}

/// The `http` tool's DNS resolver for one request: the system resolver, then the guard.
/// Built per hop because the guard needs the port (the node's own listeners are refused by
/// address and port), which reqwest does not pass to a resolver.
pub struct GuardedResolver {
    pub guard: Arc<Guard>,
    pub port: u16,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        let port = self.port;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect();
            let mut refused = Vec::new();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match guard.check(*addr) {
                    Ok(()) => true,
                    Err(why) => {
                        refused.push(why.0);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = if refused.is_empty() {
                    format!("http: {host} resolves to no address")
                } else {
                    format!(
                        "http: {host} resolves only to refused addresses: {}",
                        refused.join("; ")
                    )
                };
                return Err(Box::new(Refused(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_addresses_are_refused_unless_allowlisted() {
        let guard = Guard::new(Vec::new(), &[]);
        for refused in [
            "127.0.0.1:80",
            "127.1.2.3:80",
            "[::1]:80",
            "10.1.2.3:80",
            "172.16.0.1:80",
            "192.168.1.1:80",
            "169.254.169.254:80",
            "100.64.0.1:80",
            "0.0.0.0:80",
            "[::]:80",
            "224.0.0.1:80",
            "255.255.255.255:80",
            "[fd00::1]:80",
            "[fe80::1]:80",
            "[ff02::1]:80",
            "[::ffff:127.0.0.1]:80",
            "[::ffff:169.254.169.254]:80",
            "[64:ff9b::7f00:1]:80",
        ] {
            let err = guard.check(addr(refused)).unwrap_err();
            assert!(err.0.contains("tools.http.allow_cidrs"), "{refused}: {err}");
        }
        for allowed in ["93.184.215.14:443", "[2606:4700::1111]:443", "8.8.8.8:53"] {
            assert_eq!(guard.check(addr(allowed)), Ok(()), "{allowed}");
        }
        let guard = Guard::new(vec!["127.0.0.1/32".parse().unwrap()], &[]);
        assert_eq!(guard.check(addr("127.0.0.1:80")), Ok(()));
        assert_eq!(guard.check(addr("[::ffff:127.0.0.1]:80")), Ok(()));
        assert!(guard.check(addr("127.0.0.2:80")).is_err());
        assert!(guard.check(addr("[::1]:80")).is_err());
    }

    #[test]
    fn own_listeners_are_refused_even_when_allowlisted() {
        let all: Vec<IpNet> = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        let guard = Guard::new(all.clone(), &[addr("127.0.0.1:9090")]);
        let err = guard.check(addr("127.0.0.1:9090")).unwrap_err();
        assert!(err.0.contains("own listeners"), "{err}");
        assert!(guard.check(addr("[::ffff:127.0.0.1]:9090")).is_err());
        assert_eq!(guard.check(addr("127.0.0.1:9091")), Ok(()));
        // Bound to every interface: loopback in any form reaches it.
        let guard = Guard::new(all, &[addr("0.0.0.0:8080")]);
        assert!(guard.check(addr("127.0.0.1:8080")).is_err());
        assert!(guard.check(addr("127.9.9.9:8080")).is_err());
        assert!(guard.check(addr("[::1]:8080")).is_err());
        assert_eq!(guard.check(addr("127.0.0.1:8081")), Ok(()));
    }
}
