//! The certification authority's settings: the `[ca]` table of a cluster file.
//!
//! They decide what the CA service accepts and what it signs (binding mode, policy, validity),
//! so every replica must run with the same ones: they are in the cluster file and, when
//! present, in the cluster id. A cluster dealt before them has none; its replicas run the CA
//! with [`CaSettings::DEFAULT`] (the same at every replica of a version).

use std::fmt;

use ed25519_dalek::VerifyingKey;

/// The longest validity a certificate may be given: 10 years of 366 days.
pub const CA_VALIDITY_DAYS_LIMIT: u32 = 3_660;
/// What `dealer init` sets unless told otherwise: 90 days, as Let's Encrypt does.
pub const CA_VALIDITY_DAYS_DEFAULT: u32 = 90;

/// Which half of a binding is unique (MAFTIA D5 §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaMode {
    /// One certificate per key; a name may be bound to several keys only through one key each.
    KeyMajor,
    /// One certificate per name.
    NameMajor,
}

impl CaMode {
    /// As written in the file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            CaMode::KeyMajor => "key-major",
            CaMode::NameMajor => "name-major",
        }
    }

    /// From its name; the error lists the names.
    pub fn parse(text: &str) -> Result<CaMode, String> {
        match text {
            "key-major" => Ok(CaMode::KeyMajor),
            "name-major" => Ok(CaMode::NameMajor),
            other => Err(format!("{other:?} is not a binding mode: key-major or name-major")),
        }
    }

    fn code(self) -> u8 {
        match self {
            CaMode::KeyMajor => 1,
            CaMode::NameMajor => 2,
        }
    }
}

/// Who may bind a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaPolicy {
    /// Anyone may bind a name not yet bound to another key.
    Open,
    /// A request carries a token for its name, signed by this administrator's Ed25519 key.
    Token {
        /// The administrator's public key.
        admin: VerifyingKey,
    },
}

impl CaPolicy {
    /// `open` or `token`.
    pub fn name(&self) -> &'static str {
        match self {
            CaPolicy::Open => "open",
            CaPolicy::Token { .. } => "token",
        }
    }

    /// From its name and, for `token`, the administrator key in hex (required then, refused
    /// otherwise). `what` names the admin key's source in errors (`--ca-admin`, `ca.admin`).
    pub fn parse(name: &str, admin: Option<&str>, what: &str) -> Result<CaPolicy, String> {
        match (name, admin) {
            ("open", None) => Ok(CaPolicy::Open),
            ("open", Some(_)) => Err(format!("{what} is given but the policy is open (it needs none)")),
            ("token", Some(hex_key)) => Ok(CaPolicy::Token { admin: parse_admin(hex_key, what)? }),
            ("token", None) => Err(format!("the token policy needs the administrator's Ed25519 key ({what})")),
            (other, _) => Err(format!("{other:?} is not a policy: open or token")),
        }
    }

    /// The administrator's key, if the policy has one.
    pub fn admin(&self) -> Option<&VerifyingKey> {
        match self {
            CaPolicy::Open => None,
            CaPolicy::Token { admin } => Some(admin),
        }
    }
}

/// An Ed25519 public key from 64 hex digits: a point that decompresses, not of small order.
fn parse_admin(text: &str, what: &str) -> Result<VerifyingKey, String> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| format!("{what}: not 64 hex digits"))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| format!("{what}: not an Ed25519 public key"))?;
    if key.is_weak() {
        return Err(format!("{what}: a weak (small-order) Ed25519 key"));
    }
    Ok(key)
}

/// The `[ca]` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaSettings {
    /// Key-major or name-major.
    pub mode: CaMode,
    /// Open or token.
    pub policy: CaPolicy,
    /// Days from a certificate's `notBefore` (the agreed time of its request) to its `notAfter`,
    /// `1 ..= CA_VALIDITY_DAYS_LIMIT`.
    pub validity_days: u32,
}

impl CaSettings {
    /// What a cluster without a `[ca]` table runs with, and `dealer init`'s defaults.
    pub const DEFAULT: CaSettings =
        CaSettings { mode: CaMode::KeyMajor, policy: CaPolicy::Open, validity_days: CA_VALIDITY_DAYS_DEFAULT };

    /// Why these settings cannot run the CA, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.validity_days == 0 || self.validity_days > CA_VALIDITY_DAYS_LIMIT {
            return Err(format!("validity_days = {} is not in 1 ..= {CA_VALIDITY_DAYS_LIMIT}", self.validity_days));
        }
        if self.policy.admin().is_some_and(VerifyingKey::is_weak) {
            return Err("the administrator key is a weak (small-order) Ed25519 key".to_string());
        }
        Ok(())
    }

    /// The validity in seconds.
    pub fn validity_secs(&self) -> u64 {
        u64::from(self.validity_days) * 86_400
    }

    /// The bytes the cluster id covers: `"ca"`, mode (1 key-major, 2 name-major), policy (1
    /// open, 2 token), validity days (u32 little-endian), then the administrator's key (32 bytes)
    /// for the token policy.
    pub(crate) fn id_bytes(&self) -> Vec<u8> {
        let mut bytes = b"ca".to_vec();
        bytes.push(self.mode.code());
        bytes.push(match self.policy {
            CaPolicy::Open => 1,
            CaPolicy::Token { .. } => 2,
        });
        bytes.extend_from_slice(&self.validity_days.to_le_bytes());
        if let Some(admin) = self.policy.admin() {
            bytes.extend_from_slice(admin.as_bytes());
        }
        bytes
    }
}

impl Default for CaSettings {
    fn default() -> Self {
        CaSettings::DEFAULT
    }
}

impl fmt::Display for CaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mode = {}, policy = {}", self.mode.name(), self.policy.name())?;
        if let Some(admin) = self.policy.admin() {
            write!(f, " (administrator {})", hex::encode(admin.as_bytes()))?;
        }
        write!(f, ", validity_days = {}", self.validity_days)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    #[test]
    fn policies_parse_with_and_only_with_an_administrator_key_for_token() {
        assert_eq!(CaPolicy::parse("open", None, "--ca-admin"), Ok(CaPolicy::Open));
        let Ok(CaPolicy::Token { admin }) = CaPolicy::parse("token", Some(ADMIN), "--ca-admin") else {
            panic!("a token policy with a valid key was refused")
        };
        assert_eq!(hex::encode(admin.as_bytes()), ADMIN);
        let cases = [
            ("token", None, "needs the administrator's Ed25519 key (--ca-admin)"),
            ("open", Some(ADMIN), "--ca-admin is given but the policy is open"),
            ("closed", None, "\"closed\" is not a policy: open or token"),
            ("token", Some("abcd"), "--ca-admin: not 64 hex digits"),
            ("token", Some(&"00".repeat(32)), "--ca-admin: a weak (small-order) Ed25519 key"),
        ];
        for (name, admin, needle) in cases {
            let Err(reason) = CaPolicy::parse(name, admin, "--ca-admin") else { panic!("{name} {admin:?} parsed") };
            assert!(reason.contains(needle), "{reason}");
        }
    }

    #[test]
    fn modes_parse_by_name_and_validity_is_bounded() {
        assert_eq!(CaMode::parse("name-major"), Ok(CaMode::NameMajor));
        assert_eq!(CaMode::parse(CaMode::KeyMajor.name()), Ok(CaMode::KeyMajor));
        assert!(CaMode::parse("key").is_err_and(|reason| reason.contains("key-major or name-major")));
        assert_eq!(CaSettings::DEFAULT.check(), Ok(()));
        for days in [0, CA_VALIDITY_DAYS_LIMIT + 1] {
            let settings = CaSettings { validity_days: days, ..CaSettings::DEFAULT };
            assert!(settings.check().is_err_and(|reason| reason.contains("validity_days")));
        }
    }

    #[test]
    fn every_setting_changes_the_id_bytes() {
        let base = CaSettings::DEFAULT;
        let Ok(token) = CaPolicy::parse("token", Some(ADMIN), "admin") else { panic!("valid key refused") };
        let others = [
            CaSettings { mode: CaMode::NameMajor, ..base },
            CaSettings { policy: token, ..base },
            CaSettings { validity_days: 91, ..base },
        ];
        for other in others {
            assert_ne!(other.id_bytes(), base.id_bytes(), "{other}");
        }
    }
}
