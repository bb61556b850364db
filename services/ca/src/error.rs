//! Why an input was refused. Every refusal names the field and the bound it broke; none is a
//! panic.

/// Why a certificate, a CRL or one of their fields was not built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A serial number of zero (RFC 5280 §4.1.2.2 wants a positive integer).
    #[error("the serial number is zero; it must be positive")]
    SerialZero,
    /// A serial number whose DER value would exceed 20 octets.
    #[error("the serial number takes {octets} octets; at most 20 are allowed")]
    SerialTooLong {
        /// Octets of the value as given, leading zeros stripped.
        octets: usize,
    },
    /// A time X.509 cannot express (after the year 9999).
    #[error("the time {seconds} s after 1970 is not representable in X.509")]
    TimeOutOfRange {
        /// Seconds since the Unix epoch.
        seconds: u64,
    },
    /// `notAfter` (or `nextUpdate`) not after `notBefore` (or `thisUpdate`).
    #[error("{field}: {end} is not after {start} (seconds since 1970)")]
    TimeOrder {
        /// Which pair of times.
        field: &'static str,
        /// The earlier time.
        start: u64,
        /// The time that should be later.
        end: u64,
    },
    /// A name attribute or alternative name that is empty.
    #[error("{field} is empty")]
    Empty {
        /// The field.
        field: &'static str,
    },
    /// A value longer than its bound.
    #[error("{field} is {len} characters long; at most {max} are allowed")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length in characters.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A value with a character its field does not allow (control characters anywhere; for
    /// DNS names and e-mail addresses anything outside their ASCII syntax).
    #[error("{field} has a character that is not allowed: {reason}")]
    BadCharacter {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// More items than a list allows.
    #[error("{count} {field}; at most {max} are allowed")]
    TooMany {
        /// The list.
        field: &'static str,
        /// How many were given.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// The same item twice in a list.
    #[error("{field} lists {value} twice")]
    Duplicate {
        /// The list.
        field: &'static str,
        /// The repeated item.
        value: String,
    },
    /// A name attribute this CA does not put in certificates.
    #[error("the name attribute {0} is not supported (supported: C, ST, L, O, OU, emailAddress)")]
    UnknownAttribute(String),
    /// A name with an RDN of more than one attribute (`CN=a+O=b`), which this CA never writes.
    #[error("a name has an RDN with more than one attribute")]
    MultiValuedRdn,
    /// A public key that does not decode as its type says.
    #[error("the {kind} public key is not valid: {reason}")]
    BadKey {
        /// The key type.
        kind: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A revocation time after the CRL's `thisUpdate`.
    #[error("a serial was revoked at {revoked} s, after the CRL's thisUpdate {this_update} s")]
    RevokedInFuture {
        /// The revocation time.
        revoked: u64,
        /// The CRL's `thisUpdate`.
        this_update: u64,
    },
    /// A signature that is not as long as the root's modulus.
    #[error("a signature of {len} bytes; the root's RSA modulus has {expected}")]
    SignatureLength {
        /// Its length.
        len: usize,
        /// The modulus's length in bytes.
        expected: usize,
    },
    /// The DER encoder refused a value (a bound of the encoder; should not happen within this
    /// crate's own bounds).
    #[error("DER encoding: {0}")]
    Encoding(String),
}

impl From<der::Error> for InputError {
    fn from(error: der::Error) -> Self {
        InputError::Encoding(error.to_string())
    }
}

/// Why a root certificate was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    /// Larger than [`crate::ROOT_BYTES_MAX`].
    #[error("the root certificate is {len} bytes; at most {max} are read")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Not PEM or DER of an X.509 certificate.
    #[error("the root certificate does not decode: {0}")]
    Decode(String),
    /// Decodes, but is not a root this CA can issue under.
    #[error("the root certificate is not usable: {0}")]
    Unusable(&'static str),
    /// Its RSA key is not the cluster's threshold key.
    #[error("the root certificate's RSA key is not the cluster's threshold RSA key")]
    KeyMismatch,
}

/// Why a PKCS#10 certification request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Larger than [`crate::CSR_BYTES_MAX`].
    #[error("the request is {len} bytes; at most {max} are read")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Not PEM (`CERTIFICATE REQUEST`) or DER of a PKCS#10 request.
    #[error("the request does not decode: {0}")]
    Decode(String),
    /// A key type this CA does not certify from a request.
    #[error("the request's public key algorithm {0} is not supported (Ed25519 and ECDSA P-256 are)")]
    UnsupportedKey(String),
    /// An X25519 key cannot sign, so it cannot be in a self-signed request.
    #[error("an X25519 key cannot sign its request; send the key itself and confirm it by decryption")]
    X25519Request,
    /// A signature algorithm that does not fit the key.
    #[error("the request's signature algorithm {0} does not fit its key")]
    SignatureAlgorithm(String),
    /// The self-signature does not verify.
    #[error("the request's signature does not verify")]
    BadSignature,
    /// A request attribute other than the extension request.
    #[error("the request attribute {0} is not supported (only extensionRequest is read)")]
    UnsupportedAttribute(String),
    /// A subject alternative name other than a DNS name or an e-mail address.
    #[error("a requested subject alternative name is neither a DNS name nor an e-mail address")]
    UnsupportedAltName,
    /// The subject is not one this CA puts in certificates (see [`crate::SubjectName`]).
    #[error("the request's subject: {0}")]
    Subject(InputError),
    /// The requested key or alternative names break the profile's bounds.
    #[error("the request: {0}")]
    Input(InputError),
}
