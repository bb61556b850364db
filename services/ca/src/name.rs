//! Subject names and subject alternative names: the small set this CA certifies, each value
//! bounded and checked, and encoded in one canonical order.

use const_oid::db::{rfc3280, rfc4519};
use const_oid::ObjectIdentifier;
use der::asn1::{Any, Ia5String, PrintableString, SetOfVec, Utf8StringRef};
use der::{Tag, Tagged};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::{Name, RelativeDistinguishedName};

use crate::InputError;

/// At most this many attributes besides the common name.
pub const ATTRIBUTES_MAX: usize = 8;
/// At most this many subject alternative names (DNS names and e-mail addresses together).
pub const ALT_NAMES_MAX: usize = 16;
/// RFC 5280's `ub-common-name`, in characters.
pub const COMMON_NAME_CHARS_MAX: usize = 64;
/// RFC 1035: a DNS name of at most 253 characters (without the final dot)...
pub const DNS_NAME_CHARS_MAX: usize = 253;
/// ...made of labels of 1 to 63 characters.
pub const DNS_LABEL_CHARS_MAX: usize = 63;
/// RFC 5321: an address of at most 254 characters...
pub const EMAIL_CHARS_MAX: usize = 254;
/// ...whose local part has at most 64.
pub const EMAIL_LOCAL_CHARS_MAX: usize = 64;

/// A name attribute a subject may carry besides its common name, in the order they appear in
/// the encoded name (most significant first, as in `C=…, O=…, OU=…, CN=…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttributeKind {
    /// `C`, countryName: two upper-case letters (ISO 3166), a `PrintableString`.
    Country,
    /// `ST`, stateOrProvinceName: up to 128 characters, a `UTF8String`.
    State,
    /// `L`, localityName: up to 128 characters, a `UTF8String`.
    Locality,
    /// `O`, organizationName: up to 64 characters, a `UTF8String`.
    Organization,
    /// `OU`, organizationalUnitName: up to 64 characters, a `UTF8String`.
    OrganizationalUnit,
    /// `emailAddress` (PKCS #9): an e-mail address as for the alternative names, an
    /// `IA5String`; placed after the common name, as OpenSSL does. Deprecated by RFC 5280 in
    /// favour of the alternative name, kept because users ask for it.
    Email,
}

impl AttributeKind {
    /// The kind named by its usual short name (`C`, `ST`, `L`, `O`, `OU`, `emailAddress`; the
    /// last also as `E`), as in `--attr O=Example`.
    pub fn from_short_name(name: &str) -> Result<AttributeKind, InputError> {
        Ok(match name {
            "C" => AttributeKind::Country,
            "ST" => AttributeKind::State,
            "L" => AttributeKind::Locality,
            "O" => AttributeKind::Organization,
            "OU" => AttributeKind::OrganizationalUnit,
            "emailAddress" | "E" => AttributeKind::Email,
            other => return Err(InputError::UnknownAttribute(truncated(other))),
        })
    }

    /// Its short name.
    pub fn short_name(self) -> &'static str {
        match self {
            AttributeKind::Country => "C",
            AttributeKind::State => "ST",
            AttributeKind::Locality => "L",
            AttributeKind::Organization => "O",
            AttributeKind::OrganizationalUnit => "OU",
            AttributeKind::Email => "emailAddress",
        }
    }

    fn oid(self) -> ObjectIdentifier {
        match self {
            AttributeKind::Country => rfc4519::C,
            AttributeKind::State => rfc4519::ST,
            AttributeKind::Locality => rfc4519::L,
            AttributeKind::Organization => rfc4519::O,
            AttributeKind::OrganizationalUnit => rfc4519::OU,
            AttributeKind::Email => rfc3280::EMAIL_ADDRESS,
        }
    }

    pub(crate) fn from_oid(oid: ObjectIdentifier) -> Option<AttributeKind> {
        [
            AttributeKind::Country,
            AttributeKind::State,
            AttributeKind::Locality,
            AttributeKind::Organization,
            AttributeKind::OrganizationalUnit,
            AttributeKind::Email,
        ]
        .into_iter()
        .find(|kind| kind.oid() == oid)
    }

    /// RFC 5280's upper bound (`ub-…`) in characters.
    fn chars_max(self) -> usize {
        match self {
            AttributeKind::Country => 2,
            AttributeKind::State | AttributeKind::Locality => 128,
            AttributeKind::Organization | AttributeKind::OrganizationalUnit => 64,
            AttributeKind::Email => EMAIL_CHARS_MAX,
        }
    }
}

/// A certificate subject: a common name and up to [`ATTRIBUTES_MAX`] attributes, each value
/// checked. Encoded as one attribute per RDN in the order `C, ST, L, O, OU, CN, emailAddress`,
/// attributes of one kind in the order given, so that the same name always has the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SubjectName {
    common_name: String,
    attributes: Vec<(AttributeKind, String)>,
}

impl SubjectName {
    /// A subject named `common_name` (1 to 64 characters, no control characters) with
    /// `attributes` (each checked as its kind says).
    pub fn new(common_name: &str, attributes: &[(AttributeKind, &str)]) -> Result<SubjectName, InputError> {
        check_text("the common name", common_name, COMMON_NAME_CHARS_MAX)?;
        if attributes.len() > ATTRIBUTES_MAX {
            return Err(InputError::TooMany { field: "name attributes", count: attributes.len(), max: ATTRIBUTES_MAX });
        }
        let mut checked = Vec::with_capacity(attributes.len());
        for (kind, value) in attributes {
            checked.push((*kind, check_attribute(*kind, value)?));
        }
        checked.sort_by_key(|(kind, _)| *kind); // stable: one kind keeps the order given
        Ok(SubjectName { common_name: common_name.to_owned(), attributes: checked })
    }

    /// The common name.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// The attributes besides the common name, in encoding order.
    pub fn attributes(&self) -> &[(AttributeKind, String)] {
        &self.attributes
    }

    /// The X.501 name.
    pub fn to_name(&self) -> Result<Name, InputError> {
        let mut rdns = Vec::with_capacity(self.attributes.len() + 1);
        let (before, after): (Vec<_>, Vec<_>) =
            self.attributes.iter().partition(|(kind, _)| *kind != AttributeKind::Email);
        for (kind, value) in before {
            rdns.push(rdn(kind.oid(), attribute_value(*kind, value)?)?);
        }
        rdns.push(rdn(rfc4519::CN, Any::encode_from(&Utf8StringRef::new(&self.common_name)?)?)?);
        for (kind, value) in after {
            rdns.push(rdn(kind.oid(), attribute_value(*kind, value)?)?);
        }
        Ok(Name::from(rdns))
    }

    /// Read a name this CA could have written: single-attribute RDNs, one common name, the
    /// supported attributes as `UTF8String`, `PrintableString` or `IA5String`.
    pub(crate) fn from_name(name: &Name) -> Result<SubjectName, InputError> {
        let mut common_name = None;
        let mut attributes = Vec::new();
        if name.0.len() > ATTRIBUTES_MAX + 1 {
            return Err(InputError::TooMany { field: "name attributes", count: name.0.len(), max: ATTRIBUTES_MAX + 1 });
        }
        for rdn in name.0.iter() {
            let [atv] = rdn.0.as_slice() else {
                return Err(InputError::MultiValuedRdn);
            };
            let value = string_value(&atv.value)?;
            if atv.oid == rfc4519::CN {
                if common_name.replace(value).is_some() {
                    return Err(InputError::Duplicate { field: "the name", value: "CN".into() });
                }
            } else {
                let kind = AttributeKind::from_oid(atv.oid)
                    .ok_or_else(|| InputError::UnknownAttribute(atv.oid.to_string()))?;
                attributes.push((kind, value));
            }
        }
        let common_name = common_name.ok_or(InputError::Empty { field: "the common name" })?;
        let borrowed: Vec<(AttributeKind, &str)> = attributes.iter().map(|(k, v)| (*k, v.as_str())).collect();
        SubjectName::new(&common_name, &borrowed)
    }
}

fn rdn(oid: ObjectIdentifier, value: Any) -> Result<RelativeDistinguishedName, InputError> {
    let mut set = SetOfVec::new();
    set.insert(AttributeTypeAndValue { oid, value })?;
    Ok(RelativeDistinguishedName::from(set))
}

fn attribute_value(kind: AttributeKind, value: &str) -> Result<Any, InputError> {
    Ok(match kind {
        AttributeKind::Country => Any::encode_from(&PrintableString::new(value)?)?,
        AttributeKind::Email => Any::encode_from(&Ia5String::new(value)?)?,
        _ => Any::encode_from(&Utf8StringRef::new(value)?)?,
    })
}

/// The text of a directory string this CA reads (a bounded value: the name's length is bounded
/// by the request's).
fn string_value(value: &Any) -> Result<String, InputError> {
    let text = match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => std::str::from_utf8(value.value()).ok(),
        _ => None,
    };
    text.map(str::to_owned).ok_or(InputError::BadCharacter {
        field: "a name attribute",
        reason: "not a UTF8String, PrintableString or IA5String",
    })
}

fn check_attribute(kind: AttributeKind, value: &str) -> Result<String, InputError> {
    match kind {
        AttributeKind::Country => {
            if value.len() != 2 || !value.bytes().all(|byte| byte.is_ascii_uppercase()) {
                return Err(InputError::BadCharacter { field: "C", reason: "not two upper-case letters" });
            }
            Ok(value.to_owned())
        }
        AttributeKind::Email => Ok(EmailAddress::new(value)?.0),
        _ => {
            check_text(kind.short_name(), value, kind.chars_max())?;
            Ok(value.to_owned())
        }
    }
}

/// Non-empty, at most `max` characters, no control characters (they make names display as
/// something else).
fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), InputError> {
    if value.is_empty() {
        return Err(InputError::Empty { field });
    }
    let len = value.chars().count();
    if len > max {
        return Err(InputError::TooLong { field, len, max });
    }
    if value.chars().any(char::is_control) {
        return Err(InputError::BadCharacter { field, reason: "a control character" });
    }
    Ok(())
}

/// A DNS host name: ASCII letters, digits and hyphens in dot-separated labels of 1 to 63
/// characters, no hyphen at either end of a label, at most 253 characters, no final dot, no
/// wildcard, and a last label not all digits (that is an IP address). Kept in lower case (DNS
/// names are case-insensitive; one spelling keeps the encoding unique). Internationalised names
/// go in their `xn--` form.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DnsName(String);

impl DnsName {
    /// Check `name` and keep it in lower case.
    pub fn new(name: &str) -> Result<DnsName, InputError> {
        check_dns("a DNS name", name)?;
        Ok(DnsName(name.to_ascii_lowercase()))
    }

    /// The name, in lower case.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_dns(field: &'static str, name: &str) -> Result<(), InputError> {
    if name.is_empty() {
        return Err(InputError::Empty { field });
    }
    if name.len() > DNS_NAME_CHARS_MAX {
        return Err(InputError::TooLong { field, len: name.chars().count(), max: DNS_NAME_CHARS_MAX });
    }
    if name.rsplit('.').next().is_some_and(|last| last.bytes().all(|byte| byte.is_ascii_digit())) {
        // No top-level domain is numeric: this is an IPv4 address, which is not a DNS name.
        return Err(InputError::BadCharacter { field, reason: "a numeric last label (an IP address?)" });
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > DNS_LABEL_CHARS_MAX {
            return Err(InputError::BadCharacter { field, reason: "a label that is empty or over 63 characters" });
        }
        if !label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-') {
            return Err(InputError::BadCharacter { field, reason: "only letters, digits, hyphens and dots" });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(InputError::BadCharacter { field, reason: "a label that starts or ends with a hyphen" });
        }
    }
    Ok(())
}

/// An e-mail address `local@domain` (RFC 5321 mailbox): the local part a dot-atom of at most 64
/// ASCII characters, the domain a DNS name (kept in lower case), at most 254 characters in all.
/// Quoted local parts and address literals are not accepted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Check `address`; its domain is kept in lower case.
    pub fn new(address: &str) -> Result<EmailAddress, InputError> {
        const FIELD: &str = "an e-mail address";
        if address.is_empty() {
            return Err(InputError::Empty { field: FIELD });
        }
        let len = address.chars().count();
        if len > EMAIL_CHARS_MAX {
            return Err(InputError::TooLong { field: FIELD, len, max: EMAIL_CHARS_MAX });
        }
        let (local, domain) =
            address.rsplit_once('@').ok_or(InputError::BadCharacter { field: FIELD, reason: "no '@'" })?;
        if local.is_empty() || local.len() > EMAIL_LOCAL_CHARS_MAX {
            return Err(InputError::BadCharacter { field: FIELD, reason: "a local part of 1 to 64 characters" });
        }
        let atext = |byte: u8| byte.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&byte);
        if local.split('.').any(|atom| atom.is_empty() || !atom.bytes().all(atext)) {
            return Err(InputError::BadCharacter { field: FIELD, reason: "the local part is not a dot-atom" });
        }
        check_dns(FIELD, domain)?;
        Ok(EmailAddress(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The subject alternative names: DNS names and e-mail addresses, at most [`ALT_NAMES_MAX`] in
/// all, none twice. Encoded DNS names first, then e-mail addresses, each in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AltNames {
    dns: Vec<DnsName>,
    email: Vec<EmailAddress>,
}

impl AltNames {
    /// Check each name and the bounds.
    pub fn new(dns: &[&str], email: &[&str]) -> Result<AltNames, InputError> {
        let count = dns.len().saturating_add(email.len());
        if count > ALT_NAMES_MAX {
            return Err(InputError::TooMany { field: "subject alternative names", count, max: ALT_NAMES_MAX });
        }
        let dns = dns.iter().map(|name| DnsName::new(name)).collect::<Result<Vec<_>, _>>()?;
        let email = email.iter().map(|address| EmailAddress::new(address)).collect::<Result<Vec<_>, _>>()?;
        AltNames::from_checked(dns, email)
    }

    pub(crate) fn from_checked(dns: Vec<DnsName>, email: Vec<EmailAddress>) -> Result<AltNames, InputError> {
        let count = dns.len().saturating_add(email.len());
        if count > ALT_NAMES_MAX {
            return Err(InputError::TooMany { field: "subject alternative names", count, max: ALT_NAMES_MAX });
        }
        if let Some(name) = first_duplicate(&dns) {
            return Err(InputError::Duplicate { field: "the DNS names", value: name.0.clone() });
        }
        if let Some(address) = first_duplicate(&email) {
            return Err(InputError::Duplicate { field: "the e-mail addresses", value: address.0.clone() });
        }
        Ok(AltNames { dns, email })
    }

    /// The DNS names.
    pub fn dns(&self) -> &[DnsName] {
        &self.dns
    }

    /// The e-mail addresses.
    pub fn email(&self) -> &[EmailAddress] {
        &self.email
    }

    /// No names at all.
    pub fn is_empty(&self) -> bool {
        self.dns.is_empty() && self.email.is_empty()
    }

    pub(crate) fn to_general_names(&self) -> Result<Vec<GeneralName>, InputError> {
        let mut names = Vec::with_capacity(self.dns.len() + self.email.len());
        for name in &self.dns {
            names.push(GeneralName::DnsName(Ia5String::new(&name.0)?));
        }
        for address in &self.email {
            names.push(GeneralName::Rfc822Name(Ia5String::new(&address.0)?));
        }
        Ok(names)
    }
}

/// The first item that appears twice (the lists are at most [`ALT_NAMES_MAX`] long).
fn first_duplicate<T: PartialEq>(items: &[T]) -> Option<&T> {
    items.iter().enumerate().find(|(i, item)| items[..*i].contains(item)).map(|(_, item)| item)
}

/// At most 64 characters of an unrecognised input, for an error message.
fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}
