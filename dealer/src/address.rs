//! Replica network addresses: `HOST:PORT`, where HOST is an IPv4 address, a bracketed IPv6
//! address or a DNS name.

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use fides_types::Quorum;

use crate::DealerError;

/// The first port of the default addresses: replica `i` listens on `127.0.0.1:(7100 + i)`.
pub const DEFAULT_PORT_FIRST: u16 = 7100;

/// A replica's network address, in canonical form (IP addresses normalised, DNS names in lower
/// case), so that two spellings of one address compare equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    host: String,
    port: u16,
}

impl Address {
    /// Parse `HOST:PORT`; the error is the reason, without the entry.
    pub fn parse(text: &str) -> Result<Address, String> {
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or("an IPv6 host needs a closing ']'")?;
            let ip: Ipv6Addr = inner.parse().map_err(|_| format!("{inner:?} is not an IPv6 address"))?;
            let port = after.strip_prefix(':').ok_or("expected HOST:PORT, as [::1]:7100")?;
            (format!("[{ip}]"), port)
        } else {
            let (host, port) = text.rsplit_once(':').ok_or("expected HOST:PORT, as 10.0.0.1:7100")?;
            if host.contains(':') {
                return Err("an IPv6 host must be in brackets, as [::1]:7100".to_string());
            }
            (canonical_host(host)?, port)
        };
        Ok(Address { host, port: parse_port(port)? })
    }

    /// The host: an IPv4 address, a bracketed IPv6 address or a DNS name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, never 0.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {text:?} is not a number"));
    }
    match text.parse::<u16>() {
        Ok(0) => Err("port 0 is not a port one can connect to".to_string()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("port {text} is above 65535")),
    }
}

fn canonical_host(host: &str) -> Result<String, String> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(ip.to_string());
    }
    if host.is_empty() {
        return Err("the host is empty".to_string());
    }
    if host.len() > 253 {
        return Err("the host name is longer than 253 characters".to_string());
    }
    for label in host.split('.') {
        let valid = (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!("{host:?} is neither an IPv4 address nor a DNS name"));
        }
    }
    // A name whose last label is all digits would be read as a (bad) IPv4 address by resolvers.
    if host.rsplit('.').next().is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!("{host:?} is not a valid IPv4 address"));
    }
    Ok(host.to_ascii_lowercase())
}

/// The default addresses: `127.0.0.1:7100`, `127.0.0.1:7101`, … one per replica.
pub fn default_addresses(quorum: Quorum) -> Vec<Address> {
    quorum
        .nodes()
        .map(|index| {
            let offset = u16::try_from(index.0).expect("n <= 1024, so the index fits in u16");
            let port = DEFAULT_PORT_FIRST.checked_add(offset).expect("7100 + 1023 is below 65536");
            Address { host: Ipv4Addr::LOCALHOST.to_string(), port }
        })
        .collect()
}

/// Parse a comma-separated list of `HOST:PORT`, one per replica in index order. Whitespace around
/// entries is ignored; empty entries, duplicates and a list whose length is not `n` are refused.
pub fn parse_addresses(list: &str, quorum: Quorum) -> Result<Vec<Address>, DealerError> {
    let addresses = list
        .split(',')
        .enumerate()
        .map(|(position, entry)| parse_entry(position + 1, entry.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    check_addresses(&addresses, quorum)?;
    Ok(addresses)
}

fn parse_entry(position: usize, entry: &str) -> Result<Address, DealerError> {
    if entry.is_empty() {
        let reason = "empty entry".to_string();
        return Err(DealerError::AddressMalformed { position, entry: entry.to_string(), reason });
    }
    Address::parse(entry).map_err(|reason| DealerError::AddressMalformed { position, entry: entry.to_string(), reason })
}

/// Refuse a list with duplicates or whose length is not `n`.
pub(crate) fn check_addresses(addresses: &[Address], quorum: Quorum) -> Result<(), DealerError> {
    let mut seen = HashSet::new();
    if let Some(duplicate) = addresses.iter().find(|address| !seen.insert(*address)) {
        return Err(DealerError::AddressDuplicate { address: duplicate.to_string() });
    }
    if addresses.len() != quorum.n() as usize {
        return Err(DealerError::AddressCount { given: addresses.len(), n: quorum.n() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_in_canonical_form() {
        let ok = |text: &str| Address::parse(text).map(|a| a.to_string());
        assert_eq!(ok("10.0.0.1:7100"), Ok("10.0.0.1:7100".to_string()));
        assert_eq!(ok("[0:0::1]:80"), Ok("[::1]:80".to_string()));
        assert_eq!(ok("Replica-1.Example.org:443"), Ok("replica-1.example.org:443".to_string()));
        for bad in ["10.0.0.1", ":7100", "host:", "host:0", "host:65536", "host:+1", "::1:80", "999.1.1.1:80"] {
            assert!(Address::parse(bad).is_err(), "{bad} parsed");
        }
        for bad in ["-a.org:1", "a..org:1", "a_b.org:1", "[::1:80", "[zz]:80", "[::1]80"] {
            assert!(Address::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn address_lists_refuse_empty_entries_duplicates_and_wrong_length() {
        let quorum = Quorum::new(4, 1).expect("4 replicas tolerate 1 fault");
        let list = "a:1, b:2,c:3,d:4";
        assert_eq!(parse_addresses(list, quorum).map(|a| a.len()).ok(), Some(4));
        assert!(matches!(
            parse_addresses("a:1,,c:3,d:4", quorum),
            Err(DealerError::AddressMalformed { position: 2, .. })
        ));
        assert!(matches!(parse_addresses("a:1,b:2,c:3,d:4,", quorum), Err(DealerError::AddressMalformed { .. })));
        assert!(matches!(parse_addresses("a:1,b:2,A:1,d:4", quorum), Err(DealerError::AddressDuplicate { .. })));
        assert!(matches!(parse_addresses("a:1,b:2,c:3", quorum), Err(DealerError::AddressCount { given: 3, n: 4 })));
        let defaults = default_addresses(quorum);
        assert_eq!(defaults.last().map(ToString::to_string), Some("127.0.0.1:7103".to_string()));
    }
}
