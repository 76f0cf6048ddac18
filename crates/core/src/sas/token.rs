//! SAS token parsing, signing and scope checks.
//!
//! The signature covers `sr` and `se` exactly as the client wrote them, and
//! every SDK encodes `sr` differently (strict `encodeURIComponent`,
//! `quote_plus`, upper- or lower-case hex, or not at all), so the raw text is
//! kept for the HMAC and only a decoded copy is used for scope checks. The
//! verifier never re-encodes anything.
//!
//! A `+` in `sr` is kept as a literal `+`, not read as a space: Python's
//! `quote_plus` is the only SDK encoder that writes `+` for a space, and host
//! names and device/module ids cannot contain spaces, whereas a device id may
//! contain `+` and hand-made tokens often put the id in `sr` unencoded.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::Sha256;

use crate::error::{HubError, HubResult};
use crate::escape::percent_decode_strict as percent_decode;

type HmacSha256 = Hmac<Sha256>;

/// What every token starts with (also inside connection strings).
pub const TOKEN_PREFIX: &str = "SharedAccessSignature ";

/// JavaScript's `encodeURIComponent` plus `! ' ( ) *`, as the Node SDK's
/// `encodeUriComponentStrict`: only ASCII letters, digits and `- _ . ~` stay.
const STRICT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// A parsed `SharedAccessSignature sr=…&sig=…&se=…[&skn=…]` token.
/// `Debug` hides the signature (a live token is a bearer credential).
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    raw_sr: String,
    raw_se: String,
    sig: Vec<u8>,
    skn: Option<String>,
    expiry: i64,
    host: String,
    /// Decoded path, normalised to `/seg/seg` (or empty).
    path: String,
}

fn malformed(what: &str) -> HubError {
    HubError::unauthorized(format!("Malformed SAS token: {what}"))
}

impl SasToken {
    /// Parses a token. Field order is free; unknown fields are ignored;
    /// missing, empty or duplicate `sr`/`sig`/`se`/`skn`, a non-integer `se`,
    /// bad percent escapes and bad base64 are rejected.
    pub fn parse(text: &str) -> HubResult<SasToken> {
        let fields = text.strip_prefix(TOKEN_PREFIX).ok_or_else(|| malformed("missing prefix"))?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for part in fields.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| malformed("field without '='"))?;
            let slot = match name {
                "sr" => &mut sr,
                "sig" => &mut sig,
                "se" => &mut se,
                "skn" => &mut skn,
                _ => continue,
            };
            if slot.is_some() {
                return Err(malformed(&format!("duplicate {name}")));
            }
            if value.is_empty() {
                return Err(malformed(&format!("empty {name}")));
            }
            *slot = Some(value);
        }
        let raw_sr = sr.ok_or_else(|| malformed("missing sr"))?;
        let sig = sig.ok_or_else(|| malformed("missing sig"))?;
        let raw_se = se.ok_or_else(|| malformed("missing se"))?;

        let expiry = raw_se
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| raw_se.parse::<i64>().ok())
            .flatten()
            .ok_or_else(|| malformed("se is not an integer"))?;
        let sig = percent_decode(sig)
            .and_then(|b| BASE64.decode(b).ok())
            .ok_or_else(|| malformed("sig is not percent-encoded base64"))?;
        let skn =
            skn.map(|s| decode_text(s).ok_or_else(|| malformed("bad percent escape in skn"))).transpose()?;
        let resource = decode_text(raw_sr).ok_or_else(|| malformed("bad percent escape in sr"))?;
        let (host, path) = match resource.split_once('/') {
            Some((host, path)) => (host.to_owned(), normalise(path)),
            None => (resource, String::new()),
        };
        Ok(SasToken { raw_sr: raw_sr.to_owned(), raw_se: raw_se.to_owned(), sig, skn, expiry, host, path })
    }

    /// The policy name (`skn`, percent-decoded), if the token was signed with
    /// a policy key.
    pub fn skn(&self) -> Option<&str> {
        self.skn.as_deref()
    }

    /// `se`: expiry in seconds since the Unix epoch.
    pub fn expiry(&self) -> i64 {
        self.expiry
    }

    /// Whether the token is no longer valid at `now_unix` (`se <= now`).
    pub fn is_expired(&self, now_unix: i64) -> bool {
        self.expiry <= now_unix
    }

    /// The normalised decoded `sr` path, borrowed.
    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// `sr` exactly as sent.
    pub fn raw_resource(&self) -> &str {
        &self.raw_sr
    }

    /// The decoded `sr` split into host and path: `myhub/devices/d1` gives
    /// `("myhub", "/devices/d1")`; a bare host gives an empty path. Empty
    /// segments and trailing slashes are dropped from the path.
    pub fn resource(&self) -> (String, String) {
        (self.host.clone(), self.path.clone())
    }

    /// The device (and module) `sr` names, when its path is exactly
    /// `/devices/{d}` or `/devices/{d}/modules/{m}`.
    pub fn device_identity(&self) -> Option<(&str, Option<&str>)> {
        let segs: Vec<&str> = segments(&self.path).collect();
        match segs.as_slice() {
            ["devices", d] => Some((d, None)),
            ["devices", d, "modules", m] => Some((d, Some(m))),
            _ => None,
        }
    }

    /// Whether `sig` is the HMAC-SHA256, under `key_base64`, of
    /// `{raw sr}\n{raw se}`. Compares in constant time. A key that is empty
    /// or not base64 verifies nothing.
    pub fn verify(&self, key_base64: &str) -> bool {
        let Ok(key) = BASE64.decode(key_base64) else { return false };
        if key.is_empty() {
            return false;
        }
        let Ok(mut mac) = HmacSha256::new_from_slice(&key) else { return false };
        mac.update(self.raw_sr.as_bytes());
        mac.update(b"\n");
        mac.update(self.raw_se.as_bytes());
        mac.verify_slice(&self.sig).is_ok()
    }

    /// Whether the `sr` host is one of `host_names` (ASCII case ignored).
    pub fn matches_host(&self, host_names: &[String]) -> bool {
        host_names.iter().any(|h| h.eq_ignore_ascii_case(&self.host))
    }

    /// Whether the token's scope includes `target_path`: the host matches
    /// and the `sr` path is a prefix of the target by whole segments
    /// (`/devices/a` covers `/devices/a/modules/m`, not `/devices/ab`; an
    /// empty path covers everything). Paths compare case-sensitively, since
    /// device ids are case-sensitive.
    pub fn covers(&self, host_names: &[String], target_path: &str) -> bool {
        self.matches_host(host_names) && path_covers(&self.path, target_path)
    }
}

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasToken")
            .field("sr", &self.raw_sr)
            .field("se", &self.raw_se)
            .field("skn", &self.skn)
            .field("sig", &"<redacted>")
            .finish()
    }
}

/// Makes a whole token for `resource_uri` (unencoded, e.g.
/// `myhub.azure-devices.net/devices/d1`). `sr`, `sig` and `skn` are encoded
/// like the Node SDK's strict `encodeURIComponent` (upper-case hex).
pub fn generate_token(
    resource_uri: &str,
    key_base64: &str,
    key_name: Option<&str>,
    expiry_unix: i64,
) -> HubResult<String> {
    if resource_uri.is_empty() {
        return Err(HubError::invalid("The SAS resource URI is empty"));
    }
    if expiry_unix < 0 {
        return Err(HubError::invalid("The SAS expiry must not be before 1970"));
    }
    let key = BASE64.decode(key_base64).map_err(|_| HubError::invalid("The SAS key is not valid base64"))?;
    if key.is_empty() {
        return Err(HubError::invalid("The SAS key is empty"));
    }
    let sr = strict_encode(resource_uri);
    let se = expiry_unix.to_string();
    let mut mac =
        HmacSha256::new_from_slice(&key).map_err(|_| HubError::invalid("The SAS key is not usable"))?;
    mac.update(format!("{sr}\n{se}").as_bytes());
    let sig = BASE64.encode(mac.finalize().into_bytes());
    let mut token = format!("{TOKEN_PREFIX}sr={sr}&sig={}&se={se}", strict_encode(&sig));
    if let Some(name) = key_name.filter(|n| !n.is_empty()) {
        token.push_str("&skn=");
        token.push_str(&strict_encode(name));
    }
    Ok(token)
}

fn strict_encode(s: &str) -> String {
    utf8_percent_encode(s, STRICT).to_string()
}

fn decode_text(s: &str) -> Option<String> {
    String::from_utf8(percent_decode(s)?).ok()
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn normalise(path: &str) -> String {
    segments(path).flat_map(|s| ["/", s]).collect()
}

/// Segment-wise prefix test shared by [`SasToken::covers`] and `authorize`.
pub(super) fn path_covers(scope: &str, target: &str) -> bool {
    let mut target = segments(target);
    segments(scope).all(|s| target.next() == Some(s))
}

/// Whether two paths name the same resource, segment by segment.
pub(super) fn same_path(a: &str, b: &str) -> bool {
    segments(a).eq(segments(b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HOST: &str = "myhub.azure-devices.net";
    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const OTHER_KEY: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
    const SE: i64 = 1_700_003_600;

    /// Python's `quote(s)`: like strict encoding but `/` stays.
    const PY_QUOTE: &AsciiSet = &STRICT.remove(b'/');

    fn names() -> Vec<String> {
        vec![HOST.to_owned()]
    }

    /// base64 HMAC over exactly the text the client puts in the token.
    fn sign(raw_sr: &str, se: i64) -> String {
        let mut mac = HmacSha256::new_from_slice(&BASE64.decode(KEY).unwrap()).unwrap();
        mac.update(format!("{raw_sr}\n{se}").as_bytes());
        BASE64.encode(mac.finalize().into_bytes())
    }

    fn lower_hex(encoded: &str) -> String {
        let mut out = String::new();
        let mut rest = encoded;
        while let Some(i) = rest.find('%') {
            out.push_str(&rest[..i]);
            out.push_str(&rest[i..i + 3].to_ascii_lowercase());
            rest = &rest[i + 3..];
        }
        out + rest
    }

    /// An expiry near SE whose signature over `raw_sr` contains `c`.
    fn se_with_sig_char(raw_sr: &str, c: char) -> i64 {
        (SE..SE + 1000).find(|se| sign(raw_sr, *se).contains(c)).unwrap()
    }

    #[test]
    fn generated_tokens_round_trip() {
        let text = generate_token(&format!("{HOST}/devices/d1"), KEY, None, SE).unwrap();
        assert!(text.starts_with("SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fd1&sig="));
        let t = SasToken::parse(&text).unwrap();
        assert!(t.verify(KEY));
        assert!(!t.verify(OTHER_KEY));
        assert_eq!(t.skn(), None);
        assert_eq!(t.expiry(), SE);
        assert_eq!(t.resource(), (HOST.to_owned(), "/devices/d1".to_owned()));
        assert_eq!(t.device_identity(), Some(("d1", None)));

        let text = generate_token(HOST, KEY, Some("iothub owner"), SE).unwrap();
        assert!(text.ends_with(&format!("&se={SE}&skn=iothub%20owner")));
        let t = SasToken::parse(&text).unwrap();
        assert!(t.verify(KEY));
        assert_eq!(t.skn(), Some("iothub owner"));
        assert_eq!(t.resource(), (HOST.to_owned(), String::new()));
    }

    #[test]
    fn generation_escapes_like_node_strict_encoding() {
        let text = generate_token("h/devices/a!'()*~b", KEY, None, SE).unwrap();
        assert!(text.contains("sr=h%2Fdevices%2Fa%21%27%28%29%2A~b&"));
        assert!(generate_token("", KEY, None, SE).is_err());
        assert!(generate_token(HOST, "", None, SE).is_err());
        assert!(generate_token(HOST, "@@", None, SE).is_err());
    }

    #[test]
    fn accepts_node_device_shape() {
        // sr, sig, skn, se order; strict-encoded sr and sig.
        let sr = strict_encode(&format!("{HOST}/devices/d1"));
        let text = format!("SharedAccessSignature sr={sr}&sig={}&se={SE}", strict_encode(&sign(&sr, SE)));
        let t = SasToken::parse(&text).unwrap();
        assert!(t.verify(KEY) && t.covers(&names(), "/devices/d1"));

        let text =
            format!("SharedAccessSignature sr={sr}&sig={}&skn=device&se={SE}", strict_encode(&sign(&sr, SE)));
        let t = SasToken::parse(&text).unwrap();
        assert!(t.verify(KEY));
        assert_eq!(t.skn(), Some("device"));
    }

    #[test]
    fn accepts_node_service_shape() {
        let text = format!(
            "SharedAccessSignature sr={HOST}&sig={}&skn=iothubowner&se={SE}",
            strict_encode(&sign(HOST, SE))
        );
        let t = SasToken::parse(&text).unwrap();
        assert!(t.verify(KEY));
        assert!(t.covers(&names(), ""));
        assert!(t.covers(&names(), "/devices/any"));
    }

    #[test]
    fn accepts_python_quote_plus_sr_and_quote_sig() {
        // quote_plus(sr) escapes like strict encoding when there is no space (a
        // '+' in the id becomes %2B); quote(sig) keeps '/' in the base64.
        let sr = strict_encode(&format!("{HOST}/devices/a+b"));
        assert!(sr.contains("%2B"));
        let se = se_with_sig_char(&sr, '/');
        let sig = utf8_percent_encode(&sign(&sr, se), PY_QUOTE).to_string();
        assert!(sig.contains('/'));
        let text = format!("SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn=service");
        let t = SasToken::parse(&text).unwrap();
        assert!(t.verify(KEY));
        assert_eq!(t.device_identity(), Some(("a+b", None)));
    }

    #[test]
    fn plus_in_sr_stays_literal() {
        let sr = format!("{HOST}/devices/a+b");
        let text = format!("SharedAccessSignature sr={sr}&sig={}&se={SE}", strict_encode(&sign(&sr, SE)));
        let t = SasToken::parse(&text).unwrap();
        assert!(t.verify(KEY));
        assert_eq!(t.device_identity(), Some(("a+b", None)));
    }

    #[test]
    fn accepts_upper_and_lower_case_hex() {
        let upper = strict_encode(&format!("{HOST}/devices/d1/modules/m1"));
        for sr in [upper.clone(), lower_hex(&upper)] {
            let se = se_with_sig_char(&sr, '+');
            let sig = strict_encode(&sign(&sr, se));
            for sig in [sig.clone(), lower_hex(&sig)] {
                let text = format!("SharedAccessSignature sig={sig}&se={se}&sr={sr}");
                let t = SasToken::parse(&text).unwrap();
                assert!(t.verify(KEY), "{text}");
                assert_eq!(t.device_identity(), Some(("d1", Some("m1"))));
            }
        }
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let text = generate_token(&format!("{HOST}/devices/d1"), KEY, None, SE).unwrap();
        let later = text.replace(&format!("se={SE}"), &format!("se={}", SE + 1));
        assert!(!SasToken::parse(&later).unwrap().verify(KEY));
        let other = text.replace("d1", "d2");
        assert!(!SasToken::parse(&other).unwrap().verify(KEY));
        // Re-encoding sr changes the signed text, so it must fail too.
        let reencoded = text.replace("%2Fdevices%2F", "%2fdevices%2f");
        assert!(!SasToken::parse(&reencoded).unwrap().verify(KEY));
        let t = SasToken::parse(&text).unwrap();
        assert!(!t.verify("") && !t.verify("not base64!"));
    }

    #[test]
    fn expiry_is_exclusive() {
        let t = SasToken::parse(&generate_token(HOST, KEY, None, SE).unwrap()).unwrap();
        assert!(!t.is_expired(SE - 1));
        assert!(t.is_expired(SE));
        assert!(t.is_expired(SE + 1));
    }

    #[test]
    fn host_matches_ignoring_case_only() {
        let t =
            SasToken::parse(&generate_token("MyHub.Azure-Devices.NET/devices/d1", KEY, None, SE).unwrap())
                .unwrap();
        assert!(t.covers(&names(), "/devices/d1"));
        assert!(t.covers(&["other".to_owned(), HOST.to_owned()], "/devices/d1"));
        assert!(!t.covers(&["otherhub.azure-devices.net".to_owned()], "/devices/d1"));
        assert!(!t.covers(&[], "/devices/d1"));
    }

    #[test]
    fn path_scope_is_a_whole_segment_prefix() {
        let t =
            SasToken::parse(&generate_token(&format!("{HOST}/devices/a/"), KEY, None, SE).unwrap()).unwrap();
        assert_eq!(t.resource().1, "/devices/a");
        assert!(t.covers(&names(), "/devices/a"));
        assert!(t.covers(&names(), "/devices/a/"));
        assert!(t.covers(&names(), "/devices/a/modules/m"));
        assert!(!t.covers(&names(), "/devices/ab"));
        assert!(!t.covers(&names(), "/devices/A"));
        assert!(!t.covers(&names(), "/devices"));
        assert!(!t.covers(&names(), ""));
        let gateway =
            SasToken::parse(&generate_token(&format!("{HOST}/devices"), KEY, Some("device"), SE).unwrap())
                .unwrap();
        assert!(gateway.covers(&names(), "/devices/anything"));
        assert_eq!(gateway.device_identity(), None);
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        let sig = strict_encode(&sign(HOST, SE));
        let bad = [
            String::new(),
            "SharedAccessSignature".into(),
            "SharedAccessSignature ".into(),
            format!("sr={HOST}&sig={sig}&se={SE}"),
            format!("sharedaccesssignature sr={HOST}&sig={sig}&se={SE}"),
            format!("SharedAccessSignature sig={sig}&se={SE}"),
            format!("SharedAccessSignature sr={HOST}&se={SE}"),
            format!("SharedAccessSignature sr={HOST}&sig={sig}"),
            format!("SharedAccessSignature sr={HOST}&sig={sig}&se={SE}&se={SE}"),
            format!("SharedAccessSignature sr={HOST}&sr={HOST}&sig={sig}&se={SE}"),
            format!("SharedAccessSignature sr={HOST}&sig={sig}&se={SE}&skn=a&skn=b"),
            format!("SharedAccessSignature sr={HOST}&sig={sig}&se={SE}&skn="),
            format!("SharedAccessSignature sr=&sig={sig}&se={SE}"),
            format!("SharedAccessSignature sr={HOST}&sig={sig}&se=12.5"),
            format!("SharedAccessSignature sr={HOST}&sig={sig}&se=-5"),
            format!("SharedAccessSignature sr={HOST}&sig={sig}&se=+5"),
            format!("SharedAccessSignature sr={HOST}&sig={sig}&se=99999999999999999999999"),
            format!("SharedAccessSignature sr={HOST}&sig=!!notbase64&se={SE}"),
            format!("SharedAccessSignature sr={HOST}&sig=%zz{sig}&se={SE}"),
            format!("SharedAccessSignature sr={HOST}&sig={sig}%2&se={SE}"),
            format!("SharedAccessSignature sr={HOST}%&sig={sig}&se={SE}"),
            format!("SharedAccessSignature sr={HOST}%ff%fe&sig={sig}&se={SE}"),
            format!("SharedAccessSignature sr={HOST}&sig={sig}&se={SE}&junk"),
            "SharedAccessSignature %%%&&&===".into(),
            "SharedAccessSignature sr=é%C3&sig=é&se=1".into(),
        ];
        for text in bad {
            let err = SasToken::parse(&text).unwrap_err();
            assert_eq!(err.code, crate::ErrorCode::IotHubUnauthorizedAccess, "{text}");
        }
    }

    #[test]
    fn unknown_fields_and_empty_segments_are_ignored() {
        let sig = strict_encode(&sign(HOST, SE));
        let text = format!("SharedAccessSignature &sr={HOST}&&foo=bar&sig={sig}&se={SE}&");
        assert!(SasToken::parse(&text).unwrap().verify(KEY));
    }

    #[test]
    fn debug_hides_the_signature() {
        let text = generate_token(HOST, KEY, None, SE).unwrap();
        let t = SasToken::parse(&text).unwrap();
        let sig = text.split("sig=").nth(1).unwrap().split('&').next().unwrap();
        assert!(!format!("{t:?}").contains(sig));
    }
}
