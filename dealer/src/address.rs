//! Replica network addresses: `HOST:PORT`, where HOST is an IPv4 address, a bracketed IPv6
//! address or a DNS name. Each replica has two: its *address*, where its peers reach it, and its
//! *client address*, where it serves clients over gRPC.

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use fides_types::{NodeIndex, Quorum};

use crate::DealerError;

/// The first port of the default addresses: replica `i` listens on `127.0.0.1:(7100 + i)`.
pub const DEFAULT_PORT_FIRST: u16 = 7100;

/// The first port of the default client addresses: replica `i` serves clients on
/// `127.0.0.1:(7200 + i)`.
pub const DEFAULT_CLIENT_PORT_FIRST: u16 = 7200;

/// A client address that is not given is derived from the replica's address: same host, port
/// raised by this much (see [`Address::derived_client_address`]).
pub const CLIENT_PORT_OFFSET: u16 = 100;

/// Name of the list of replica-to-replica addresses, in errors.
pub(crate) const ADDRESS_LIST: &str = "address list";
/// Name of the list of client addresses, in errors.
pub(crate) const CLIENT_ADDRESS_LIST: &str = "client address list";

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

    /// The client address of a replica at this address when none is given: the same host, port
    /// + [`CLIENT_PORT_OFFSET`]. `None` if that port would be above 65535.
    pub fn derived_client_address(&self) -> Option<Address> {
        let port = self.port.checked_add(CLIENT_PORT_OFFSET)?;
        Some(Address { host: self.host.clone(), port })
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
    loopback_addresses(quorum, DEFAULT_PORT_FIRST)
}

/// The default client addresses: `127.0.0.1:7200`, `127.0.0.1:7201`, … one per replica. They are
/// the client addresses derived from [`default_addresses`].
pub fn default_client_addresses(quorum: Quorum) -> Vec<Address> {
    loopback_addresses(quorum, DEFAULT_CLIENT_PORT_FIRST)
}

fn loopback_addresses(quorum: Quorum, port_first: u16) -> Vec<Address> {
    quorum
        .nodes()
        .map(|index| {
            let offset = u16::try_from(index.0).expect("n <= 1024, so the index fits in u16");
            let port = port_first.checked_add(offset).expect("7200 + 1023 is below 65536");
            Address { host: Ipv4Addr::LOCALHOST.to_string(), port }
        })
        .collect()
}

/// The client address of each replica at `addresses` when none is given (see
/// [`Address::derived_client_address`]); refused if a port would be above 65535.
pub fn derive_client_addresses(addresses: &[Address]) -> Result<Vec<Address>, DealerError> {
    addresses
        .iter()
        .map(|address| {
            address
                .derived_client_address()
                .ok_or_else(|| DealerError::ClientAddressOverflow { address: address.to_string() })
        })
        .collect()
}

/// Parse a comma-separated list of `HOST:PORT`, one per replica in index order. Whitespace around
/// entries is ignored; empty entries, duplicates and a list whose length is not `n` are refused.
pub fn parse_addresses(list: &str, quorum: Quorum) -> Result<Vec<Address>, DealerError> {
    parse_list(list, quorum, ADDRESS_LIST)
}

/// Parse a comma-separated list of client addresses, as [`parse_addresses`] does. Whether one is
/// also a replica-to-replica address is checked when dealing, once both lists are known.
pub fn parse_client_addresses(list: &str, quorum: Quorum) -> Result<Vec<Address>, DealerError> {
    parse_list(list, quorum, CLIENT_ADDRESS_LIST)
}

fn parse_list(list: &str, quorum: Quorum, name: &'static str) -> Result<Vec<Address>, DealerError> {
    let addresses = list
        .split(',')
        .enumerate()
        .map(|(position, entry)| parse_entry(name, position + 1, entry.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    check_addresses(&addresses, quorum, name)?;
    Ok(addresses)
}

fn parse_entry(list: &'static str, position: usize, entry: &str) -> Result<Address, DealerError> {
    let malformed = |reason: String| DealerError::AddressMalformed { list, position, entry: entry.to_string(), reason };
    if entry.is_empty() {
        return Err(malformed("empty entry".to_string()));
    }
    Address::parse(entry).map_err(malformed)
}

/// Refuse a list (named `list` in the error) with duplicates or whose length is not `n`.
pub(crate) fn check_addresses(addresses: &[Address], quorum: Quorum, list: &'static str) -> Result<(), DealerError> {
    let mut seen = HashSet::new();
    if let Some(duplicate) = addresses.iter().find(|address| !seen.insert(*address)) {
        return Err(DealerError::AddressDuplicate { list, address: duplicate.to_string() });
    }
    if addresses.len() != quorum.n() as usize {
        return Err(DealerError::AddressCount { list, given: addresses.len(), n: quorum.n() });
    }
    Ok(())
}

/// Refuse a list of client addresses with duplicates, whose length is not `n`, or with an entry
/// that is also one of the replica-to-replica `addresses` (of any replica).
pub(crate) fn check_client_addresses(
    client_addresses: &[Address],
    addresses: &[Address],
    quorum: Quorum,
) -> Result<(), DealerError> {
    check_addresses(client_addresses, quorum, CLIENT_ADDRESS_LIST)?;
    for (client, address) in quorum.nodes().zip(client_addresses) {
        if let Some(replica) = addresses.iter().position(|other| other == address) {
            let replica = NodeIndex(u32::try_from(replica).expect("at most 1024 addresses"));
            return Err(DealerError::ClientAddressCollision { address: address.to_string(), client, replica });
        }
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
        assert!(matches!(
            parse_addresses("a:1,b:2,c:3", quorum),
            Err(DealerError::AddressCount { given: 3, n: 4, .. })
        ));
        let defaults = default_addresses(quorum);
        assert_eq!(defaults.last().map(ToString::to_string), Some("127.0.0.1:7103".to_string()));
    }

    #[test]
    fn client_address_lists_are_checked_like_address_lists_and_name_themselves() {
        let quorum = Quorum::new(4, 1).expect("4 replicas tolerate 1 fault");
        let parsed = parse_client_addresses(" a:1,b:2 , [::1]:3,d:4", quorum).expect("valid list");
        assert_eq!(parsed.iter().map(ToString::to_string).collect::<Vec<_>>(), ["a:1", "b:2", "[::1]:3", "d:4"]);
        let refused = |list: &str| parse_client_addresses(list, quorum).expect_err("refused").to_string();
        assert!(refused("a:1,,c:3,d:4").starts_with("client address list entry 2"), "{}", refused("a:1,,c:3,d:4"));
        assert!(refused("a:1,b:2,A:1,d:4").starts_with("client address list: a:1 appears more than once"));
        assert!(refused("a:1,b:2,c:3").starts_with("client address list has 3 entries but n = 4"));
        assert!(parse_addresses("a:1,b:2,c:3", quorum).expect_err("refused").to_string().starts_with("address list"));
    }

    #[test]
    fn default_client_addresses_are_the_derived_default_addresses() {
        let quorum = Quorum::new(7, 2).expect("7 replicas tolerate 2 faults");
        let defaults = default_client_addresses(quorum);
        assert_eq!(defaults.first().map(ToString::to_string), Some("127.0.0.1:7200".to_string()));
        assert_eq!(defaults.last().map(ToString::to_string), Some("127.0.0.1:7206".to_string()));
        assert_eq!(derive_client_addresses(&default_addresses(quorum)).ok(), Some(defaults));
        let derived = Address::parse("[::1]:65435").ok().and_then(|a| a.derived_client_address());
        assert_eq!(derived.map(|a| a.to_string()), Some("[::1]:65535".to_string()));
        let high = Address::parse("a.example.org:65436").expect("valid");
        assert_eq!(high.derived_client_address(), None);
        assert!(matches!(derive_client_addresses(&[high]), Err(DealerError::ClientAddressOverflow { .. })));
    }

    #[test]
    fn a_client_address_equal_to_any_replica_address_is_refused() {
        let quorum = Quorum::new(4, 1).expect("4 replicas tolerate 1 fault");
        let addresses = default_addresses(quorum);
        assert!(check_client_addresses(&default_client_addresses(quorum), &addresses, quorum).is_ok());
        let clients = parse_client_addresses("c:1,c:2,127.0.0.1:7101,c:4", quorum).expect("valid list");
        let refused = check_client_addresses(&clients, &addresses, quorum);
        assert!(
            matches!(
                refused,
                Err(DealerError::ClientAddressCollision { client: NodeIndex(2), replica: NodeIndex(1), .. })
            ),
            "{refused:?}"
        );
    }
}
