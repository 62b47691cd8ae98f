//! Where deliveries may go. Loopback, private, link-local and other non-public addresses are
//! refused unless `webhooks.allow_private_targets = true` (tests, local development): checked
//! when an endpoint is saved, and again at every delivery by the HTTP client's resolver, so
//! a name that later resolves to a private address (DNS rebinding) is refused too.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Why a URL cannot be an endpoint, naming the field.
pub fn validate_url(url: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("url: not a valid URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "url: the scheme must be http or https, not {:?}",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("url: a host is required".into());
    }
    if url.len() > 2048 {
        return Err("url: at most 2048 characters".into());
    }
    Ok(parsed)
}

/// True for addresses a webhook must not reach by default.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // carrier-grade NAT
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19)) // benchmarking
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
        }
    }
}

/// Checks where `url` points: a literal address directly, a name through DNS. `Ok` for a
/// name that does not resolve now (it is checked again at every delivery).
pub async fn check_public(url: &url::Url) -> Result<(), String> {
    let Some(host) = url.host() else {
        return Err("url: a host is required".into());
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<IpAddr> = match host {
        url::Host::Ipv4(ip) => vec![IpAddr::V4(ip)],
        url::Host::Ipv6(ip) => vec![IpAddr::V6(ip)],
        url::Host::Domain(name) => match tokio::net::lookup_host((name, port)).await {
            Ok(found) => found.map(|a| a.ip()).collect(),
            Err(_) => return Ok(()),
        },
    };
    match addrs.into_iter().find(|ip| is_private(*ip)) {
        Some(ip) => Err(format!(
            "url: {host} is a private or loopback address ({ip}); set webhooks.allow_private_targets = true to allow it"
        )),
        None => Ok(()),
    }
}

/// The HTTP client's resolver when private targets are refused: drops non-public addresses,
/// and fails a name that has nothing else.
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let public: Vec<SocketAddr> = found.filter(|a| !is_private(a.ip())).collect();
            if public.is_empty() {
                return Err(format!(
                    "{} resolves only to private or loopback addresses",
                    name.as_str()
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The client that delivers: no redirects followed, the configured timeout, and with private
/// targets refused, the [`PublicOnly`] resolver.
pub fn http_client(timeout: std::time::Duration, allow_private: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .user_agent(concat!("entitled-webhooks/", env!("CARGO_PKG_VERSION")));
    if !allow_private {
        b = b.dns_resolver(Arc::new(PublicOnly));
    }
    b.build().unwrap_or_else(|_| reqwest::Client::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_validated_naming_the_field() {
        assert!(validate_url("https://example.com/hook").is_ok());
        assert!(validate_url("http://example.com:8080/x?y=1").is_ok());
        let e = validate_url("ftp://example.com/").unwrap_err();
        assert!(
            e.starts_with("url: the scheme must be http or https"),
            "{e}"
        );
        assert!(validate_url("not a url").unwrap_err().starts_with("url: "));
        assert!(validate_url("mailto:a@b.c").is_err());
    }

    #[test]
    fn private_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn literal_and_named_private_targets_are_refused() {
        let e = check_public(&validate_url("http://127.0.0.1:9/x").unwrap())
            .await
            .unwrap_err();
        assert!(e.contains("allow_private_targets"), "{e}");
        assert!(check_public(&validate_url("http://localhost:9/x").unwrap())
            .await
            .is_err());
        assert!(check_public(&validate_url("http://[::1]:9/").unwrap())
            .await
            .is_err());
    }
}
