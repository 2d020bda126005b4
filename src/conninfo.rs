//! PostgreSQL connection strings as they may be shown: every secret-bearing part
//! masked. [`redact`] is the one function through which a URL reaches a person (the
//! store's `path` and `repr`, `health()`, the command line, error messages); it reads
//! the string the way the driver does (tokio-postgres: a `postgresql://`/`postgres://`
//! URL, else `key=value` pairs), so what the driver would take as a secret is masked.

/// Keys whose value is a secret, or names where one is kept.
const SECRET_KEYS: &[&str] = &["password", "sslpassword", "passfile", "sslkey"];

const MASK: &str = "***";

fn is_secret(key: &str) -> bool {
    SECRET_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key))
}

/// `url` with the password of `user:password@` and the values of `password`,
/// `sslpassword`, `passfile` and `sslkey` (URL query parameters or `key=value` pairs)
/// replaced by `***`.
pub fn redact(url: &str) -> String {
    match ["postgresql://", "postgres://"].iter().find_map(|p| url.strip_prefix(p).map(|rest| (p, rest))) {
        Some((prefix, rest)) => format!("{prefix}{}", redact_url_body(rest)),
        None => redact_key_values(url),
    }
}

/// After the scheme: the credentials end at the first `@` anywhere (as the driver reads
/// them), the password after their first `:`; parameters follow the first `?`.
fn redact_url_body(rest: &str) -> String {
    let (user, tail) = match rest.split_once('@') {
        Some((creds, tail)) => {
            let user = match creds.split_once(':') {
                Some((user, _)) => format!("{}:{MASK}", redact_query(user)),
                None => redact_query(creds),
            };
            (Some(user), tail)
        }
        None => (None, rest),
    };
    let tail = redact_query(tail);
    match user {
        Some(user) => format!("{user}@{tail}"),
        None => tail,
    }
}

/// The `&`-separated parameters after the first `?` of `s`, secret values masked.
fn redact_query(s: &str) -> String {
    let Some((head, query)) = s.split_once('?') else { return s.to_owned() };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _)) if is_secret(&percent_decode(key)) => format!("{key}={MASK}"),
            _ => param.to_owned(),
        })
        .collect();
    format!("{head}?{}", params.join("&"))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `key=value` pairs (`host=h password='a b'`): secret values masked, the rest kept as
/// written. Past what cannot be read as pairs, everything is masked.
fn redact_key_values(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let trimmed = rest.trim_start();
        out.push_str(&rest[..rest.len() - trimmed.len()]);
        rest = trimmed;
        if rest.is_empty() {
            return out;
        }
        let key_len = rest.find(|c: char| c.is_whitespace() || c == '=').unwrap_or(rest.len());
        let key = &rest[..key_len];
        let after_key = &rest[key_len..];
        let after_ws = after_key.trim_start();
        let Some(value_part) = after_ws.strip_prefix('=') else {
            // Not a pair: nothing the driver would accept; shown masked.
            out.push_str(MASK);
            return out;
        };
        let value_start = value_part.len() - value_part.trim_start().len();
        let Some(value_len) = value_length(&value_part[value_start..]) else {
            out.push_str(key);
            out.push_str(&after_key[..after_key.len() - value_part.len()]);
            out.push_str(MASK);
            return out;
        };
        let written_up_to_value = &rest[..rest.len() - value_part.len() + value_start];
        let value = &value_part[value_start..value_start + value_len];
        out.push_str(written_up_to_value);
        out.push_str(if is_secret(key) { MASK } else { value });
        rest = &value_part[value_start + value_len..];
    }
}

/// The length of one value as the driver reads it: `'quoted'` (backslash escapes) or up
/// to whitespace (backslash escapes); `None` when it does not end (an open quote).
fn value_length(s: &str) -> Option<usize> {
    let mut chars = s.char_indices();
    let quoted = s.starts_with('\'');
    if quoted {
        chars.next();
    }
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '\'' if quoted => return Some(i + 1),
            c if !quoted && c.is_whitespace() => return Some(i),
            _ => {}
        }
    }
    if quoted {
        None
    } else {
        Some(s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn urls_lose_every_secret() {
        for (given, shown) in [
            ("postgresql://u:pw@h:5/db", "postgresql://u:***@h:5/db"),
            ("postgresql://u@h/db?password=pw&sslmode=prefer", "postgresql://u@h/db?password=***&sslmode=prefer"),
            ("postgres://h/db?%70assword=pw", "postgres://h/db?%70assword=***"),
            (
                "postgresql://h/db?sslpassword=a&passfile=/p&sslkey=/k&PASSWORD=b&application_name=x",
                "postgresql://h/db?sslpassword=***&passfile=***&sslkey=***&PASSWORD=***&application_name=x",
            ),
            // The driver takes everything up to the first `@` as the credentials.
            ("postgresql://h/db?password=se@cret", "postgresql://h/db?password=***@cret"),
            ("postgresql://u:p@ss@h/db", "postgresql://u:***@ss@h/db"),
            (
                "postgresql://u@h1,h2/db?target_session_attrs=read-write",
                "postgresql://u@h1,h2/db?target_session_attrs=read-write",
            ),
        ] {
            assert_eq!(redact(given), shown, "{given}");
        }
    }

    #[test]
    fn key_value_strings_lose_every_secret() {
        for (given, shown) in [
            ("host=h password=pw user=u", "host=h password=*** user=u"),
            ("host=h password = 'a b\\' c' dbname=d", "host=h password = *** dbname=d"),
            ("password=a\\ b port=1", "password=*** port=1"),
            ("host=h password='open", "host=h password=***"),
            ("host=h garbage", "host=h ***"),
        ] {
            assert_eq!(redact(given), shown, "{given}");
        }
    }
}
