//! The SSRF guard: which addresses a webhook may be sent to. A URL from a client must not make
//! Ferry call its own machine, the private network it runs in or the cloud's metadata service.
//!
//! Checked twice: when an endpoint is created (its name resolved, each address checked, so a
//! mistake is a `422` at once), and at every delivery by the HTTP client's resolver
//! ([`GuardedResolver`]), which hands the connection only addresses it checked itself — a name
//! that resolves elsewhere later (DNS rebinding) is refused then. URLs with an IP literal skip
//! the resolver, so [`AddressPolicy::check_url_host`] checks those before each send.
//!
//! The ranges are written out here rather than taken from a crate: std's `Ipv4Addr`/`Ipv6Addr`
//! classify most of them, and the few it leaves unstable (CGNAT, metadata) are one line each.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use url::{Host, Url};

use crate::config::WebhookSettings;

/// How long endpoint creation waits for DNS before letting the name through unchecked.
const CREATION_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Which receivers are allowed; the rest are refused.
#[derive(Clone, Copy, Debug)]
pub struct AddressPolicy {
    pub allow_loopback: bool,
    pub allow_private_networks: bool,
}

/// AWS, GCP and Azure's metadata service (IPv4), and AWS's IPv6 one.
const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

impl AddressPolicy {
    pub fn of(settings: &WebhookSettings) -> Self {
        Self {
            allow_loopback: settings.allow_loopback,
            allow_private_networks: settings.allow_private_networks,
        }
    }

    /// `Err` names why `ip` is refused.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        let refuse = |what: &str| Err(format!("{ip} is {what}"));
        match ip {
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return self.check_ip(IpAddr::V4(v4));
                }
                if v6 == METADATA_V6 {
                    return refuse("a cloud metadata address");
                }
                if v6.is_loopback() {
                    return if self.allow_loopback {
                        Ok(())
                    } else {
                        refuse("a loopback address")
                    };
                }
                if v6.is_unspecified() || v6.is_multicast() {
                    return refuse("not a unicast address");
                }
                if v6.is_unique_local() || v6.is_unicast_link_local() {
                    return self.private(ip);
                }
                Ok(())
            }
            IpAddr::V4(v4) => {
                if v4 == METADATA_V4 {
                    return refuse("a cloud metadata address");
                }
                if v4.is_loopback() {
                    return if self.allow_loopback {
                        Ok(())
                    } else {
                        refuse("a loopback address")
                    };
                }
                let [a, b, ..] = v4.octets();
                if a == 0 || v4.is_multicast() || v4.is_broadcast() || a >= 240 {
                    return refuse("not a unicast address");
                }
                let cgnat = a == 100 && (64..128).contains(&b);
                if v4.is_private() || v4.is_link_local() || cgnat {
                    return self.private(ip);
                }
                Ok(())
            }
        }
    }

    fn private(&self, ip: IpAddr) -> Result<(), String> {
        if self.allow_private_networks {
            Ok(())
        } else {
            Err(format!("{ip} is a private, link-local or shared address"))
        }
    }

    /// Checks the host of `url` if it is an IP literal; a name is left to the resolver.
    pub fn check_url_host(&self, url: &Url) -> Result<(), String> {
        match url.host() {
            Some(Host::Ipv4(v4)) => self.check_ip(IpAddr::V4(v4)),
            Some(Host::Ipv6(v6)) => self.check_ip(IpAddr::V6(v6)),
            Some(Host::Domain(_)) => Ok(()),
            None => Err("the URL names no host".into()),
        }
    }

    /// Resolves `host` and checks every address; refused if any is not allowed (a name with
    /// one public and one private address is not let through half-way).
    pub async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, String> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        for addr in &addrs {
            self.check_ip(addr.ip())
                .map_err(|why| format!("{host} resolves to {why}"))?;
        }
        Ok(addrs)
    }

    /// The check at endpoint creation: an IP literal is checked; a name is resolved and its
    /// addresses checked. A name that does not resolve (yet) is let through: it is checked
    /// again at every delivery.
    pub async fn check_at_creation(&self, url: &Url) -> Result<(), String> {
        self.check_url_host(url)?;
        let Some(Host::Domain(name)) = url.host() else {
            return Ok(());
        };
        // A slow resolver must not hold the request up; the name is checked at every delivery.
        match tokio::time::timeout(CREATION_LOOKUP_TIMEOUT, self.resolve(name)).await {
            Err(_elapsed) => Ok(()),
            Ok(Err(why)) if why.starts_with("cannot resolve") => Ok(()),
            Ok(other) => other.map(|_| ()),
        }
    }
}

/// The deliverer's DNS resolver: [`AddressPolicy::resolve`], so a connection only ever goes to
/// an address that was checked.
pub struct GuardedResolver(pub AddressPolicy);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0;
        Box::pin(async move {
            let addrs = policy
                .resolve(name.as_str())
                .await
                .map_err(|why| -> Box<dyn std::error::Error + Send + Sync> { why.into() })?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl GuardedResolver {
    pub fn shared(policy: AddressPolicy) -> Arc<Self> {
        Arc::new(Self(policy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: AddressPolicy = AddressPolicy {
        allow_loopback: false,
        allow_private_networks: false,
    };

    #[test]
    fn private_loopback_metadata_and_multicast_are_refused() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(STRICT.check_ip(ip).is_err(), "{bad} let through");
        }
        for good in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(STRICT.check_ip(good.parse().unwrap()).is_ok(), "{good}");
        }
    }

    #[test]
    fn allowances_open_only_what_they_name() {
        let loopback = AddressPolicy {
            allow_loopback: true,
            ..STRICT
        };
        assert!(loopback.check_ip("127.0.0.1".parse().unwrap()).is_ok());
        assert!(loopback.check_ip("10.0.0.1".parse().unwrap()).is_err());
        let private = AddressPolicy {
            allow_private_networks: true,
            ..STRICT
        };
        assert!(private.check_ip("10.0.0.1".parse().unwrap()).is_ok());
        assert!(private.check_ip("127.0.0.1".parse().unwrap()).is_err());
        assert!(
            private
                .check_ip("169.254.169.254".parse().unwrap())
                .is_err()
        );
    }
}
