//! Where the services may send a request whose address a tenant chose (a suite's
//! `callback_url`): never to loopback, link-local (cloud metadata at 169.254.169.254),
//! private or otherwise internal addresses, judged after DNS resolution, unless the
//! operator allows the host or its network (`--allow-callback-host`).
//!
//! The producer checks a URL at submission ([`EgressPolicy::check_url`]); the
//! aggregator checks it again at delivery and connects only to the addresses it checked
//! (its HTTP client resolves names through [`EgressPolicy::resolve`]), so a name that
//! resolves elsewhere later (DNS rebinding) gains nothing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How long one name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A request a tenant's URL may not make, or a URL that cannot be judged.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("`{0}` is not an http:// or https:// URL with a host")]
    BadUrl(String),
    #[error(
        "{host} is {kind} address {addr}; callbacks may not reach internal addresses (an operator allows one with --allow-callback-host)"
    )]
    Internal {
        host: String,
        addr: IpAddr,
        kind: &'static str,
    },
    #[error("{host} did not resolve")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host} did not resolve within {}s", RESOLVE_TIMEOUT.as_secs())]
    ResolveTimeout { host: String },
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
}

/// An `--allow-callback-host` entry that is neither a host name nor a CIDR.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a host name, an IP address or a network like 10.0.0.0/8")]
pub struct BadAllowEntry(String);

/// A network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr.parse::<IpAddr>().ok()?, Some(prefix.parse().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `bits` bits of `a` and `b` agree.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

/// An IPv4 address carried in IPv6 (mapped `::ffff:a.b.c.d`) as the IPv4 it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// What kind of internal address `ip` is, or `None` for a public one.
pub fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "an unspecified",
        (127, ..) => "a loopback",
        (10, ..) | (192, 168, _) => "a private",
        (172, 16..=31, _) => "a private",
        (169, 254, _) => "a link-local",
        (100, 64..=127, _) => "a shared (carrier-grade NAT)",
        (192, 0, 0) => "an IETF protocol",
        (198, 18..=19, _) => "a benchmarking",
        (224..=239, ..) => "a multicast",
        (240..=255, ..) => "a reserved",
        _ => return None,
    })
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if ip.is_loopback() {
        return Some("a loopback");
    }
    if ip.is_unspecified() {
        return Some("an unspecified");
    }
    // An IPv4 address embedded by NAT64 (64:ff9b::/96) or 6to4 (2002::/16) reaches
    // that IPv4 address: judge it.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [_, _, _, _, _, _, hi, lo] = segments;
        return internal_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    if segments[0] == 0x2002 {
        return internal_v4(Ipv4Addr::from(
            (u32::from(segments[1]) << 16) | u32::from(segments[2]),
        ));
    }
    Some(match segments[0] {
        0x0000 => "a reserved (IPv4-compatible)",
        s if s & 0xfe00 == 0xfc00 => "a unique local (private)",
        s if s & 0xffc0 == 0xfe80 => "a link-local",
        s if s & 0xffc0 == 0xfec0 => "a site-local (private)",
        s if s & 0xff00 == 0xff00 => "a multicast",
        _ => return None,
    })
}

/// Which hosts and networks a tenant's URL may reach beyond the public Internet;
/// [`EgressPolicy::default`] allows none of them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Host names allowed whatever they resolve to, lowercase.
    hosts: Vec<String>,
    /// Networks allowed although internal.
    nets: Vec<Cidr>,
}

impl fmt::Debug for EgressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nets: Vec<String> = self
            .nets
            .iter()
            .map(|n| format!("{}/{}", n.addr, n.prefix))
            .collect();
        f.debug_struct("EgressPolicy")
            .field("hosts", &self.hosts)
            .field("nets", &nets)
            .finish()
    }
}

impl EgressPolicy {
    /// A policy that also allows these host names, addresses and networks.
    ///
    /// # Errors
    ///
    /// Returns [`BadAllowEntry`] for an entry that is neither a name nor a network.
    pub fn allowing<S: AsRef<str>>(entries: &[S]) -> Result<EgressPolicy, BadAllowEntry> {
        let mut policy = EgressPolicy::default();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            if let Some(net) = Cidr::parse(entry) {
                policy.nets.push(net);
            } else if !entry.contains('/')
                && entry
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                policy.hosts.push(entry.to_ascii_lowercase());
            } else {
                return Err(BadAllowEntry(entry.to_owned()));
            }
        }
        Ok(policy)
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Refuses `ip` (what `host` names) if it is internal and not allowed.
    ///
    /// # Errors
    ///
    /// Returns [`EgressError::Internal`] naming the kind of address.
    pub fn check_addr(&self, host: &str, ip: IpAddr) -> Result<(), EgressError> {
        match internal_kind(ip) {
            Some(kind) if !self.nets.iter().any(|n| n.contains(ip)) => Err(EgressError::Internal {
                host: host.to_owned(),
                addr: ip,
                kind,
            }),
            _ => Ok(()),
        }
    }

    /// Resolves `host` (a name or an IP literal) and checks every address it gives:
    /// one internal address refuses the name, since which one a client would use is
    /// not known. An allowed host name is not checked.
    ///
    /// # Errors
    ///
    /// Returns [`EgressError`] when the name does not resolve or an address is refused.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.check_addr(host, ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let lookup = tokio::net::lookup_host((bare, port));
        let addrs: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
            .await
            .map_err(|_| EgressError::ResolveTimeout {
                host: host.to_owned(),
            })?
            .map_err(|source| EgressError::Resolve {
                host: host.to_owned(),
                source,
            })?
            .collect();
        if addrs.is_empty() {
            return Err(EgressError::NoAddress {
                host: host.to_owned(),
            });
        }
        if !self.host_allowed(bare) {
            for addr in &addrs {
                self.check_addr(host, addr.ip())?;
            }
        }
        Ok(addrs)
    }

    /// Checks an http(s) URL: resolves its host and refuses it if any address is
    /// internal and not allowed. Returns the addresses checked.
    ///
    /// # Errors
    ///
    /// Returns [`EgressError`] for a URL without a host, a name that does not resolve,
    /// or an address that is refused.
    pub async fn check_url(&self, url: &str) -> Result<Vec<SocketAddr>, EgressError> {
        let parsed = url::Url::parse(url).map_err(|_| EgressError::BadUrl(url.to_owned()))?;
        let port = parsed.port_or_known_default();
        let (Some(host), Some(port), "http" | "https") = (parsed.host_str(), port, parsed.scheme())
        else {
            return Err(EgressError::BadUrl(url.to_owned()));
        };
        self.resolve(host, port).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_named() {
        let cases: &[(&str, Option<&str>)] = &[
            ("127.0.0.1", Some("a loopback")),
            ("127.8.9.10", Some("a loopback")),
            ("169.254.169.254", Some("a link-local")),
            ("10.1.2.3", Some("a private")),
            ("172.16.0.1", Some("a private")),
            ("172.31.255.255", Some("a private")),
            ("172.32.0.1", None),
            ("192.168.1.1", Some("a private")),
            ("100.64.0.1", Some("a shared (carrier-grade NAT)")),
            ("0.0.0.0", Some("an unspecified")),
            ("224.0.0.1", Some("a multicast")),
            ("255.255.255.255", Some("a reserved")),
            ("8.8.8.8", None),
            ("93.184.216.34", None),
            ("::1", Some("a loopback")),
            ("::", Some("an unspecified")),
            ("::ffff:127.0.0.1", Some("a loopback")),
            ("::ffff:169.254.169.254", Some("a link-local")),
            ("64:ff9b::a9fe:a9fe", Some("a link-local")),
            ("2002:a9fe:a9fe::1", Some("a link-local")),
            ("fe80::1", Some("a link-local")),
            ("fd00::1", Some("a unique local (private)")),
            ("fec0::1", Some("a site-local (private)")),
            ("ff02::1", Some("a multicast")),
            ("2606:4700::1111", None),
        ];
        for (ip, expected) in cases {
            let ip: IpAddr = ip.parse().expect("an address");
            assert_eq!(internal_kind(ip), *expected, "{ip}");
        }
    }

    #[test]
    fn the_operator_allows_names_and_networks() {
        let policy =
            EgressPolicy::allowing(&["127.0.0.1", "10.0.0.0/8", "hooks.internal", "fd00::/8"])
                .expect("valid");
        for (ip, allowed) in [
            ("127.0.0.1", true),
            ("127.0.0.2", false),
            ("10.200.1.1", true),
            ("::ffff:10.0.0.1", true),
            ("169.254.169.254", false),
            ("fd12::1", true),
            ("fe80::1", false),
        ] {
            let ip: IpAddr = ip.parse().expect("an address");
            assert_eq!(policy.check_addr("h", ip).is_ok(), allowed, "{ip}");
        }
        assert!(policy.host_allowed("HOOKS.internal."));
        assert!(!policy.host_allowed("other.internal"));
        for bad in ["10.0.0.0/33", "a b", "http://x/", "::1/129"] {
            assert!(EgressPolicy::allowing(&[bad]).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn urls_are_judged_by_what_they_resolve_to() {
        let policy = EgressPolicy::default();
        for (url, expected) in [
            (
                "http://127.0.0.1:9/hook",
                "127.0.0.1 is a loopback address 127.0.0.1",
            ),
            (
                "http://169.254.169.254/latest/meta-data/",
                "169.254.169.254 is a link-local address 169.254.169.254",
            ),
            ("http://[::1]:80/", "[::1] is a loopback address ::1"),
            (
                "http://[::ffff:a9fe:a9fe]/",
                "[::ffff:a9fe:a9fe] is a link-local address ::ffff:169.254.169.254",
            ),
            ("http://localhost:8080/", "localhost is a loopback address"),
            ("http://2130706433/", "127.0.0.1 is a loopback address"),
            ("http://0x7f.1/", "127.0.0.1 is a loopback address"),
            ("ftp://example.com/", "is not an http:// or https:// URL"),
        ] {
            let err = policy.check_url(url).await.expect_err(url).to_string();
            assert!(err.contains(expected), "{url}: {err}");
        }
        let allowed = EgressPolicy::allowing(&["127.0.0.0/8"]).expect("valid");
        let addrs = allowed
            .check_url("http://127.0.0.1:9/hook")
            .await
            .expect("allowed");
        assert_eq!(addrs, [SocketAddr::from(([127, 0, 0, 1], 9))]);
    }
}
