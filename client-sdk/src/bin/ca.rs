//! `ca`: the command line of a Fides cluster's certification authority.
//!
//! ```text
//! ca keygen [--type ed25519|p256|x25519] --out KEY
//! ca issue  --key KEY --name CN [--attr K=V]… [--dns D]… [--email E]… [--token T] [--csr F] [--out CERT]
//! ca update --key KEY --name CN [--attr K=V]… [--dns D]… [--email E]… [--token T] [--csr F] [--out CERT]
//! ca revoke --key KEY [--name CN [--attr K=V]…] [--reason R]
//! ca get    (--name CN [--attr K=V]… | --key KEY)
//! ca status SERIAL
//! ca crl    [--out CRL]
//! ca verify CERT [--root ca-root.pem]
//! ca token  --admin-key KEY --name CN [--attr K=V]… [--valid-days D]
//! ```
//!
//! Every command that talks to the cluster takes `--cluster PATH` (the public cluster file), else
//! `$FIDES_CLUSTER`. Certificates and CRLs are written in PEM. A key file is one line, the key
//! type and its 32-byte secret in hex (`ed25519 …`, `p256 …`, `x25519 …`), readable by its owner
//! alone. `issue` and `update` with `--out CERT` also write `CERT.record`: the issued record with
//! its inclusion path and epoch certificate, which `verify` checks. Exit status: 0 done, 1 failed
//! (one line on stderr says why), 2 bad usage.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use der::Decode;
use fides_ca::service::{KeySecret, Record, Token};
use fides_ca::{AltNames, AttributeKind, RevocationReason, Root, Serial, SubjectName};
use fides_cli::Logging;
use fides_client_sdk::ca::{
    certificate_serial, crl_serials, verify_certificate, verify_crl, verify_record, CaClient, CaOptions, Issued,
    Subject,
};
use fides_dealer::ClusterFile;
use prost::Message;
use rand::rngs::OsRng;

/// `println!` that never panics.
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Largest key, token, certificate or CSR file read.
const FILE_MAX: u64 = 64 * 1024;

#[derive(Parser, Debug)]
#[command(name = "ca", version, about = "Issue, update, revoke and check certificates of a Fides cluster's CA.")]
struct Cli {
    /// The public cluster file (cluster.toml); default: $FIDES_CLUSTER.
    #[arg(long, global = true, value_name = "PATH")]
    cluster: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// A subject name on the command line.
#[derive(clap::Args, Debug, Clone)]
struct NameArgs {
    /// The common name (CN).
    #[arg(long)]
    name: Option<String>,
    /// Another attribute of the name, `C=FR`, `O=Example`, `OU=…`, `ST=…`, `L=…`, `emailAddress=…`.
    #[arg(long = "attr", value_name = "K=V")]
    attributes: Vec<String>,
}

/// What an issue or update binds.
#[derive(clap::Args, Debug)]
struct BindArgs {
    /// The key file (from `ca keygen`).
    #[arg(long)]
    key: PathBuf,
    #[command(flatten)]
    name: NameArgs,
    /// A DNS name for the subjectAltName.
    #[arg(long)]
    dns: Vec<String>,
    /// An e-mail address for the subjectAltName.
    #[arg(long)]
    email: Vec<String>,
    /// The administrator's token for the name (hex, or a file holding it), under the token policy.
    #[arg(long)]
    token: Option<String>,
    /// A PKCS#10 request (PEM or DER) for the key, instead of --name, --dns and --email.
    #[arg(long)]
    csr: Option<PathBuf>,
    /// Where to write the certificate (PEM) and, as FILE.record, its certified record [default:
    /// standard output, the certificate only].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a key (written readable by you alone) and print its public half.
    Keygen {
        /// ed25519, p256 or x25519.
        #[arg(long = "type", default_value = "ed25519")]
        kind: String,
        /// The key file to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Certify a key for a name.
    Issue(BindArgs),
    /// Replace the certificate of the key (key-major) or of the name (name-major).
    Update(BindArgs),
    /// Revoke the certificates of a key (only those with the name, if given).
    Revoke {
        /// The key file.
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        name: NameArgs,
        /// unspecified, key-compromise, affiliation-changed, superseded, cessation-of-operation or
        /// privilege-withdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// The current certificates of a key or a name, as 2t + 1 replicas give them (PEM).
    Get {
        /// The key file.
        #[arg(long)]
        key: Option<PathBuf>,
        #[command(flatten)]
        name: NameArgs,
    },
    /// The signed status of a serial (hex).
    Status {
        /// The serial, in hex.
        serial: String,
    },
    /// The cluster's latest CRL (PEM).
    Crl {
        /// Where to write it [default: standard output].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a certificate: its signature under the cluster's key and root, the CRL, and its
    /// certified record (CERT.record) if there is one.
    Verify {
        /// The certificate (PEM or DER).
        cert: PathBuf,
        /// The root certificate [default: ca-root.pem next to the cluster file].
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// As the administrator, sign a token for a name (printed in hex).
    Token {
        /// The administrator's Ed25519 key file.
        #[arg(long)]
        admin_key: PathBuf,
        #[command(flatten)]
        name: NameArgs,
        /// Days the token is accepted.
        #[arg(long, default_value_t = 7)]
        valid_days: u64,
    },
}

fn main() -> ExitCode {
    let cli = match fides_cli::parse::<Cli>("ca") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    fides_cli::main_with("ca", Logging::Text("warn"), run(cli))
}

fn cluster_path(cluster: Option<&Path>) -> anyhow::Result<PathBuf> {
    match cluster {
        Some(path) => Ok(path.to_path_buf()),
        None => std::env::var_os("FIDES_CLUSTER")
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("no cluster file: give --cluster PATH or set FIDES_CLUSTER")),
    }
}

fn read_cluster(path: &Path) -> anyhow::Result<ClusterFile> {
    fides_dealer::read_cluster(path).map_err(|e| anyhow!("{e}"))
}

fn read_bounded(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(FILE_MAX + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > FILE_MAX {
        bail!("{} is larger than {FILE_MAX} bytes", path.display());
    }
    Ok(bytes)
}

/// Create `path` readable and writable by its owner alone; never overwrites.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow!("{} exists already; not overwriting it", path.display())
        } else {
            anyhow!("cannot create {}: {error}", path.display())
        }
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn secret_bytes(hex_text: &str, path: &Path) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(hex_text).map_err(|_| anyhow!("{}: the key is not hex", path.display()))?;
    bytes.try_into().map_err(|_| anyhow!("{}: the key is not 32 bytes (64 hex digits)", path.display()))
}

/// A key file: `TYPE HEX`.
fn read_key(path: &Path) -> anyhow::Result<KeySecret> {
    let text = String::from_utf8(read_bounded(path)?).map_err(|_| anyhow!("{}: not text", path.display()))?;
    let mut words = text.split_whitespace();
    let (Some(kind), Some(hex_text), None) = (words.next(), words.next(), words.next()) else {
        bail!("{}: not a key file (one line: the type and the secret in hex; made by `ca keygen`)", path.display());
    };
    let bytes = secret_bytes(hex_text, path)?;
    Ok(match kind {
        "ed25519" => KeySecret::Ed25519(ed25519_dalek::SigningKey::from_bytes(&bytes)),
        "p256" => KeySecret::P256(
            p256::ecdsa::SigningKey::from_slice(&bytes).map_err(|_| anyhow!("{}: not a P-256 key", path.display()))?,
        ),
        "x25519" => KeySecret::X25519(x25519_dalek::StaticSecret::from(bytes)),
        other => bail!("{}: unknown key type {other:?} (ed25519, p256, x25519)", path.display()),
    })
}

fn keygen(kind: &str, out: &Path) -> anyhow::Result<()> {
    let (secret, bytes) = match kind {
        "ed25519" => {
            let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
            let bytes = key.to_bytes();
            (KeySecret::Ed25519(key), bytes)
        }
        "p256" => {
            let key = p256::ecdsa::SigningKey::random(&mut OsRng);
            let bytes: [u8; 32] = key.to_bytes().into();
            (KeySecret::P256(key), bytes)
        }
        "x25519" => {
            let key = x25519_dalek::StaticSecret::random_from_rng(OsRng);
            let bytes = key.to_bytes();
            (KeySecret::X25519(key), bytes)
        }
        other => bail!("unknown key type {other:?} (ed25519, p256, x25519)"),
    };
    write_private(out, &format!("{kind} {}\n", hex::encode(bytes)))?;
    out!("key written to {}", out.display());
    out!("public key {} {}", kind, hex::encode(secret.public().public_key_bytes()));
    Ok(())
}

fn subject_name(args: &NameArgs) -> anyhow::Result<Option<SubjectName>> {
    let Some(common_name) = &args.name else {
        if !args.attributes.is_empty() {
            bail!("--attr needs --name");
        }
        return Ok(None);
    };
    let mut attributes = Vec::new();
    for attribute in &args.attributes {
        let (kind, value) =
            attribute.split_once('=').ok_or_else(|| anyhow!("--attr {attribute:?} is not KEY=VALUE"))?;
        attributes.push((AttributeKind::from_short_name(kind).map_err(|e| anyhow!("--attr {kind}: {e}"))?, value));
    }
    Ok(Some(SubjectName::new(common_name, &attributes).map_err(|e| anyhow!("--name: {e}"))?))
}

fn read_token(text: &str) -> anyhow::Result<Token> {
    let path = Path::new(text);
    let hex_text = if path.is_file() {
        String::from_utf8(read_bounded(path)?).map_err(|_| anyhow!("{text}: not text"))?
    } else {
        text.to_string()
    };
    let bytes = hex::decode(hex_text.trim()).map_err(|_| anyhow!("--token: neither a file nor hex"))?;
    if bytes.len() != 104 {
        bail!("--token: {} bytes, a token has 104", bytes.len());
    }
    let mut name_hash = [0; 32];
    name_hash.copy_from_slice(&bytes[..32]);
    let mut not_after = [0; 8];
    not_after.copy_from_slice(&bytes[32..40]);
    let mut signature = [0; 64];
    signature.copy_from_slice(&bytes[40..]);
    Ok(Token { name_hash, not_after_ms: u64::from_le_bytes(not_after), signature })
}

fn pem(label: &str, der: &[u8]) -> anyhow::Result<String> {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der).map_err(|e| anyhow!("PEM: {e}"))
}

/// A certificate or CRL file in PEM or DER.
fn read_der(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = read_bounded(path)?;
    if bytes.starts_with(b"-----BEGIN") {
        let (_, der) = der::pem::decode_vec(&bytes).map_err(|e| anyhow!("{}: not PEM: {e}", path.display()))?;
        return Ok(der);
    }
    Ok(bytes)
}

async fn bind(cluster: &ClusterFile, args: &BindArgs, update: bool) -> anyhow::Result<()> {
    let secret = read_key(&args.key)?;
    let subject = match (&args.csr, subject_name(&args.name)?) {
        (Some(csr), None) if args.dns.is_empty() && args.email.is_empty() => Subject::Csr(read_bounded(csr)?),
        (Some(_), _) => bail!("--csr carries the name and alternative names: give no --name, --dns or --email"),
        (None, Some(name)) => {
            let dns: Vec<&str> = args.dns.iter().map(String::as_str).collect();
            let email: Vec<&str> = args.email.iter().map(String::as_str).collect();
            let alt_names = AltNames::new(&dns, &email).map_err(|e| anyhow!("--dns/--email: {e}"))?;
            Subject::Fields { name, alt_names }
        }
        (None, None) => bail!("give --name (or --csr)"),
    };
    let token = args.token.as_deref().map(read_token).transpose()?;
    let client = ca_client(cluster)?;
    let issued = if update {
        client.update(&secret, &subject, token.as_ref()).await?
    } else {
        client.issue(&secret, &subject, token.as_ref()).await?
    };
    write_issued(&issued, args.out.as_deref(), if update { "updated" } else { "issued" })
}

fn write_issued(issued: &Issued, out: Option<&Path>, verb: &str) -> anyhow::Result<()> {
    let text = pem("CERTIFICATE", &issued.der)?;
    match out {
        Some(path) => {
            fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
            let record = record_path(path);
            fs::write(&record, issued.record.to_proto().encode_to_vec())
                .with_context(|| format!("writing {}", record.display()))?;
            out!(
                "{verb} serial={} epoch={} cert={}",
                hex::encode(issued.serial.as_be_bytes()),
                issued.record.certificate.root.epoch,
                path.display()
            );
            for revoked in &issued.revoked {
                if let Record::Revoked(record) = &revoked.record {
                    out!("superseded serial={}", hex::encode(record.serial.as_be_bytes()));
                }
            }
        }
        None => out!("{}", text.trim_end()),
    }
    Ok(())
}

fn record_path(cert: &Path) -> PathBuf {
    let mut name = cert.as_os_str().to_owned();
    name.push(".record");
    PathBuf::from(name)
}

fn reason(text: &str) -> anyhow::Result<RevocationReason> {
    Ok(match text {
        "unspecified" => RevocationReason::Unspecified,
        "key-compromise" => RevocationReason::KeyCompromise,
        "affiliation-changed" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessation-of-operation" => RevocationReason::CessationOfOperation,
        "privilege-withdrawn" => RevocationReason::PrivilegeWithdrawn,
        other => bail!("unknown reason {other:?}"),
    })
}

fn ca_client(cluster: &ClusterFile) -> anyhow::Result<CaClient> {
    Ok(CaClient::new(cluster, CaOptions::default())?)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

async fn verify(cluster: &ClusterFile, client: &CaClient, cert: &Path, root_path: &Path) -> anyhow::Result<()> {
    let der = read_der(cert)?;
    let rsa = cluster.rsa().ok_or_else(|| anyhow!("the cluster has no threshold RSA key"))?;
    let root_der = read_der(root_path)?;
    let root = Root::from_der(&root_der).map_err(|e| anyhow!("{}: {e}", root_path.display()))?;
    root.check_key(rsa).map_err(|e| anyhow!("{} is not the cluster's root: {e}", root_path.display()))?;
    let root_subject = x509_cert::Certificate::from_der(&root_der)
        .map_err(|e| anyhow!("{}: {e}", root_path.display()))?
        .tbs_certificate
        .subject;
    let tbs = verify_certificate(rsa, &der).map_err(|e| anyhow!("{}: {e}", cert.display()))?;
    let issuer = x509_cert::TbsCertificate::from_der(&tbs).map_err(|e| anyhow!("{e}"))?.issuer;
    if root_subject != issuer {
        bail!("{}: issued by {issuer}, not by the root {root_subject}", cert.display());
    }
    out!("signature ok: issued by {issuer} (the cluster's threshold RSA key)");
    let serial = certificate_serial(&der).map_err(|e| anyhow!("{e}"))?;
    let record = record_path(cert);
    if record.is_file() {
        let bytes = read_bounded(&record)?;
        let record = fides_api::proto::CertifiedRecord::decode(bytes.as_slice())
            .map_err(|e| anyhow!("{}: {e}", cert.display()))?;
        let certified = verify_record(&cluster.id().0, &cluster.signing().public_key(), &record)
            .map_err(|e| anyhow!("{}: {e}", cert.display()))?;
        match &certified.record {
            Record::Issued(issued) if issued.tbs == tbs => {
                out!("inclusion ok: issued record in the certificate of epoch {}", certified.certificate.root.epoch)
            }
            _ => bail!("{}: the record is not this certificate's", cert.display()),
        }
    } else {
        out!("inclusion not checked: no {}", record.display());
    }
    let crl = client.crl().await?;
    verify_crl(rsa, &crl.der).map_err(|e| anyhow!("{e}"))?;
    if crl_serials(&crl.der).map_err(|e| anyhow!("{e}"))?.contains(&serial) {
        bail!("{}: revoked (serial {} is in CRL number {})", cert.display(), hex::encode(&serial), crl.number);
    }
    out!("not revoked: CRL number {} lists {} serials, not {}", crl.number, crl.revoked, hex::encode(&serial));
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Keygen { kind, out } = &cli.command {
        return keygen(kind, out);
    }
    let path = cluster_path(cli.cluster.as_deref())?;
    let cluster = read_cluster(&path)?;
    if let Command::Token { admin_key, name, valid_days } = &cli.command {
        let KeySecret::Ed25519(admin) = read_key(admin_key)? else { bail!("the administrator's key is Ed25519") };
        let name = subject_name(name)?.ok_or_else(|| anyhow!("give --name"))?;
        let not_after = now_ms().saturating_add(valid_days.saturating_mul(86_400_000));
        let token = Token::sign(&admin, &cluster.id().0, &name, not_after).map_err(|e| anyhow!("{e}"))?;
        let bytes = [&token.name_hash[..], &token.not_after_ms.to_le_bytes(), &token.signature].concat();
        out!("{}", hex::encode(bytes));
        return Ok(());
    }
    match &cli.command {
        Command::Keygen { .. } | Command::Token { .. } => Ok(()),
        Command::Issue(args) => bind(&cluster, args, false).await,
        Command::Update(args) => bind(&cluster, args, true).await,
        Command::Revoke { key, name, reason: why } => {
            let secret = read_key(key)?;
            let name = subject_name(name)?;
            let reason = reason(why)?;
            let revoked = ca_client(&cluster)?.revoke(&secret, name.as_ref(), reason).await?;
            for record in revoked {
                if let Record::Revoked(revoked) = &record.record {
                    out!(
                        "revoked serial={} at_ms={} epoch={}",
                        hex::encode(revoked.serial.as_be_bytes()),
                        revoked.revoked_at_ms,
                        record.certificate.root.epoch
                    );
                }
            }
            Ok(())
        }
        Command::Get { key, name } => {
            let key = key.as_deref().map(read_key).transpose()?.map(|secret| secret.public());
            let name = subject_name(name)?;
            if key.is_none() && name.is_none() {
                bail!("give --key or --name");
            }
            for der in ca_client(&cluster)?.retrieve(key.as_ref(), name.as_ref()).await? {
                out!("{}", pem("CERTIFICATE", &der)?.trim_end());
            }
            Ok(())
        }
        Command::Status { serial } => {
            let bytes = hex::decode(serial).map_err(|_| anyhow!("the serial is not hex"))?;
            let serial = Serial::from_be_bytes(&bytes).map_err(|e| anyhow!("the serial: {e}"))?;
            let (status, record) = ca_client(&cluster)?.status(&serial).await?;
            let state = match status.status {
                fides_ca::service::CertificateStatus::Good => "good".to_string(),
                fides_ca::service::CertificateStatus::Revoked { at_ms, reason } => {
                    format!("revoked revoked_at_ms={at_ms} reason={}", reason.code())
                }
                fides_ca::service::CertificateStatus::Unknown => "unknown".to_string(),
            };
            out!(
                "status serial={} {state} time_ms={} epoch={}",
                hex::encode(status.serial.as_be_bytes()),
                status.time_ms,
                record.certificate.root.epoch
            );
            Ok(())
        }
        Command::Crl { out } => {
            let crl = ca_client(&cluster)?.crl().await?;
            let text = pem("X509 CRL", &crl.der)?;
            match out {
                Some(path) => {
                    fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
                    out!("crl number={} revoked={} file={}", crl.number, crl.revoked, path.display());
                }
                None => out!("{}", text.trim_end()),
            }
            Ok(())
        }
        Command::Verify { cert, root } => {
            let root = match root {
                Some(root) => root.clone(),
                None => path.parent().unwrap_or(Path::new(".")).join(fides_dealer::ROOT_CERTIFICATE_FILE_NAME),
            };
            verify(&cluster, &ca_client(&cluster)?, cert, &root).await
        }
    }
}
