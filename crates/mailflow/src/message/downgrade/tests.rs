//! The converter against mail-parser: whatever it re-encodes must decode to what the
//! original said, and whatever was 7-bit must come out byte for byte.

use mail_parser::{MessageParser, MimeHeaders, PartType};

use super::{is_8bit, to_7bit};

fn parse(m: &[u8]) -> mail_parser::Message<'_> {
    MessageParser::default().parse(m).expect("parses")
}

/// Every part's decoded content, in order (the multipart containers' too: empty).
fn decoded_parts(m: &[u8]) -> Vec<Vec<u8>> {
    parse(m)
        .parts
        .iter()
        .map(|p| match &p.body {
            PartType::Multipart(_) | PartType::Message(_) => Vec::new(),
            _ => p.contents().to_vec(),
        })
        .collect()
}

fn text(out: &[u8]) -> &str {
    std::str::from_utf8(out).expect("7-bit output is ASCII")
}

fn assert_7bit(out: &[u8]) {
    assert!(
        out.is_ascii(),
        "not 7-bit:\n{}",
        String::from_utf8_lossy(out)
    );
    for line in out.split(|&b| b == b'\n') {
        assert!(line.len() <= 1000, "line over 998 octets");
    }
}

#[test]
fn a_7bit_message_is_left_alone() {
    let m = b"From: a@b.test\r\nSubject: plain\r\n\r\nJust ASCII.\r\n";
    assert!(!is_8bit(m));
    assert_eq!(to_7bit(m, true), m);
}

#[test]
fn a_non_mime_8bit_body_becomes_quoted_printable_utf8_text() {
    let body =
        "Gr\u{fc}\u{df}e aus K\u{f6}ln \u{2014} caf\u{e9}\r\n.a dot line\r\ntrailing space \r\n";
    let m = format!("From: a@b.test\r\nSubject: hello\r\n\r\n{body}");
    let out = to_7bit(m.as_bytes(), true);
    assert_7bit(&out);
    let t = text(&out);
    assert!(t.starts_with("From: a@b.test\r\nSubject: hello\r\n"), "{t}");
    assert!(t.contains("MIME-Version: 1.0\r\n"), "{t}");
    assert!(
        t.contains("Content-Type: text/plain; charset=utf-8\r\n"),
        "{t}"
    );
    assert!(
        t.contains("Content-Transfer-Encoding: quoted-printable\r\n\r\n"),
        "{t}"
    );
    // Trailing white space is protected, line breaks stay line breaks.
    assert!(t.contains("trailing space=20\r\n"), "{t}");
    let parsed = parse(&out);
    assert_eq!(parsed.body_text(0).unwrap(), body);
}

#[test]
fn a_non_utf8_body_is_labelled_unknown_8bit_and_keeps_its_bytes() {
    let body: &[u8] = b"Caf\xe9 cr\xe8me\r\n";
    let m = [b"Subject: latin-1\r\n\r\n".as_slice(), body].concat();
    let out = to_7bit(&m, true);
    assert_7bit(&out);
    let t = text(&out);
    assert!(t.contains("charset=unknown-8bit"), "{t}");
    let encoded = crate::message::header_len(&out);
    let decoded =
        quoted_printable::decode(&out[encoded..], quoted_printable::ParseMode::Strict).unwrap();
    assert_eq!(decoded, body);
}

const MIXED: &str = "From: Sender <s@fabrikam.test>\r\n\
Subject: parts\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"==b1==\"\r\n\
\r\n\
This is the preamble.\r\n\
--==b1==\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
Seven-bit part.\r\n\
--==b1==\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Z\u{fc}rich \u{2192} M\u{fc}nchen\r\n\
--==b1==\r\n\
Content-Type: text/html; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
<p>\u{e9}t\u{e9}</p>\r\n\
--==b1==  \r\n\
Content-Type: multipart/alternative; boundary=inner\r\n\
\r\n\
--inner\r\n\
\r\n\
Untyped part: d\u{e9}faut\r\n\
--inner--\r\n\
--==b1==--\r\n\
Epilogue.\r\n";

#[test]
fn multipart_leaves_are_reencoded_and_decode_to_the_original() {
    let mut m = MIXED.as_bytes().to_vec();
    // A binary attachment: every 8-bit value, no bare CR or LF.
    let attachment: Vec<u8> = (0x80..=0xffu8).chain(b"end".iter().copied()).collect();
    let at = m.len() - "--==b1==--\r\nEpilogue.\r\n".len();
    let part = [
        b"--==b1==\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"blob.bin\"\r\nContent-Transfer-Encoding: binary\r\n\r\n".as_slice(),
        &attachment,
        b"\r\n",
    ]
    .concat();
    m.splice(at..at, part);
    let out = to_7bit(&m, true);
    assert_7bit(&out);
    let t = text(&out);
    // 7-bit parts, the preamble, delimiters and the epilogue are byte for byte.
    assert!(t.contains("\r\n\r\nThis is the preamble.\r\n--==b1==\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nSeven-bit part.\r\n--==b1==\r\n"), "{t}");
    assert!(t.contains("--==b1==  \r\n"), "transport padding kept: {t}");
    assert!(t.ends_with("\r\n--==b1==--\r\nEpilogue.\r\n"), "{t}");
    // Each 8-bit leaf says how it is encoded now.
    assert_eq!(
        t.matches("Content-Transfer-Encoding: quoted-printable")
            .count(),
        3,
        "{t}"
    );
    assert_eq!(
        t.matches("Content-Transfer-Encoding: base64").count(),
        1,
        "{t}"
    );
    assert!(!t.contains("Content-Transfer-Encoding: 8bit"), "{t}");
    assert!(!t.contains("Content-Transfer-Encoding: binary"), "{t}");
    // The untyped part (text/plain by default) gets its charset.
    assert!(t.contains("--inner\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nUntyped part: d=C3=A9faut"), "{t}");
    // mail-parser sees the same parts with the same decoded content.
    let (before, after) = (decoded_parts(&m), decoded_parts(&out));
    assert_eq!(before.len(), after.len());
    assert_eq!(before, after);
    assert!(after.contains(&attachment), "the attachment decodes");
    assert_eq!(
        parse(&out).attachment(0).unwrap().attachment_name(),
        Some("blob.bin")
    );
}

#[test]
fn only_whole_delimiter_lines_split_parts() {
    let body = b"pre\r\n--b\r\none\r\n--bb not it\r\n--b \t\r\ntwo\r\n--b--\r\n--b\r\nafter close";
    let found: Vec<(usize, usize, bool)> = super::delimiters(body, b"b")
        .iter()
        .map(|d| (d.start, d.line_end, d.close))
        .collect();
    assert_eq!(found, vec![(3, 10, false), (26, 35, false), (38, 47, true)]);
    assert_eq!(&body[3..10], b"\r\n--b\r\n");
    assert_eq!(&body[26..35], b"\r\n--b \t\r\n");
    assert_eq!(&body[38..47], b"\r\n--b--\r\n");
}

#[test]
fn an_attached_message_is_converted_inside_and_relabelled_7bit() {
    let m = "Subject: fwd\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
--b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
From: x@y.test\r\nSubject: inner \u{e4}\r\n\r\nInner b\u{f6}dy\r\n\
--b--\r\n";
    let out = to_7bit(m.as_bytes(), true);
    assert_7bit(&out);
    let t = text(&out);
    assert!(t.contains("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\nFrom: x@y.test\r\n"), "{t}");
    assert!(t.contains("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nInner b=C3=B6dy"), "{t}");
    let parsed = parse(&out);
    let inner = parsed
        .parts
        .iter()
        .find_map(|p| match &p.body {
            PartType::Message(m) => Some(m),
            _ => None,
        })
        .expect("the attached message");
    assert_eq!(inner.subject(), Some("inner \u{e4}"));
    // The CRLF before the delimiter belongs to the delimiter (RFC 2046 §5.1.1).
    assert_eq!(inner.body_text(0).unwrap(), "Inner b\u{f6}dy");
}

#[test]
fn a_digest_part_defaults_to_message_rfc822() {
    let m = "MIME-Version: 1.0\r\nContent-Type: multipart/digest; boundary=d\r\n\r\n\
--d\r\n\r\nSubject: one\r\n\r\nnum\u{e9}ro un\r\n--d--\r\n";
    let out = to_7bit(m.as_bytes(), true);
    assert_7bit(&out);
    // The part is a message: its body is converted, not the part base64'd whole.
    assert!(
        text(&out).contains("--d\r\n\r\nSubject: one\r\nMIME-Version: 1.0\r\n"),
        "{}",
        text(&out)
    );
}

#[test]
fn eight_bit_bytes_in_declared_qp_or_base64_parts_keep_the_decoded_content() {
    let m = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nfa\xe7ade =E9t=E9\r\n\
--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\naGVs\xffbG8=\r\n\
--b--\r\n";
    let out = to_7bit(m, true);
    assert_7bit(&out);
    let t = text(&out);
    assert!(t.contains("fa=E7ade =E9t=E9"), "{t}");
    assert!(t.contains("aGVsbG8="), "{t}");
    let parts = decoded_parts(&out);
    assert!(parts.contains(&b"hello".to_vec()), "{parts:?}");
}

#[test]
fn headers_get_encoded_words_and_decode_to_the_original() {
    let subject = "R\u{e9}union \u{e0} Z\u{fc}rich \u{2014} ordre du jour, pi\u{e8}ces jointes et d\u{e9}tails pratiques pour la r\u{e9}union";
    let m = format!(
        "From: \"Jos\u{e9}, P\u{e9}rez\" <jose@fabrikam.test>\r\n\
To: Zo\u{eb} Meyer<zoe@contoso.test>, plain@contoso.test,\r\n \u{c5}sa <asa@contoso.test>\r\n\
Subject: {subject}\r\n\
Message-ID: <abc@fabrikam.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nok\r\n\
--b\r\nContent-Type: application/pdf; name=\"Re\u{e7}u.pdf\"\r\n\
Content-Disposition: attachment; filename=\"Re\u{e7}u d\u{e9}taill\u{e9} pour l'ann\u{e9}e fiscale deux mille vingt-six, version finale.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n\
--b--\r\n"
    );
    let out = to_7bit(m.as_bytes(), true);
    assert_7bit(&out);
    let t = text(&out);
    for line in t.split("\r\n").take_while(|l| !l.is_empty()) {
        assert!(line.len() <= 78, "header line too long: {line:?}");
    }
    assert!(t.contains("Message-ID: <abc@fabrikam.test>\r\n"), "{t}");
    let parsed = parse(&out);
    assert_eq!(parsed.subject(), Some(subject));
    let from = parsed.from().unwrap().first().unwrap();
    assert_eq!(from.name(), Some("Jos\u{e9}, P\u{e9}rez"));
    assert_eq!(from.address(), Some("jose@fabrikam.test"));
    let to: Vec<(Option<&str>, Option<&str>)> = parsed
        .to()
        .unwrap()
        .iter()
        .map(|a| (a.name(), a.address()))
        .collect();
    assert_eq!(
        to,
        vec![
            (Some("Zo\u{eb} Meyer"), Some("zoe@contoso.test")),
            (None, Some("plain@contoso.test")),
            (Some("\u{c5}sa"), Some("asa@contoso.test")),
        ]
    );
    let pdf = parsed.attachment(0).unwrap();
    assert_eq!(
        pdf.content_disposition().unwrap().attribute("filename"),
        Some(
            "Re\u{e7}u d\u{e9}taill\u{e9} pour l'ann\u{e9}e fiscale deux mille vingt-six, version finale.pdf"
        )
    );
    assert_eq!(
        pdf.content_type().unwrap().attribute("name"),
        Some("Re\u{e7}u.pdf")
    );
    assert_eq!(pdf.contents(), b"%PDF");
}

#[test]
fn with_smtputf8_the_headers_stay_utf8_and_only_bodies_change() {
    let m = "Subject: \u{e9}t\u{e9}\r\n\r\nb\u{f6}dy\r\n";
    let out = to_7bit(m.as_bytes(), false);
    let t = String::from_utf8(out).unwrap();
    assert!(t.starts_with("Subject: \u{e9}t\u{e9}\r\n"), "{t}");
    assert!(t.ends_with("\r\n\r\nb=C3=B6dy\r\n"), "{t}");
}

#[test]
fn hostile_input_never_panics() {
    // Deep nesting is cut off at MAX_DEPTH and encoded as one leaf.
    let mut deep = String::new();
    for i in 0..200 {
        deep.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"
        ));
    }
    deep.push_str("\r\n\u{e9}\r\n");
    let out = to_7bit(deep.as_bytes(), true);
    assert_7bit(&out);
    // Truncations and odd bytes of a real message.
    let m = MIXED.as_bytes();
    for end in 0..m.len() {
        to_7bit(&m[..end], true);
    }
    for odd in [
        b"\xff\xfe:\r\n\r\n\x80".as_slice(),
        b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n\xe9",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\xe9",
        b"To: (\xe9\r\nSubject: \"\xe9\\",
        b"Content-Disposition: a; filename*=\xe9; =\xe9; x=\"\xe9\r\n",
        b"\r\n\xe9",
        b"\xe9",
    ] {
        to_7bit(odd, true);
    }
}

#[test]
fn two_delimiter_lines_in_a_row_make_an_empty_part_not_a_panic() {
    // Once a crash: the second delimiter took the first one's CRLF as its own, so a
    // part ended before it began.
    let m = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\ncaf\xc3\xa9\r\n--b\r\n--b--\r\n--b\r\n";
    let out = to_7bit(m, true);
    assert_7bit(&out);
    let t = text(&out);
    assert!(
        t.contains("\r\n\r\n--b\r\n--b\r\nContent-Type: text/plain"),
        "{t}"
    );
    assert!(t.ends_with("\r\n--b\r\n--b--\r\n--b\r\n"), "{t}");
    let parsed = parse(&out);
    assert!(
        parsed
            .parts
            .iter()
            .any(|p| p.contents() == "caf\u{e9}".as_bytes()),
        "{t}"
    );
}
