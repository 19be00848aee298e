//! Passwords out of URLs, so a `DATABASE_URL` can be logged.

/// The URL with any password replaced by `***`, for logs and errors: the
/// one in the user info, a `password=` query parameter, or a `password=`
/// keyword (quoted or not).
pub(crate) fn redact(url: &str) -> String {
    let url = match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", redact_user_info(rest)),
        None => url.to_owned(),
    };
    redact_password_values(&url)
}

fn redact_user_info(rest: &str) -> String {
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@').and_then(|at| Some((at, rest[..at].split_once(':')?))) {
        Some((at, (user, _password))) => format!("{user}:***{}", &rest[at..]),
        None => rest.to_owned(),
    }
}

/// Replaces the value after every `password=`, up to `&` or whitespace, or
/// to the closing quote of a quoted value.
fn redact_password_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("password=") {
        let value_start = at + "password=".len();
        out.push_str(&rest[..value_start]);
        out.push_str("***");
        let value = &rest[value_start..];
        let value_end = match value.strip_prefix('\'') {
            Some(quoted) => quoted.find('\'').map_or(value.len(), |close| close + 2),
            None => value.find(['&', ' ', '\t', '\n']).unwrap_or(value.len()),
        };
        rest = &value[value_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h:5432/db?x=1"), "postgres://u:***@h:5432/db?x=1");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("host=h password=secret user=u"), "host=h password=*** user=u");
        assert_eq!(redact("host=h password='s3cret pw' user=u"), "host=h password=*** user=u");
        assert_eq!(
            redact("postgres://u@h/db?password=s3cret-pw&sslmode=off"),
            "postgres://u@h/db?password=***&sslmode=off"
        );
        assert_eq!(redact("postgres://u:a@b@h/db?password=x"), "postgres://u:***@h/db?password=***");
    }
}
