//! Text files a person can read and anyone with the cluster file can verify offline: the ticket
//! (`.bti`), the receipt (`.bri`) and the event record.
//!
//! Each file is INI-like: `[section]` headers, then `key=value` lines. Rules:
//! - every field the cluster (or the intermediary) signed is in the file, in one canonical
//!   spelling: decimal numbers without leading zeros, lowercase hex, algorithm names as listed;
//!   strings escaped (`\\`, `\n`, `\r`, `\t`, `\u{…}` for other control characters and for a
//!   space at either end). Parsing refuses any other spelling, so a file that differs from the
//!   rendered one in any signed character fails to parse or to verify;
//! - every known key appears exactly once in its section; unknown keys and sections are ignored,
//!   as are blank lines and comment lines (starting with `;` or `#`); CRLF line ends and a
//!   leading byte-order mark are tolerated;
//! - `*_string` fields are [`format_time`] of their number and must match it;
//! - a ticket's `[proof]` has no time of its own: the epoch's agreed time *is* the ticket's
//!   `server_time` ([`EpochProof::verify`] insists on it). An event's `[proof]` carries
//!   `epoch_time`.

use std::collections::HashMap;

use blsttc::PublicKey;

use crate::proof::{EpochProof, ProofError};
use crate::records::{
    EventId, EventRecord, EventTerms, Receipt, Signed, Ticket, DESCRIPTION_MAX, DIGEST_LEN, FIELD_MAX,
};
use crate::service::format_time;
use crate::stream::{Aead, HashAlg};

/// The `format_version` of receipts (signed by an intermediary, unchanged since the first).
pub const FORMAT_VERSION: &str = "1";
/// The `format_version`s of the files the cluster signs (tickets, events): their proof's format,
/// [`crate::proof::FORMAT_BISTRO_TREE`] (1) or [`crate::proof::FORMAT_CERTIFICATE`] (2). Files are
/// written in format 2; format 1 files keep verifying under their own rules.
pub const SIGNED_FORMATS: [&str; 2] = ["1", "2"];
/// The signature suite of the cluster's signatures.
pub const SIGNATURE_SUITE: &str = "BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_";
/// The only hash of encrypted uploads (receipts).
pub const ENC_HASH_ALGORITHM: &str = "sha256";
/// Longest Merkle path in a proof.
const PATH_MAX: usize = 32;

/// Why a text file was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// A line that is neither a section header, `key=value`, a comment nor blank.
    #[error("line {line}: {reason}")]
    Syntax {
        /// The line number, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A required section is missing.
    #[error("there is no [{0}] section")]
    MissingSection(&'static str),
    /// A section appears twice.
    #[error("line {line}: the [{section}] section appears a second time")]
    DuplicateSection {
        /// Where it appears again.
        line: usize,
        /// The section.
        section: String,
    },
    /// A required key is missing.
    #[error("the [{section}] section has no {key}= line")]
    MissingKey {
        /// The section.
        section: &'static str,
        /// The key.
        key: &'static str,
    },
    /// A key appears twice in its section.
    #[error("line {line}: {key}= appears a second time (first on line {first})")]
    DuplicateKey {
        /// Where it appears again.
        line: usize,
        /// Where it appeared first.
        first: usize,
        /// The key.
        key: &'static str,
    },
    /// A value that is not valid for its key.
    #[error("line {line}: {key}= {reason}")]
    Value {
        /// The line number.
        line: usize,
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The file belongs to another cluster.
    #[error("this file is of cluster {found}, not of this cluster ({expected})")]
    WrongCluster {
        /// The cluster id in the file.
        found: String,
        /// The cluster id expected.
        expected: String,
    },
    /// The cluster's signature does not verify on the file's record.
    #[error("{0}: the file was altered or was not signed by this cluster")]
    Proof(#[from] ProofError),
    /// The intermediary's signature does not verify on the receipt.
    #[error("the intermediary's signature does not verify on this receipt: the file was altered or forged")]
    ReceiptSignature,
}

// ---------------------------------------------------------------------------------------------
// Names of algorithms
// ---------------------------------------------------------------------------------------------

/// The name of a file hash in text files ([`HashAlg::name`]).
pub fn hash_name(hash: HashAlg) -> &'static str {
    hash.name()
}

/// The file hash named `name`.
pub fn parse_hash_name(name: &str) -> Option<HashAlg> {
    name.parse().ok()
}

/// The name of an AEAD in text files ([`Aead::name`]).
pub fn aead_name(aead: Aead) -> &'static str {
    aead.name()
}

/// The AEAD named `name`.
pub fn parse_aead_name(name: &str) -> Option<Aead> {
    name.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Escaping
// ---------------------------------------------------------------------------------------------

fn needs_code(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// `text` as one line: backslash, line breaks, tabs and other control characters escaped, and a
/// space at either end written `\u{20}` (so that no editor trims it silently).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' ' if i == 0 || i == last => out.push_str("\\u{20}"),
            c if needs_code(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// The text [`escape`] made `escaped` from; refuses unknown escapes and non-canonical spellings.
pub fn unescape(escaped: &str) -> Result<String, String> {
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('u') => {
                if chars.next() != Some('{') {
                    return Err("has \\u without {".into());
                }
                let code: String = chars.by_ref().take_while(|c| *c != '}').collect();
                let value = (code.len() <= 6)
                    .then(|| u32::from_str_radix(&code, 16).ok())
                    .flatten()
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("has an invalid escape \\u{{{code}}}"))?;
                out.push(value);
            }
            Some(other) => return Err(format!("has an unknown escape \\{other}")),
            None => return Err("ends with a lone backslash".into()),
        }
    }
    if escape(&out) != escaped {
        return Err("is not escaped canonically (write it as bsubmit does)".into());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The document
// ---------------------------------------------------------------------------------------------

struct Entry {
    line: usize,
    key: String,
    value: String,
}

struct Document {
    sections: HashMap<String, (usize, Vec<Entry>)>,
}

fn is_key(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Document {
    fn parse(text: &str) -> Result<Document, TextError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut sections: HashMap<String, (usize, Vec<Entry>)> = HashMap::new();
        let mut current: Option<String> = None;
        for (i, raw) in text.split('\n').enumerate() {
            let line = i + 1;
            let content = raw.strip_suffix('\r').unwrap_or(raw);
            let trimmed = content.trim();
            if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
                continue;
            }
            if let Some(name) = trimmed.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
                if !is_key(name) {
                    return Err(TextError::Syntax { line, reason: format!("{trimmed:?} is not a section header") });
                }
                if sections.contains_key(name) {
                    return Err(TextError::DuplicateSection { line, section: name.to_string() });
                }
                sections.insert(name.to_string(), (line, Vec::new()));
                current = Some(name.to_string());
                continue;
            }
            let Some((key, value)) = content.split_once('=') else {
                return Err(TextError::Syntax {
                    line,
                    reason: format!("{} is not key=value, a [section], a comment or blank", shorten(content)),
                });
            };
            if !is_key(key) {
                return Err(TextError::Syntax {
                    line,
                    reason: format!("{:?} is not a key (lowercase letters, digits and _ only)", shorten(key)),
                });
            }
            let Some(section) = current.as_ref().and_then(|name| sections.get_mut(name)) else {
                return Err(TextError::Syntax { line, reason: format!("{key}= comes before any [section]") });
            };
            section.1.push(Entry { line, key: key.to_string(), value: value.to_string() });
        }
        Ok(Document { sections })
    }

    fn section(&self, name: &'static str) -> Result<Section<'_>, TextError> {
        let (_, entries) = self.sections.get(name).ok_or(TextError::MissingSection(name))?;
        Ok(Section { name, entries })
    }
}

fn shorten(text: &str) -> String {
    let short: String = text.chars().take(60).collect();
    if short.len() < text.len() {
        format!("{short:?}…")
    } else {
        format!("{short:?}")
    }
}

struct Section<'a> {
    name: &'static str,
    entries: &'a [Entry],
}

/// A value and the line it is on.
struct Value<'a> {
    line: usize,
    key: &'static str,
    text: &'a str,
}

impl Section<'_> {
    fn get(&self, key: &'static str) -> Result<Value<'_>, TextError> {
        let mut found = self.entries.iter().filter(|entry| entry.key == key);
        let first = found.next().ok_or(TextError::MissingKey { section: self.name, key })?;
        if let Some(again) = found.next() {
            return Err(TextError::DuplicateKey { line: again.line, first: first.line, key });
        }
        Ok(Value { line: first.line, key, text: &first.value })
    }
}

impl Value<'_> {
    fn error(&self, reason: impl Into<String>) -> TextError {
        TextError::Value { line: self.line, key: self.key, reason: reason.into() }
    }

    fn number(&self) -> Result<u64, TextError> {
        let text = self.text;
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.error(format!("must be a decimal number, not {}", shorten(text))));
        }
        if text.len() > 1 && text.starts_with('0') {
            return Err(self.error(format!("must be written without leading zeros, not {}", shorten(text))));
        }
        text.parse().map_err(|_| self.error(format!("{text} is too large")))
    }

    fn hex<const N: usize>(&self) -> Result<[u8; N], TextError> {
        let bytes = hex_bytes(self.text).map_err(|reason| self.error(reason))?;
        bytes
            .try_into()
            .map_err(|bytes: Vec<u8>| self.error(format!("must be {} hex digits, not {}", 2 * N, 2 * bytes.len())))
    }

    fn string(&self, max: usize) -> Result<String, TextError> {
        let text = unescape(self.text).map_err(|reason| self.error(reason))?;
        if text.len() > max {
            return Err(self.error(format!("is {} bytes long, at most {max} are allowed", text.len())));
        }
        Ok(text)
    }

    fn exactly(&self, expected: &str) -> Result<(), TextError> {
        if self.text != expected {
            return Err(self.error(format!("must be {expected}, not {}", shorten(self.text))));
        }
        Ok(())
    }

    fn time_string(&self, ms: u64) -> Result<(), TextError> {
        let expected = format_time(ms);
        if self.text != expected {
            return Err(self.error(format!("is {} but the time it names is {expected}", shorten(self.text))));
        }
        Ok(())
    }

    fn hash(&self) -> Result<HashAlg, TextError> {
        parse_hash_name(self.text).ok_or_else(|| {
            self.error(format!(
                "must be {} or {}, not {}",
                hash_name(HashAlg::Sha256),
                hash_name(HashAlg::Blake3),
                shorten(self.text)
            ))
        })
    }

    fn aead(&self) -> Result<Aead, TextError> {
        parse_aead_name(self.text).ok_or_else(|| {
            self.error(format!(
                "must be {} or {}, not {}",
                aead_name(Aead::XChaCha20Poly1305),
                aead_name(Aead::Aes256Gcm),
                shorten(self.text)
            ))
        })
    }

    fn event(&self) -> Result<EventId, TextError> {
        Ok(EventId(self.hex()?))
    }

    fn path(&self) -> Result<Vec<[u8; 32]>, TextError> {
        if self.text.is_empty() {
            return Ok(Vec::new());
        }
        let parts: Vec<&str> = self.text.split(',').collect();
        if parts.len() > PATH_MAX {
            return Err(self.error(format!("has {} entries, at most {PATH_MAX} are allowed", parts.len())));
        }
        parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let bytes = hex_bytes(part).map_err(|reason| self.error(format!("entry {}: {reason}", i + 1)))?;
                bytes.try_into().map_err(|bytes: Vec<u8>| {
                    self.error(format!("entry {}: must be 64 hex digits, not {}", i + 1, 2 * bytes.len()))
                })
            })
            .collect()
    }
}

/// Lowercase hex to bytes; refuses uppercase, so each byte string has one spelling.
fn hex_bytes(text: &str) -> Result<Vec<u8>, String> {
    if let Some(bad) = text.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(format!("must be lowercase hex digits; {bad:?} is not one"));
    }
    hex::decode(text).map_err(|_| format!("has an odd number ({}) of hex digits", text.len()))
}

fn check_version(section: &Section<'_>) -> Result<(), TextError> {
    section.get("format_version")?.exactly(FORMAT_VERSION)
}

/// The proof format a cluster-signed file's `format_version` names.
fn signed_format(section: &Section<'_>) -> Result<u8, TextError> {
    let value = section.get("format_version")?;
    match SIGNED_FORMATS.iter().position(|f| *f == value.text) {
        Some(at) => Ok(at as u8 + 1),
        None => Err(value.error(format!("must be 1 or 2, not {}", shorten(value.text)))),
    }
}

fn check_cluster(found: &[u8; 32], expected: &[u8; 32]) -> Result<(), TextError> {
    if found != expected {
        return Err(TextError::WrongCluster { found: hex::encode(found), expected: hex::encode(expected) });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

fn field(out: &mut String, key: &str, value: impl std::fmt::Display) {
    out.push_str(key);
    out.push('=');
    out.push_str(&value.to_string());
    out.push('\n');
}

/// A box of `;` around `lines`, as the bistro's files end with.
fn comment_box(out: &mut String, lines: &[&str]) {
    let width = lines.iter().map(|line| line.chars().count()).max().unwrap_or(0);
    let rule = ";".repeat(width + 4);
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    for line in lines {
        let pad = width - line.chars().count();
        out.push_str(&format!("; {line}{} ;\n", " ".repeat(pad)));
    }
    out.push_str(&rule);
    out.push('\n');
}

fn render_proof(out: &mut String, proof: &EpochProof, with_time: bool) {
    out.push_str("\n[proof]\n");
    field(out, "epoch", proof.epoch);
    if with_time {
        field(out, "epoch_time", proof.time_ms);
    }
    field(out, "leaf_index", proof.index);
    field(out, "leaf_count", proof.count);
    let path: Vec<String> = proof.path.iter().map(hex::encode).collect();
    field(out, "path", path.join(","));
    field(out, "signature_suite", SIGNATURE_SUITE);
    field(out, "signature", hex::encode(proof.signature));
}

/// `time_ms` is the epoch's agreed time (from elsewhere in the file) unless `[proof]` has
/// `epoch_time`.
fn parse_proof(section: &Section<'_>, format: u8, time_ms: Option<u64>) -> Result<EpochProof, TextError> {
    let time_ms = match time_ms {
        Some(time_ms) => time_ms,
        None => section.get("epoch_time")?.number()?,
    };
    section.get("signature_suite")?.exactly(SIGNATURE_SUITE)?;
    Ok(EpochProof {
        format,
        epoch: section.get("epoch")?.number()?,
        time_ms,
        index: section.get("leaf_index")?.number()?,
        count: section.get("leaf_count")?.number()?,
        path: section.get("path")?.path()?,
        signature: section.get("signature")?.hex()?,
    })
}

// ---------------------------------------------------------------------------------------------
// Tickets
// ---------------------------------------------------------------------------------------------

/// The ticket file (`.bti`) of `ticket`, signed by the cluster `cluster` with `proof`.
pub fn render_ticket(cluster: &[u8; 32], ticket: &Ticket, proof: &EpochProof) -> String {
    let mut out = String::new();
    out.push_str("; Fides bistro: a timestamped upload ticket, signed by the cluster below.\n");
    out.push_str("; Check it, and a file against it, with: bsubmit verify <this file> [<the file>]\n");
    out.push_str("\n[ticket]\n");
    field(&mut out, "format_version", proof.format);
    field(&mut out, "cluster_id", hex::encode(cluster));
    field(&mut out, "evid", ticket.event);
    field(&mut out, "ticket_id", ticket.ticket);
    field(&mut out, "user_email", escape(&ticket.contact));
    field(&mut out, "hash_algorithm", hash_name(ticket.hash));
    field(&mut out, "hash_value", hex::encode(ticket.digest));
    field(&mut out, "file_size", ticket.size);
    field(&mut out, "file_name", escape(&ticket.file_name));
    field(&mut out, "server_time", ticket.time_ms);
    field(&mut out, "server_time_string", format_time(ticket.time_ms));
    render_proof(&mut out, proof, false);
    comment_box(
        &mut out,
        &[
            "Do NOT delete this file.  This ticket file is PROOF",
            "that your submission with the above hash value was",
            "received by the cluster at the time indicated by the",
            "server_time_string above: the cluster signed it (see",
            "[proof]) and anyone with the cluster file can check",
            "it.  Also, please do NOT alter this file.",
        ],
    );
    out
}

/// The cluster id, ticket and proof in a ticket file (not verified: see [`verify_ticket_text`]).
pub fn parse_ticket(text: &str) -> Result<([u8; 32], Ticket, EpochProof), TextError> {
    let document = Document::parse(text)?;
    let section = document.section("ticket")?;
    let format = signed_format(&section)?;
    let cluster = section.get("cluster_id")?.hex()?;
    let hash = section.get("hash_algorithm")?.hash()?;
    let time_ms = section.get("server_time")?.number()?;
    section.get("server_time_string")?.time_string(time_ms)?;
    let ticket = Ticket {
        event: section.get("evid")?.event()?,
        ticket: section.get("ticket_id")?.number()?,
        hash,
        digest: section.get("hash_value")?.hex::<DIGEST_LEN>()?,
        size: section.get("file_size")?.number()?,
        contact: section.get("user_email")?.string(FIELD_MAX)?,
        file_name: section.get("file_name")?.string(FIELD_MAX)?,
        time_ms,
    };
    let proof = parse_proof(&document.section("proof")?, format, Some(time_ms))?;
    Ok((cluster, ticket, proof))
}

/// Parse a ticket file and verify it: of cluster `cluster`, signed with the cluster's signing key
/// `public`.
pub fn verify_ticket_text(
    text: &str,
    cluster: &[u8; 32],
    public: &PublicKey,
) -> Result<(Ticket, EpochProof), TextError> {
    let (found, ticket, proof) = parse_ticket(text)?;
    check_cluster(&found, cluster)?;
    proof.verify(cluster, public, &Signed::Ticket(ticket.clone()))?;
    Ok((ticket, proof))
}

// ---------------------------------------------------------------------------------------------
// Receipts
// ---------------------------------------------------------------------------------------------

/// The receipt file (`.bri`) of `receipt`, with the intermediary's `signature`.
pub fn render_receipt(cluster: &[u8; 32], receipt: &Receipt, signature: &[u8; 64]) -> String {
    let mut out = String::new();
    out.push_str("; Fides bistro: an intermediary's receipt for an encrypted upload.\n");
    out.push_str("; Check it with: bsubmit verify <this file>\n");
    out.push_str("\n[receipt]\n");
    field(&mut out, "format_version", FORMAT_VERSION);
    field(&mut out, "cluster_id", hex::encode(cluster));
    field(&mut out, "receipt_id", receipt.receipt_id);
    field(&mut out, "evid", receipt.event);
    field(&mut out, "ticket_id", receipt.ticket);
    field(&mut out, "intermediary_key", hex::encode(receipt.intermediary));
    field(&mut out, "enc_hash_algorithm", ENC_HASH_ALGORITHM);
    field(&mut out, "enc_file_hash_value", hex::encode(receipt.upload_hash));
    field(&mut out, "encrypted_file_size", receipt.upload_size);
    field(&mut out, "server_time", receipt.time_ms);
    field(&mut out, "server_time_string", format_time(receipt.time_ms));
    out.push_str("\n[signature]\n");
    field(&mut out, "ed25519", hex::encode(signature));
    comment_box(
        &mut out,
        &[
            "Do NOT delete this file.  This receipt file is",
            "PROOF that your encrypted submission with the above",
            "hash value was received by an intermediary (identified",
            "by intermediary_key above) at the time indicated by",
            "the server_time_string above (the intermediary's own",
            "clock).  Also, please do NOT alter this file.",
        ],
    );
    out
}

/// The cluster id, receipt and signature in a receipt file (not verified: see
/// [`verify_receipt_text`]).
pub fn parse_receipt(text: &str) -> Result<([u8; 32], Receipt, [u8; 64]), TextError> {
    let document = Document::parse(text)?;
    let section = document.section("receipt")?;
    check_version(&section)?;
    let cluster = section.get("cluster_id")?.hex()?;
    section.get("enc_hash_algorithm")?.exactly(ENC_HASH_ALGORITHM)?;
    let time_ms = section.get("server_time")?.number()?;
    section.get("server_time_string")?.time_string(time_ms)?;
    let receipt = Receipt {
        event: section.get("evid")?.event()?,
        ticket: section.get("ticket_id")?.number()?,
        upload_hash: section.get("enc_file_hash_value")?.hex()?,
        upload_size: section.get("encrypted_file_size")?.number()?,
        intermediary: section.get("intermediary_key")?.hex()?,
        receipt_id: section.get("receipt_id")?.number()?,
        time_ms,
    };
    let signature = document.section("signature")?.get("ed25519")?.hex()?;
    Ok((cluster, receipt, signature))
}

/// Parse a receipt file and verify it: of cluster `cluster`, signed by the intermediary it names.
pub fn verify_receipt_text(text: &str, cluster: &[u8; 32]) -> Result<Receipt, TextError> {
    let (found, receipt, signature) = parse_receipt(text)?;
    check_cluster(&found, cluster)?;
    if !receipt.verify(cluster, &signature) {
        return Err(TextError::ReceiptSignature);
    }
    Ok(receipt)
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// The event file of `record`, signed by the cluster `cluster` with `proof`.
pub fn render_event(cluster: &[u8; 32], record: &EventRecord, proof: &EpochProof) -> String {
    let terms = &record.terms;
    let mut out = String::new();
    out.push_str("; Fides bistro: an upload event, signed by the cluster below.\n");
    out.push_str("\n[event]\n");
    field(&mut out, "format_version", proof.format);
    field(&mut out, "cluster_id", hex::encode(cluster));
    field(&mut out, "evid", record.event);
    field(&mut out, "description", escape(&terms.description));
    field(&mut out, "deadline", terms.deadline_ms);
    field(&mut out, "deadline_string", format_time(terms.deadline_ms));
    field(&mut out, "owner_key", hex::encode(terms.owner));
    field(&mut out, "hash_algorithm", hash_name(terms.hash));
    field(&mut out, "aead", aead_name(terms.aead));
    field(&mut out, "transfer_window_ms", terms.transfer_window_ms);
    field(&mut out, "nonce", terms.nonce);
    field(&mut out, "created", record.created_ms);
    field(&mut out, "created_string", format_time(record.created_ms));
    render_proof(&mut out, proof, true);
    out
}

/// The cluster id, event record and proof in an event file (not verified: see
/// [`verify_event_text`]).
pub fn parse_event(text: &str) -> Result<([u8; 32], EventRecord, EpochProof), TextError> {
    let document = Document::parse(text)?;
    let section = document.section("event")?;
    let format = signed_format(&section)?;
    let cluster = section.get("cluster_id")?.hex()?;
    let deadline_ms = section.get("deadline")?.number()?;
    section.get("deadline_string")?.time_string(deadline_ms)?;
    let created_ms = section.get("created")?.number()?;
    section.get("created_string")?.time_string(created_ms)?;
    let terms = EventTerms {
        deadline_ms,
        description: section.get("description")?.string(DESCRIPTION_MAX)?,
        owner: section.get("owner_key")?.hex()?,
        hash: section.get("hash_algorithm")?.hash()?,
        aead: section.get("aead")?.aead()?,
        transfer_window_ms: section.get("transfer_window_ms")?.number()?,
        nonce: section.get("nonce")?.number()?,
    };
    let record = EventRecord { event: section.get("evid")?.event()?, terms, created_ms };
    let proof = parse_proof(&document.section("proof")?, format, None)?;
    Ok((cluster, record, proof))
}

/// Parse an event file and verify it: of cluster `cluster`, signed with the cluster's signing key
/// `public`.
pub fn verify_event_text(
    text: &str,
    cluster: &[u8; 32],
    public: &PublicKey,
) -> Result<(EventRecord, EpochProof), TextError> {
    let (found, record, proof) = parse_event(text)?;
    check_cluster(&found, cluster)?;
    proof.verify(cluster, public, &Signed::Event(record.clone()))?;
    Ok((record, proof))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proof;
    use blsttc::SecretKeySet;
    use ed25519_dalek::SigningKey;
    use rand::SeedableRng;

    const CLUSTER: [u8; 32] = [7; 32];

    fn key_set(seed: u64) -> SecretKeySet {
        SecretKeySet::random(1, &mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }

    /// Sign `record` as leaf `at` of an epoch of `count` leaves (the others are filler), in the
    /// current format (the epoch certificate's service leaf).
    fn sign(keys: &SecretKeySet, record: &Signed, at: usize, count: usize, epoch: u64, time_ms: u64) -> EpochProof {
        use fides_service::certificate::{Certificate, Tree};
        let mut leaves: Vec<[u8; 32]> = (0..count).map(|i| fides_crypto::sha256(&(i as u64).to_le_bytes())).collect();
        leaves[at] = crate::service::record_leaf(&fides_types::codec::Wire::to_bytes(record));
        let tree = Tree::new(leaves);
        let root = tree.epoch_root(epoch, time_ms);
        let signature = keys.secret_key().sign(root.message(&CLUSTER)).to_bytes();
        let inclusion = tree.inclusion(at as u64).expect("a leaf of the tree");
        EpochProof::certified(inclusion, &Certificate { root, signature })
    }

    /// The same in format 1 (the bistro's own tree, before the service host).
    fn sign_format_1(
        keys: &SecretKeySet,
        record: &Signed,
        at: usize,
        count: usize,
        epoch: u64,
        time_ms: u64,
    ) -> EpochProof {
        let mut leaves: Vec<[u8; 32]> = (0..count).map(|i| fides_crypto::sha256(&(i as u64).to_le_bytes())).collect();
        leaves[at] = record.leaf(&CLUSTER);
        let root = proof::root(&leaves);
        let message = proof::root_message(&CLUSTER, epoch, time_ms, count as u64, &root);
        EpochProof {
            format: proof::FORMAT_BISTRO_TREE,
            epoch,
            time_ms,
            index: at as u64,
            count: count as u64,
            path: proof::path(&leaves, at),
            signature: keys.secret_key().sign(message).to_bytes(),
        }
    }

    fn ticket() -> Ticket {
        Ticket {
            event: EventId([0x5a; 16]),
            ticket: 24,
            hash: HashAlg::Sha256,
            digest: fides_crypto::sha256(b"the submission"),
            size: 3679,
            contact: "bill.cheng@acm.org".into(),
            file_name: "out ps.tar.gz".into(),
            time_ms: 999_109_497_123,
        }
    }

    fn signed_ticket(keys: &SecretKeySet) -> (Ticket, EpochProof, String) {
        let ticket = ticket();
        let proof = sign(keys, &Signed::Ticket(ticket.clone()), 2, 5, 41, ticket.time_ms);
        let text = render_ticket(&CLUSTER, &ticket, &proof);
        (ticket, proof, text)
    }

    fn receipt_key() -> SigningKey {
        SigningKey::from_bytes(&[3; 32])
    }

    fn signed_receipt() -> (Receipt, [u8; 64], String) {
        let receipt = Receipt {
            event: EventId([0x5a; 16]),
            ticket: 24,
            upload_hash: fides_crypto::sha256(b"the commit file"),
            upload_size: 5670,
            intermediary: receipt_key().verifying_key().to_bytes(),
            receipt_id: 15,
            time_ms: 999_109_498_000,
        };
        let signature = receipt.sign(&receipt_key(), &CLUSTER);
        let text = render_receipt(&CLUSTER, &receipt, &signature);
        (receipt, signature, text)
    }

    fn event() -> EventRecord {
        EventRecord {
            event: EventId([0x11; 16]),
            terms: EventTerms {
                deadline_ms: 1_000_000_000_000,
                description: "CSCI 551 project 2\nsubmit a .tar.gz".into(),
                owner: receipt_key().verifying_key().to_bytes(),
                hash: HashAlg::Blake3,
                aead: Aead::XChaCha20Poly1305,
                transfer_window_ms: 3_600_000,
                nonce: 9,
            },
            created_ms: 998_000_000_000,
        }
    }

    /// Byte offsets of the characters of every value on a `key=value` line.
    fn value_positions(text: &str) -> Vec<usize> {
        let mut out = Vec::new();
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let content = line.trim_end_matches('\n');
            if !content.starts_with(';') && !content.starts_with('[') {
                if let Some(eq) = content.find('=') {
                    out.extend(offset + eq + 1..offset + content.len());
                }
            }
            offset += line.len();
        }
        out
    }

    /// Every text that differs from `text` in one bit or one character of one value.
    fn one_changed(text: &str) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for at in value_positions(text) {
            let byte = text.as_bytes()[at];
            let other = match byte {
                b'0'..=b'8' | b'a'..=b'e' => byte + 1,
                b'9' => b'a',
                b'f' => b'0',
                b'x' => b'y',
                _ => b'x',
            };
            for changed in [byte ^ 1, other] {
                let mut bytes = text.as_bytes().to_vec();
                bytes[at] = changed;
                if let Ok(changed) = String::from_utf8(bytes) {
                    out.push((at, changed));
                }
            }
        }
        out
    }

    fn context(text: &str, at: usize) -> &str {
        let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        &text[start..end]
    }

    #[test]
    fn a_ticket_round_trips_and_verifies() {
        let keys = key_set(1);
        let (ticket, proof, text) = signed_ticket(&keys);
        assert_eq!(parse_ticket(&text), Ok((CLUSTER, ticket.clone(), proof.clone())));
        assert_eq!(verify_ticket_text(&text, &CLUSTER, &keys.public_keys().public_key()), Ok((ticket, proof)));
        assert!(text.contains("server_time_string=2001-08-29T"));
        assert!(text.contains("\nformat_version=2\n"), "{text}");
        assert!(text.contains("; Do NOT delete this file."));
        assert!(text.contains(&format!("signature_suite={SIGNATURE_SUITE}\n")));
    }

    #[test]
    fn a_ticket_with_any_signed_character_changed_does_not_verify() {
        let keys = key_set(1);
        let public = keys.public_keys().public_key();
        let (_, _, text) = signed_ticket(&keys);
        let changes = one_changed(&text);
        assert!(changes.len() > 600, "{} changes", changes.len());
        for (at, changed) in changes {
            assert!(
                verify_ticket_text(&changed, &CLUSTER, &public).is_err(),
                "a change in line {:?} still verifies",
                context(&changed, at)
            );
        }
    }

    /// A ticket file written before the service host (format 1) keeps verifying under its own
    /// rules; the same file claiming format 2, or any other change, does not verify.
    #[test]
    fn a_format_1_ticket_keeps_verifying_and_refuses_any_change() {
        let keys = key_set(1);
        let public = keys.public_keys().public_key();
        let ticket = ticket();
        let proof = sign_format_1(&keys, &Signed::Ticket(ticket.clone()), 2, 5, 41, ticket.time_ms);
        let text = render_ticket(&CLUSTER, &ticket, &proof);
        assert!(text.contains("\nformat_version=1\n"), "{text}");
        assert_eq!(verify_ticket_text(&text, &CLUSTER, &public), Ok((ticket, proof)));
        let claimed = text.replace("\nformat_version=1\n", "\nformat_version=2\n");
        assert_eq!(verify_ticket_text(&claimed, &CLUSTER, &public), Err(TextError::Proof(ProofError::Signature)));
        for (at, changed) in one_changed(&text) {
            assert!(
                verify_ticket_text(&changed, &CLUSTER, &public).is_err(),
                "a change in line {:?} still verifies",
                context(&changed, at)
            );
        }
        let error = parse_ticket(&text.replace("\nformat_version=1\n", "\nformat_version=3\n")).unwrap_err();
        assert!(error.to_string().contains("format_version= must be 1 or 2, not \"3\""), "{error}");
    }

    #[test]
    fn a_ticket_of_another_cluster_or_key_does_not_verify() {
        let keys = key_set(1);
        let (_, _, text) = signed_ticket(&keys);
        let public = keys.public_keys().public_key();
        assert!(matches!(verify_ticket_text(&text, &[8; 32], &public), Err(TextError::WrongCluster { .. })));
        let other = key_set(2).public_keys().public_key();
        assert_eq!(verify_ticket_text(&text, &CLUSTER, &other), Err(TextError::Proof(ProofError::Signature)));
    }

    #[test]
    fn a_ticket_tolerates_crlf_comments_and_unknown_keys() {
        let keys = key_set(1);
        let public = keys.public_keys().public_key();
        let (ticket, _, text) = signed_ticket(&keys);
        let crlf = format!("\u{feff}{}", text.replace('\n', "\r\n"));
        assert_eq!(verify_ticket_text(&crlf, &CLUSTER, &public).map(|(t, _)| t), Ok(ticket.clone()));
        let extra = format!(
            "{}\n[notes]\nfree=text\n",
            text.replace("[ticket]\n", "[ticket]\n# a note\nclient_ip=10.0.0.1\n  ; indented comment\n")
                .replace("[proof]\n", "[proof]\n\nextra_key=\n")
        );
        assert_eq!(verify_ticket_text(&extra, &CLUSTER, &public).map(|(t, _)| t), Ok(ticket));
    }

    #[test]
    fn strings_with_line_breaks_and_edge_spaces_round_trip() {
        let keys = key_set(1);
        let public = keys.public_keys().public_key();
        let ticket =
            Ticket { contact: " a\\b@c ".into(), file_name: "line\none\r\ttab\u{7}bell\u{2028}é ".into(), ..ticket() };
        let proof = sign(&keys, &Signed::Ticket(ticket.clone()), 0, 1, 1, ticket.time_ms);
        let text = render_ticket(&CLUSTER, &ticket, &proof);
        assert!(text.contains("user_email=\\u{20}a\\\\b@c\\u{20}\n"), "{text}");
        assert!(text.contains("file_name=line\\none\\r\\ttab\\u{7}bell\\u{2028}é\\u{20}\n"), "{text}");
        assert!(text.contains("path=\n"));
        assert_eq!(verify_ticket_text(&text, &CLUSTER, &public), Ok((ticket, proof)));
        for bad in ["\\q", "a\\", "\\u{110000}", "\\u{41}", "\\u41", " leading"] {
            assert!(unescape(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn malformed_tickets_are_refused_with_a_clear_reason() {
        let keys = key_set(1);
        let (_, _, text) = signed_ticket(&keys);
        let line_of = |key: &str| text.lines().position(|l| l.starts_with(key)).map(|i| i + 1).unwrap_or(0);
        let cases: Vec<(String, TextError)> = vec![
            (text.replace("hash_value=", "hash_valu="), TextError::MissingKey { section: "ticket", key: "hash_value" }),
            (
                text.replace("file_size=3679\n", "file_size=3679\nfile_size=3679\n"),
                TextError::DuplicateKey {
                    line: line_of("file_size") + 1,
                    first: line_of("file_size"),
                    key: "file_size",
                },
            ),
            (
                text.replace("ticket_id=24", "ticket_id=024"),
                TextError::Value {
                    line: line_of("ticket_id"),
                    key: "ticket_id",
                    reason: "must be written without leading zeros, not \"024\"".into(),
                },
            ),
            (text.replace("\n[proof]\n", "\n[prof]\n"), TextError::MissingSection("proof")),
            (
                text.replace("[ticket]\n", "[ticket]\nthis line is wrong\n"),
                TextError::Syntax {
                    line: line_of("[ticket]") + 1,
                    reason: "\"this line is wrong\" is not key=value, a [section], a comment or blank".into(),
                },
            ),
        ];
        for (changed, expected) in cases {
            assert_eq!(parse_ticket(&changed).map(|_| ()), Err(expected));
        }
        let upper = text.replace(&hex::encode(ticket().digest), &hex::encode_upper(ticket().digest));
        let error = parse_ticket(&upper).map(|_| ()).unwrap_err().to_string();
        assert!(error.contains("hash_value= must be lowercase hex digits"), "{error}");
        let late = text.replace("server_time_string=2001-08-29T", "server_time_string=2001-08-30T");
        let error = parse_ticket(&late).map(|_| ()).unwrap_err().to_string();
        assert!(error.contains("but the time it names is 2001-08-29T"), "{error}");
        let error = parse_ticket("user_email=a@b\n").map(|_| ()).unwrap_err().to_string();
        assert_eq!(error, "line 1: user_email= comes before any [section]");
        let error = parse_ticket(&text.replace("hash_algorithm=sha256", "hash_algorithm=sha1"))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(error.ends_with("hash_algorithm= must be sha256 or blake3, not \"sha1\""), "{error}");
    }

    #[test]
    fn a_receipt_round_trips_verifies_and_refuses_any_change() {
        let (receipt, signature, text) = signed_receipt();
        assert_eq!(parse_receipt(&text), Ok((CLUSTER, receipt.clone(), signature)));
        assert_eq!(verify_receipt_text(&text, &CLUSTER), Ok(receipt));
        assert!(matches!(verify_receipt_text(&text, &[8; 32]), Err(TextError::WrongCluster { .. })));
        assert!(text.contains("; Do NOT delete this file.  This receipt file is"));
        for (at, changed) in one_changed(&text) {
            assert!(
                verify_receipt_text(&changed, &CLUSTER).is_err(),
                "a change in line {:?} still verifies",
                context(&changed, at)
            );
        }
        let error = verify_receipt_text(&text.replace("enc_hash_algorithm=sha256", "enc_hash_algorithm=md5"), &CLUSTER)
            .unwrap_err()
            .to_string();
        assert!(error.ends_with("enc_hash_algorithm= must be sha256, not \"md5\""), "{error}");
    }

    #[test]
    fn an_event_round_trips_verifies_and_refuses_any_change() {
        let keys = key_set(1);
        let public = keys.public_keys().public_key();
        let record = event();
        let proof = sign(&keys, &Signed::Event(record.clone()), 3, 4, 12, record.created_ms + 5);
        let text = render_event(&CLUSTER, &record, &proof);
        assert!(text.contains("description=CSCI 551 project 2\\nsubmit a .tar.gz\n"), "{text}");
        assert!(text.contains("hash_algorithm=blake3\naead=xchacha20-poly1305\n"), "{text}");
        assert_eq!(parse_event(&text), Ok((CLUSTER, record.clone(), proof.clone())));
        assert_eq!(verify_event_text(&text, &CLUSTER, &public), Ok((record, proof)));
        assert!(matches!(verify_event_text(&text, &[8; 32], &public), Err(TextError::WrongCluster { .. })));
        for (at, changed) in one_changed(&text) {
            assert!(
                verify_event_text(&changed, &CLUSTER, &public).is_err(),
                "a change in line {:?} still verifies",
                context(&changed, at)
            );
        }
    }

    #[test]
    fn a_ticket_is_not_an_event_or_a_receipt() {
        let keys = key_set(1);
        let (_, _, text) = signed_ticket(&keys);
        assert_eq!(parse_event(&text).map(|_| ()), Err(TextError::MissingSection("event")));
        assert_eq!(parse_receipt(&text).map(|_| ()), Err(TextError::MissingSection("receipt")));
    }
}
