//! Masking secrets in text that is printed or logged.
//!
//! Tokens travel in URLs (`?hs_token=...`, the form browsers must use for
//! WebSockets), in `user:password@` URL authorities (a NATS cluster URL)
//! and in `Bearer` headers quoted by error messages. Whatever reaches a
//! terminal or a log ends up in scrollback, CI output and log shippers, so
//! every URL the host logs and every error the CLI prints passes through
//! [`redact`] first: one function, so a new secret-bearing form is masked
//! everywhere at once.

/// Query parameter names whose values are secrets (matched as substrings,
/// case-insensitively).
const SECRET_PARAMS: [&str; 6] = ["token", "secret", "password", "key", "auth", "jwt"];

/// Characters that end a query value in running text.
fn ends_value(c: char) -> bool {
    c == '&' || c == '#' || c.is_whitespace() || "\"'<>(),;`]}".contains(c)
}

/// `text` with secret query values, URL passwords and bearer tokens
/// replaced by `***`.
pub fn redact(text: &str) -> String {
    mask_bearer(&mask_userinfo(&mask_query(text)))
}

/// `name=value` after `?` or `&` with a secret-looking name.
fn mask_query(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    // Start of the current parameter name, when inside a query.
    let mut name_start: Option<usize> = None;
    while let Some((i, c)) = chars.next() {
        out.push(c);
        match c {
            '?' | '&' => name_start = Some(i + 1),
            '=' => {
                let Some(start) = name_start.take() else {
                    continue;
                };
                let name = text[start..i].to_ascii_lowercase();
                if SECRET_PARAMS.iter().any(|word| name.contains(word)) {
                    let mut masked = false;
                    while let Some(&(_, next)) = chars.peek() {
                        // Tokens hold no `:`; text after a URL often does.
                        if ends_value(next) || next == ':' {
                            break;
                        }
                        chars.next();
                        masked = true;
                    }
                    if masked {
                        out.push_str("***");
                    }
                }
            }
            c if ends_value(c) && c != '&' => name_start = None,
            _ => {}
        }
    }
    out
}

/// `scheme://user:password@host` -> `scheme://user:***@host`.
fn mask_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| c == '/' || c == '?' || c == '#' || ends_value(c))
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(at) if authority[..at].contains(':') => {
                let user = &authority[..authority[..at].find(':').expect("checked")];
                out.push_str(user);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

/// `Bearer TOKEN` -> `Bearer ***`.
fn mask_bearer(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("Bearer ") {
        let (before, after) = rest.split_at(at + "Bearer ".len());
        out.push_str(before);
        let end = after.find(ends_value).unwrap_or(after.len());
        if end > 0 {
            out.push_str("***");
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn secrets_in_urls_and_headers_are_masked() {
        assert_eq!(
            redact("connecting to ws://h:1/?hs_token=eyJ.abc.def&x=1 failed"),
            "connecting to ws://h:1/?hs_token=***&x=1 failed"
        );
        assert_eq!(
            redact("to ws://h:1/?hs_token=eyJ.abc: refused"),
            "to ws://h:1/?hs_token=***: refused"
        );
        assert_eq!(
            redact("GET /x?view=Token/list&access_token=s3cret"),
            "GET /x?view=Token/list&access_token=***"
        );
        assert_eq!(
            redact("nats://ops:hunter2@nats.internal:4222"),
            "nats://ops:***@nats.internal:4222"
        );
        assert_eq!(
            redact("Authorization: Bearer abc.def"),
            "Authorization: Bearer ***"
        );
        let plain = "http://127.0.0.1:8877/plugins?view=a=b and user@example.com";
        assert_eq!(redact(plain), plain);
    }
}
