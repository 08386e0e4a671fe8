//! Form posts: every state-changing request of the UI is a form post taken by
//! [`Posted`] (signed in) or [`SignInPosted`] (the sign-in forms), which refuse it before
//! the handler runs when
//! - its `Origin` is present and is not this site (or `Sec-Fetch-Site` says `cross-site`),
//! - it is not `application/x-www-form-urlencoded`, or larger than [`MAX_FORM_BYTES`],
//! - a field is not UTF-8 once decoded, or holds a control character (tabs and line ends
//!   aside),
//! - its `csrf_token` field is missing or is not the session's (compared in constant time).
//!
//! Form structs take every field as text (`#[serde(default)]` strings); the handler turns
//! them into the API's body, so that a wrong number is the API's message, not a parser's.

use super::session::{self, Session, SIGN_IN_COOKIE};
use super::web::{Site, UiError};
use super::UiState;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// Largest form body taken.
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// The name of every form's CSRF field.
pub const CSRF_FIELD: &str = "csrf_token";

/// A post that asks before it destroys: `confirm=yes` when the person confirmed (the
/// browser's dialog, or the page that asks), else nothing yet.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct Confirmed {
    pub confirm: String,
}

impl Confirmed {
    pub fn is_confirmed(&self) -> bool {
        self.confirm == "yes"
    }
}

/// A form posted by a signed-in browser, checked (see the module docs), with the session.
pub struct Posted<T> {
    pub session: Session,
    pub form: T,
}

/// A sign-in form, checked against the `tollgate_ui_signin` cookie (double submit): a page
/// of another site cannot sign this browser in, to an account of its choosing.
pub struct SignInPosted<T> {
    pub site: Site,
    pub form: T,
}

impl<T: DeserializeOwned> FromRequest<UiState> for Posted<T> {
    type Rejection = Response;

    async fn from_request(request: Request, ui: &UiState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let site = Site::of(&parts.headers, &parts.extensions, ui);
        check_origin(&parts.headers, &site).map_err(IntoResponse::into_response)?;
        let session = Session::from_request_parts(&mut parts, ui).await?;
        let (fields, bytes) = read(&parts.headers, body)
            .await
            .map_err(IntoResponse::into_response)?;
        let presented = field(&fields, CSRF_FIELD).unwrap_or_default();
        if !session.csrf_matches(presented) {
            return Err(csrf_refused().into_response());
        }
        let form = parse(&bytes).map_err(IntoResponse::into_response)?;
        Ok(Posted { session, form })
    }
}

impl<T: DeserializeOwned> FromRequest<UiState> for SignInPosted<T> {
    type Rejection = Response;

    async fn from_request(request: Request, ui: &UiState) -> Result<Self, Response> {
        let (parts, body) = request.into_parts();
        let site = Site::of(&parts.headers, &parts.extensions, ui);
        check_origin(&parts.headers, &site).map_err(IntoResponse::into_response)?;
        let (fields, bytes) = read(&parts.headers, body)
            .await
            .map_err(IntoResponse::into_response)?;
        let presented = field(&fields, CSRF_FIELD).unwrap_or_default();
        let matches = session::cookie_token(&parts.headers, SIGN_IN_COOKIE)
            .is_some_and(|token| session::csrf_matches(token, presented));
        if !matches {
            return Err(UiError::forbidden(
                "The sign-in form has expired or did not come from this site. Reload the sign-in page and try again.",
            )
            .into_response());
        }
        let form = parse(&bytes).map_err(IntoResponse::into_response)?;
        Ok(SignInPosted { site, form })
    }
}

fn csrf_refused() -> UiError {
    UiError::forbidden(
        "This form's security token is missing or is not this session's (it may come from another site, or from a page opened before you signed in again). Nothing was changed. Reload the page and try again.",
    )
}

/// Refuses a request another site's page sent.
pub fn check_origin(headers: &HeaderMap, site: &Site) -> Result<(), UiError> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = origin.to_str().is_ok_and(|o| site.is_origin(o));
        if !same {
            return Err(UiError::forbidden(
                "This form was sent from another site; it was refused and nothing was changed.",
            ));
        }
    }
    let cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if cross_site {
        return Err(UiError::forbidden(
            "This form was sent from another site; it was refused and nothing was changed.",
        ));
    }
    Ok(())
}

/// The body as its decoded fields, and as it came.
async fn read(
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<(Vec<(String, String)>, axum::body::Bytes), UiError> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Err(UiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Forms are sent as application/x-www-form-urlencoded.",
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| {
            UiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "The form is larger than {} KiB; nothing was changed.",
                    MAX_FORM_BYTES / 1024
                ),
            )
        })?;
    let fields = decode(&bytes)?;
    Ok((fields, bytes))
}

/// Decodes `name=value&…` strictly: a field that is not UTF-8, or holds a control
/// character other than a tab or a line end, is refused (browsers send neither), where a
/// lenient decoder would put U+FFFD in its place.
pub fn decode(body: &[u8]) -> Result<Vec<(String, String)>, UiError> {
    let mut fields = Vec::new();
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        let name =
            text(name).map_err(|_| UiError::bad_request("A field name is not valid text."))?;
        let value = text(value).map_err(|why| {
            UiError::bad_request(format!(
                "The field `{}` {why}.",
                name.chars().take(64).collect::<String>()
            ))
        })?;
        fields.push((name, value));
    }
    Ok(fields)
}

fn text(raw: &[u8]) -> Result<String, &'static str> {
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&plus_as_space).collect();
    let text = String::from_utf8(bytes).map_err(|_| "is not valid UTF-8 text")?;
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\r' | '\n'))
    {
        return Err("contains control characters");
    }
    Ok(text)
}

/// A page's query string, decoded as strictly as a form ([`decode`]): the filters of a
/// listing, a page's notice.
pub struct StrictQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, UiError> {
        let raw = parts.uri.query().unwrap_or_default().as_bytes();
        decode(raw)?;
        parse(raw).map(StrictQuery)
    }
}

/// The first value of field `name`.
pub fn field<'f>(fields: &'f [(String, String)], name: &str) -> Option<&'f str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, UiError> {
    serde_urlencoded::from_bytes(bytes)
        .map_err(|e| UiError::bad_request(format!("The form cannot be read: {e}.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_decoded_strictly() {
        let fields = decode(b"name=a+b%20c&csrf_token=x&empty=&flag").unwrap();
        assert_eq!(field(&fields, "name"), Some("a b c"));
        assert_eq!(field(&fields, "empty"), Some(""));
        assert_eq!(field(&fields, "flag"), Some(""));
        assert_eq!(field(&fields, "missing"), None);
        assert_eq!(
            field(&decode("q=%C3%A9t%C3%A9".as_bytes()).unwrap(), "q"),
            Some("été")
        );
        let bad = decode(b"name=%FF%FE").unwrap_err();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert!(
            bad.message.contains("`name` is not valid UTF-8"),
            "{}",
            bad.message
        );
        let bad = decode(b"name=a%00b").unwrap_err();
        assert!(
            bad.message.contains("control characters"),
            "{}",
            bad.message
        );
        assert!(decode(b"note=line%0D%0Anext%09tab").is_ok());
    }
}
