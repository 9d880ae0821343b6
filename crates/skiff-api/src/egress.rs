//! Egress policy: what an instance may reach outside its own network namespace.
//!
//! Written as the annotation `skiff.dev/egress` on a revision template, or as the daemon's
//! `egress_default`: `none`, `all`, `public`, or a comma-separated list of `HOST[:PORT]` and
//! `A.B.C.D/N` entries. `host.skiff.internal` in a list names the host itself.
//!
//! - `none`: nothing (other Services of skiff are always reachable: they are not egress).
//! - `public`: any public IPv4 address; never the host, loopback, private, link-local,
//!   shared or reserved ranges.
//! - `all`: any address except the host itself (loopback included).
//! - a list: exactly what it names. A named host is allowed whatever address it resolves
//!   to (that is how an instance reaches a server on the host's loopback by name); a CIDR
//!   allows addresses in it, on any port.
//!
//! Pure: parsing and matching only. The daemon applies it.

use std::fmt;
use std::net::Ipv4Addr;

/// The annotation on a revision template.
pub const EGRESS_ANNOTATION: &str = "skiff.dev/egress";

/// The name under which an instance reaches the host.
pub const HOST_NAME: &str = "host.skiff.internal";

/// An IPv4 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (host bits zero).
    pub addr: Ipv4Addr,
    /// The prefix length (0–32).
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = mask(self.prefix);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One entry of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A host name (lowercase, no trailing dot), on one port or any.
    Host {
        /// The name.
        name: String,
        /// The port, if only one.
        port: Option<u16>,
    },
    /// An IPv4 network (a bare address is a /32), any port.
    Cidr(Cidr),
}

/// An egress policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EgressPolicy {
    /// Nothing outside.
    None,
    /// Any public address.
    #[default]
    Public,
    /// Anything but the host.
    All,
    /// Exactly these.
    List(Vec<Entry>),
}

impl fmt::Display for EgressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressPolicy::None => f.write_str("none"),
            EgressPolicy::Public => f.write_str("public"),
            EgressPolicy::All => f.write_str("all"),
            EgressPolicy::List(entries) => {
                for (i, e) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    match e {
                        Entry::Host { name, port: None } => f.write_str(name)?,
                        Entry::Host {
                            name,
                            port: Some(p),
                        } => write!(f, "{name}:{p}")?,
                        Entry::Cidr(c) => write!(f, "{c}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

/// Why a policy does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn parse_entry(raw: &str) -> Result<Entry, PolicyError> {
    let s = raw.trim();
    if let Some((addr, prefix)) = s.split_once('/') {
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| PolicyError(format!("`{s}`: not an IPv4 network (A.B.C.D/N)")))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| PolicyError(format!("`{s}`: the prefix length must be 0 to 32")))?;
        let net = Ipv4Addr::from(u32::from(addr) & mask(prefix));
        return Ok(Entry::Cidr(Cidr { addr: net, prefix }));
    }
    if let Ok(addr) = s.parse::<Ipv4Addr>() {
        return Ok(Entry::Cidr(Cidr { addr, prefix: 32 }));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| PolicyError(format!("`{s}`: the port must be 1 to 65535")))?;
            (h, Some(port))
        }
        None => (s, None),
    };
    if host.contains('[') || host.contains(':') {
        return Err(PolicyError(format!(
            "`{s}`: IPv6 is not supported (instances have IPv4 only)"
        )));
    }
    if let Ok(addr) = host.parse::<Ipv4Addr>() {
        if port.is_some() {
            return Err(PolicyError(format!(
                "`{s}`: an address allows every port; write `{addr}` or `{addr}/32`"
            )));
        }
        return Ok(Entry::Cidr(Cidr { addr, prefix: 32 }));
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    if !valid_hostname(&name) {
        return Err(PolicyError(format!(
            "`{s}`: not a host name, `HOST:PORT` or `A.B.C.D/N`"
        )));
    }
    Ok(Entry::Host { name, port })
}

impl std::str::FromStr for EgressPolicy {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        match t {
            "none" => return Ok(EgressPolicy::None),
            "public" => return Ok(EgressPolicy::Public),
            "all" => return Ok(EgressPolicy::All),
            "" => {
                return Err(PolicyError(
                    "must be `none`, `public`, `all`, or a comma-separated list of HOST[:PORT] and A.B.C.D/N".into(),
                ));
            }
            _ => {}
        }
        let mut entries = Vec::new();
        for part in t.split(',') {
            let part = part.trim();
            if matches!(part, "none" | "public" | "all") {
                return Err(PolicyError(format!(
                    "`{part}` stands alone; it cannot be part of a list"
                )));
            }
            if part.is_empty() {
                return Err(PolicyError("an empty entry in the list".into()));
            }
            let e = parse_entry(part)?;
            if !entries.contains(&e) {
                entries.push(e);
            }
        }
        Ok(EgressPolicy::List(entries))
    }
}

/// Whether `ip` is a public (globally routable) unicast IPv4 address.
pub fn is_public(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, shared
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
        || o[0] >= 240) // reserved
}

impl EgressPolicy {
    /// Whether the host itself may be reached on `port` (`None`: on some port).
    pub fn allows_host(&self, port: Option<u16>) -> bool {
        self.allows_named(HOST_NAME, port)
    }

    /// Whether the list names `name` (on `port`, or on some port when `None`).
    pub fn allows_named(&self, name: &str, port: Option<u16>) -> bool {
        let EgressPolicy::List(entries) = self else {
            return false;
        };
        entries.iter().any(|e| match e {
            Entry::Host { name: n, port: p } => {
                n.eq_ignore_ascii_case(name.trim_end_matches('.'))
                    && match (p, port) {
                        (None, _) | (_, None) => true,
                        (Some(a), Some(b)) => *a == b,
                    }
            }
            Entry::Cidr(_) => false,
        })
    }

    /// Whether a connection to `ip` (not the host's own address: check that first) is
    /// allowed by address alone (no name known for it).
    pub fn allows_addr(&self, ip: Ipv4Addr) -> bool {
        match self {
            EgressPolicy::None => false,
            EgressPolicy::Public => is_public(ip),
            EgressPolicy::All => !ip.is_loopback(),
            EgressPolicy::List(entries) => entries
                .iter()
                .any(|e| matches!(e, Entry::Cidr(c) if c.contains(ip) && (!ip.is_loopback() || c.addr.is_loopback()))),
        }
    }

    /// Whether a name may be resolved at all (before looking at its addresses): named, or
    /// a policy that may allow some address.
    pub fn may_resolve(&self, name: &str) -> bool {
        match self {
            EgressPolicy::None => false,
            EgressPolicy::Public | EgressPolicy::All => true,
            EgressPolicy::List(entries) => {
                self.allows_named(name, None) || entries.iter().any(|e| matches!(e, Entry::Cidr(_)))
            }
        }
    }

    /// The addresses of `name` (as resolved upstream) an instance may connect to: all of
    /// them when the name is listed, else those its address rules allow.
    pub fn reachable_addrs(&self, name: &str, addrs: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
        if self.allows_named(name, None) {
            return addrs.to_vec();
        }
        addrs
            .iter()
            .copied()
            .filter(|ip| self.allows_addr(*ip))
            .collect()
    }

    /// The CIDRs a list allows (for the namespace's packet filter).
    pub fn cidrs(&self) -> Vec<Cidr> {
        match self {
            EgressPolicy::List(entries) => entries
                .iter()
                .filter_map(|e| match e {
                    Entry::Cidr(c) => Some(*c),
                    Entry::Host { .. } => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> EgressPolicy {
        s.parse().expect("parses")
    }

    #[test]
    fn keywords_and_lists_parse() {
        assert_eq!(p("none"), EgressPolicy::None);
        assert_eq!(p(" all "), EgressPolicy::All);
        assert_eq!(p("public"), EgressPolicy::Public);
        assert_eq!(
            p("API.example.test, db.internal:5432,10.0.0.7/8, 192.0.2.1"),
            EgressPolicy::List(vec![
                Entry::Host {
                    name: "api.example.test".into(),
                    port: None
                },
                Entry::Host {
                    name: "db.internal".into(),
                    port: Some(5432)
                },
                Entry::Cidr(Cidr {
                    addr: Ipv4Addr::new(10, 0, 0, 0),
                    prefix: 8
                }),
                Entry::Cidr(Cidr {
                    addr: Ipv4Addr::new(192, 0, 2, 1),
                    prefix: 32
                }),
            ])
        );
        assert_eq!(
            p("host.skiff.internal:7070").to_string(),
            "host.skiff.internal:7070"
        );
    }

    #[test]
    fn bad_policies_are_refused_with_why() {
        for (bad, why) in [
            ("", "must be"),
            ("a.test,,b.test", "empty entry"),
            ("none,a.test", "stands alone"),
            ("a.test:0", "port"),
            ("a.test:http", "port"),
            ("10.0.0.0/33", "prefix"),
            ("10.0.0/8", "IPv4 network"),
            ("1.2.3.4:80", "every port"),
            ("bad_host!", "not a host name"),
            ("[::1]:80", "IPv6"),
            ("-a.test", "not a host name"),
        ] {
            let e = bad.parse::<EgressPolicy>().expect_err(bad);
            assert!(e.0.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn names_are_allowed_whatever_they_resolve_to() {
        let pol = p("api.example.test, db.test:5432");
        let lo = Ipv4Addr::LOCALHOST;
        assert!(pol.may_resolve("api.example.test."));
        assert_eq!(pol.reachable_addrs("api.example.test", &[lo]), vec![lo]);
        assert!(pol.allows_named("API.example.test", Some(8080)));
        assert!(pol.allows_named("db.test", Some(5432)));
        assert!(!pol.allows_named("db.test", Some(5433)));
        assert!(!pol.may_resolve("other.test"));
        assert!(!pol.allows_addr(lo));
        assert!(!pol.allows_host(None));
        assert!(p("host.skiff.internal").allows_host(Some(7070)));
        assert!(!p("host.skiff.internal:80").allows_host(Some(7070)));
    }

    #[test]
    fn address_rules() {
        let public = EgressPolicy::Public;
        for ip in ["8.8.8.8", "1.1.1.1", "151.101.1.1"] {
            assert!(public.allows_addr(ip.parse().expect("ip")), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "198.18.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
        ] {
            assert!(!public.allows_addr(ip.parse().expect("ip")), "{ip}");
        }
        assert!(EgressPolicy::All.allows_addr(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!EgressPolicy::All.allows_addr(Ipv4Addr::LOCALHOST));
        assert!(!EgressPolicy::None.allows_addr(Ipv4Addr::new(8, 8, 8, 8)));
        let list = p("10.0.0.0/8");
        assert!(list.allows_addr(Ipv4Addr::new(10, 9, 9, 9)));
        assert!(!list.allows_addr(Ipv4Addr::new(11, 0, 0, 1)));
        assert!(list.may_resolve("anything.test"));
        assert_eq!(
            list.reachable_addrs(
                "anything.test",
                &[Ipv4Addr::new(8, 8, 8, 8), Ipv4Addr::new(10, 0, 0, 1)]
            ),
            vec![Ipv4Addr::new(10, 0, 0, 1)]
        );
        assert_eq!(
            public.reachable_addrs("x.test", &[Ipv4Addr::LOCALHOST]),
            Vec::<Ipv4Addr>::new()
        );
        // Loopback (the host) only through a network inside 127.0.0.0/8.
        assert!(!p("0.0.0.0/0").allows_addr(Ipv4Addr::LOCALHOST));
        assert!(p("127.0.0.1").allows_addr(Ipv4Addr::LOCALHOST));
    }
}
