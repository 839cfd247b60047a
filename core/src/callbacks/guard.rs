//! The SSRF guard: callbacks and push wake-ups may only reach public
//! addresses. The check runs on the addresses a host name resolves to, and
//! those are the only addresses the client may connect to, so a name that
//! resolves differently on a second lookup (DNS rebinding) cannot slip
//! through. Literal IP hosts are checked before any request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why an address is refused, or None for a public address.
pub fn blocked(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, d] = ip.octets();
    Some(match (a, b) {
        (127, _) => "loopback",
        (0, _) => "unspecified",
        (10, _) | (192, 168) => "private",
        (172, 16..=31) => "private",
        (169, 254) if c == 169 && d == 254 => "cloud metadata",
        (169, 254) => "link-local",
        (100, 64..=127) => "carrier-grade NAT",
        (192, 0) if c == 0 => "IETF protocol assignments",
        (198, 18..=19) => "benchmarking",
        (224..=239, _) => "multicast",
        (240..=255, _) => "reserved",
        _ => return None,
    })
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return blocked_v4(v4).map(|_| "IPv4-mapped non-public");
    }
    let segments = ip.segments();
    Some(match segments {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        // AWS's IPv6 metadata endpoint (fd00:ec2::254) is in fc00::/7 too.
        [0xfd00, 0x0ec2, ..] => "cloud metadata",
        [first, ..] if first & 0xfe00 == 0xfc00 => "private",
        [first, ..] if first & 0xffc0 == 0xfe80 => "link-local",
        [first, ..] if first & 0xff00 == 0xff00 => "multicast",
        // IPv4-compatible (deprecated) and NAT64 forms embed IPv4 addresses.
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible",
        [0x64, 0xff9b, ..] => "NAT64",
        _ => return None,
    })
}

/// What the guard allows.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Development and tests only: allow every address.
    pub allow_private: bool,
}

impl Policy {
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        match blocked(ip) {
            Some(class) if !self.allow_private => {
                Err(format!("refused to connect to {ip} ({class} address)"))
            }
            _ => Ok(()),
        }
    }
}

impl Policy {
    /// Literal IP hosts never reach the resolver: they are checked here.
    pub fn check_literal(&self, url: &reqwest::Url) -> Result<(), String> {
        let literal = url.host_str().and_then(|host| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()
        });
        literal.map_or(Ok(()), |ip| self.check(ip))
    }
}

/// The HTTP client for outgoing webhooks: no redirects followed, proxy
/// variables ignored, every resolved address checked by `policy`.
pub fn client(
    policy: Policy,
    timeout: std::time::Duration,
) -> crate::error::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(super::USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .dns_resolver(std::sync::Arc::new(GuardedResolver { policy }))
        .build()
        .map_err(crate::error::Error::internal)
}

/// A resolver that returns only addresses the policy allows, so the client
/// connects only to checked addresses.
pub struct GuardedResolver {
    pub policy: Policy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = format!("{}:0", name.as_str());
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host(host).await?.collect();
            let resolved_any = !resolved.is_empty();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| policy.check(addr.ip()).is_ok())
                .collect();
            if allowed.is_empty() {
                // Never which address: the reason is recorded on the job,
                // and naming what an internal name resolves to would turn
                // callbacks into a DNS oracle.
                let reason = if resolved_any {
                    "refused: non-public address".to_owned()
                } else {
                    format!("{} did not resolve", name.as_str())
                };
                return Err(reason.into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_non_public_class_is_refused_and_public_addresses_pass() {
        let refused = [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ];
        for ip in refused {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(blocked(ip).is_some(), "{ip} must be refused");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(blocked(ip), None, "{ip} is public");
        }
        let open = Policy {
            allow_private: true,
        };
        assert!(open.check("127.0.0.1".parse().unwrap()).is_ok());
    }
}
