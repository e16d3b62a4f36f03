//! `multipart/form-data` (RFC 7578), as Account Engagement's Import API
//! takes a file: a JSON part (`input`) and a CSV part (`file`) in one
//! request. Written here rather than pulled in with a client and a server
//! feature: the connector only sends such bodies and the sandbox server
//! only reads them, and both need no more than named parts of bytes.

/// One part of a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The form field's name (`Content-Disposition: form-data; name=...`).
    pub name: String,
    /// A file's name, for a file part.
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

impl Part {
    pub fn new(name: &str, content_type: &str, data: Vec<u8>) -> Self {
        Part { name: name.to_owned(), filename: None, content_type: Some(content_type.to_owned()), data }
    }

    pub fn file(name: &str, filename: &str, content_type: &str, data: Vec<u8>) -> Self {
        Part { filename: Some(filename.to_owned()), ..Part::new(name, content_type, data) }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The body of `parts` and its `Content-Type` (with the boundary), the
/// boundary chosen so that no part contains it.
pub fn encode(parts: &[Part]) -> (String, Vec<u8>) {
    let mut n: u64 = 0x5eed_c0de;
    let boundary = loop {
        let b = format!("crmsync-{n:016x}");
        if !parts.iter().any(|p| contains(&p.data, b.as_bytes())) {
            break b;
        }
        n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    };
    let mut body = Vec::new();
    for p in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{}\"", p.name);
        if let Some(f) = &p.filename {
            disposition.push_str(&format!("; filename=\"{f}\""));
        }
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"\r\n");
        if let Some(ct) = &p.content_type {
            body.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(&p.data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A parameter of a header value (`name="x"` or `boundary=x`).
fn param<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    header.split(';').map(str::trim).find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim().eq_ignore_ascii_case(key).then(|| v.trim().trim_matches('"'))
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

/// The parts of a body sent with `content_type`.
pub fn parse(content_type: &str, body: &[u8]) -> Result<Vec<Part>, String> {
    if !content_type.trim_start().to_ascii_lowercase().starts_with("multipart/form-data") {
        return Err(format!("expected multipart/form-data, not {content_type}"));
    }
    let boundary = param(content_type, "boundary").filter(|b| !b.is_empty()).ok_or("the content type names no boundary")?;
    let delimiter = format!("--{boundary}").into_bytes();
    let mut at = find(body, &delimiter, 0).ok_or("the body holds no part")? + delimiter.len();
    let mut parts = Vec::new();
    loop {
        if body.get(at..at + 2) == Some(b"--") {
            return Ok(parts);
        }
        // The rest of the delimiter line, then the part's headers.
        at = find(body, b"\r\n", at).ok_or("a part is cut short")? + 2;
        let headers_end = find(body, b"\r\n\r\n", at).ok_or("a part's headers do not end")?;
        let headers = String::from_utf8_lossy(&body[at..headers_end]).into_owned();
        let data_start = headers_end + 4;
        let next = find(body, &[b"\r\n".as_slice(), &delimiter].concat(), data_start).ok_or("a part does not end")?;
        let mut part = Part { name: String::new(), filename: None, content_type: None, data: body[data_start..next].to_vec() };
        for line in headers.split("\r\n") {
            let Some((k, v)) = line.split_once(':') else { continue };
            if k.trim().eq_ignore_ascii_case("content-disposition") {
                part.name = param(v, "name").unwrap_or_default().to_owned();
                part.filename = param(v, "filename").map(str::to_owned);
            } else if k.trim().eq_ignore_ascii_case("content-type") {
                part.content_type = Some(v.trim().to_owned());
            }
        }
        if part.name.is_empty() {
            return Err("a part has no name".into());
        }
        parts.push(part);
        at = next + 2 + delimiter.len();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Bodies made of multipart's own pieces in any order, and any bytes.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"--b".to_vec()),
            Just(b"--b--".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r\n\r\n".to_vec()),
            Just(b"Content-Disposition: form-data; name=\"file\"; filename=\"p.csv\"".to_vec()),
            Just(b"Content-Type: text/csv".to_vec()),
            Just(b"x,y\n1,2".to_vec()),
            Just(vec![0xff, 0xfe]),
            prop::collection::vec(any::<u8>(), 0..8),
        ];
        prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        /// Whatever a client sends, the import's body is read or refused,
        /// never a panic; what encodes parses back the same.
        #[test]
        fn any_body_is_read_or_refused_without_a_panic(
            body in body(),
            content_type in prop_oneof![Just("multipart/form-data; boundary=b".to_owned()), any::<String>()],
            data in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let _ = parse(&content_type, &body);
            let parts = [Part::file("file", "p.csv", "text/csv", data)];
            let (content_type, body) = encode(&parts);
            prop_assert_eq!(parse(&content_type, &body).unwrap(), parts);
        }

        /// A Bulk upload's CSV, whatever its bytes: read or refused.
        #[test]
        fn any_csv_is_read_or_refused_without_a_panic(data in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = crate::salesforce::read_csv(&data);
        }
    }

    #[test]
    fn parts_round_trip_and_the_boundary_never_appears_in_them() {
        let csv = b"matchId,firstName\r\n1,\"Jo, \"\"the\"\" one\"\r\n--crmsync-000000005eedc0de\r\n".to_vec();
        let parts =
            [Part::new("input", "application/json", br#"{"operation":"Upsert"}"#.to_vec()), Part::file("file", "p.csv", "text/csv", csv)];
        let (content_type, body) = encode(&parts);
        assert!(content_type.starts_with("multipart/form-data; boundary=crmsync-"));
        assert!(!content_type.ends_with("5eedc0de"), "a boundary the file holds is not used");
        assert_eq!(parse(&content_type, &body).unwrap(), parts);
        assert!(parse("application/json", &body).is_err());
        assert!(parse("multipart/form-data", &body).is_err(), "no boundary");
        assert!(parse(&content_type, b"nothing").is_err());
        let empty = encode(&[]);
        assert_eq!(parse(&empty.0, &empty.1).unwrap(), []);
    }
}
