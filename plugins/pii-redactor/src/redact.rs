//! The pure scanner behind `pii-redactor`: finds e-mail addresses and phone
//! numbers in a byte string and replaces them with `[EMAIL]` / `[PHONE]`,
//! leaving every other byte exactly as it was. No regex, no allocation unless
//! something is found, no assumption that the input is UTF-8 (non-ASCII bytes
//! are never part of a match).
//!
//! JSON bodies (first non-blank byte `{` or `[`) are scanned only inside string
//! literals, with JSON escapes (`\n`, `\uXXXX`, `\\`) respected, so numbers
//! such as `"seed": 4155550100` and the document's structure are never touched
//! and the result is still valid JSON. Anything else is scanned as plain text.
//!
//! What counts as an e-mail: `local@domain` where `local` is 1-64 of
//! `A-Z a-z 0-9 . _ % + -` and `domain` is dot-separated labels of
//! `A-Z a-z 0-9 -` ending in an alphabetic TLD of 2+ letters (trailing dots and
//! hyphens are not taken).
//!
//! What counts as a phone number: 10 to 15 digits, optionally led by `+`
//! and/or `(`, in groups separated by a space, `-`, `.` or parentheses, e.g.
//! `+1 415-555-0100`, `(415) 555-0100`, `415.555.0100`, `4155550100`,
//! `+44 20 7946 0958`, `+33 1 23 45 67 89`. A grouped number has at most 6
//! groups, groups of at most 4 digits (the last may have 8), and only the
//! first two groups may be one digit long. Rejected as "not a phone": a run glued to
//! letters or `_` (`abc4155550100`, `4155550100abc`), the continuation of a
//! number (`1.4155550100`, `0100-2`), two groups split by a dot (a decimal
//! such as `12.34567890`), ISO and European dates (`2024-01-15 10`,
//! `15-01-2024 10`). A run of digits and separators that is too long is cut at
//! the longest leading set of groups that qualifies (`415 555 0100 2 times`
//! redacts `415 555 0100`).

/// What to look for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub email: bool,
    pub phone: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            email: true,
            phone: true,
        }
    }
}

pub const EMAIL: &[u8] = b"[EMAIL]";
pub const PHONE: &[u8] = b"[PHONE]";

/// How many of each were replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub emails: usize,
    pub phones: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Email,
    Phone,
}

/// Redacts a request body. `None` when nothing was found (the body must then
/// be left alone); otherwise the new body and what was replaced.
pub fn redact_body(body: &[u8], opts: Options) -> Option<(Vec<u8>, Counts)> {
    if !opts.email && !opts.phone {
        return None;
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let spans = if matches!(first, Some(b'{') | Some(b'[')) {
        json_spans(body, opts)
    } else {
        find_spans(body, 0, body.len(), opts, false)
    };
    if spans.is_empty() {
        return None;
    }
    Some(apply(body, &spans))
}

/// Redacts plain text (no JSON handling). `None` when nothing was found.
pub fn redact_text(text: &[u8], opts: Options) -> Option<(Vec<u8>, Counts)> {
    let spans = find_spans(text, 0, text.len(), opts, false);
    if spans.is_empty() {
        return None;
    }
    Some(apply(text, &spans))
}

fn apply(input: &[u8], spans: &[(usize, usize, Kind)]) -> (Vec<u8>, Counts) {
    let mut out = Vec::with_capacity(input.len());
    let mut counts = Counts::default();
    let mut at = 0;
    for &(start, end, kind) in spans {
        out.extend_from_slice(&input[at..start]);
        match kind {
            Kind::Email => {
                out.extend_from_slice(EMAIL);
                counts.emails += 1;
            }
            Kind::Phone => {
                out.extend_from_slice(PHONE);
                counts.phones += 1;
            }
        }
        at = end;
    }
    out.extend_from_slice(&input[at..]);
    (out, counts)
}

/// Spans inside the string literals of a JSON document.
fn json_spans(doc: &[u8], opts: Options) -> Vec<(usize, usize, Kind)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < doc.len() {
        if doc[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut j = start;
        while j < doc.len() && doc[j] != b'"' {
            j += if doc[j] == b'\\' { 2 } else { 1 };
        }
        let end = j.min(doc.len());
        spans.extend(find_spans(doc, start, end, opts, true));
        i = end + 1;
    }
    spans
}

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// True when `s[at]` is a backslash that starts an escape, i.e. it is preceded
/// by an even number of backslashes (within `lo..`).
fn escapes(s: &[u8], lo: usize, at: usize) -> bool {
    if s[at] != b'\\' {
        return false;
    }
    let mut n = 0;
    let mut k = at;
    while k > lo && s[k - 1] == b'\\' {
        n += 1;
        k -= 1;
    }
    n % 2 == 0
}

/// Matches in `s[lo..hi]`, sorted and disjoint. `json`: the range is the
/// inside of a JSON string literal, so `\x` escapes are not text.
fn find_spans(s: &[u8], lo: usize, hi: usize, opts: Options, json: bool) -> Vec<(usize, usize, Kind)> {
    let mut emails = Vec::new();
    if opts.email {
        let mut floor = lo; // matches never reach back before the previous one
        let mut a = lo;
        while a < hi {
            if s[a] == b'@' {
                if let Some((start, end)) = email_at(s, floor, a, hi, json) {
                    emails.push((start, end, Kind::Email));
                    floor = end;
                    a = end;
                    continue;
                }
            }
            a += 1;
        }
    }
    if !opts.phone {
        return emails;
    }
    let mut spans = Vec::with_capacity(emails.len());
    let mut gap_start = lo;
    for email in emails.iter().copied().chain(std::iter::once((hi, hi, Kind::Email))) {
        phones_in(s, lo, gap_start, email.0, json, &mut spans);
        if email.0 < email.1 {
            spans.push(email);
        }
        gap_start = email.1;
    }
    spans
}

/// An e-mail address around the `@` at `at`, not starting before `floor`.
fn email_at(s: &[u8], floor: usize, at: usize, hi: usize, json: bool) -> Option<(usize, usize)> {
    let mut l = at;
    while l > floor && is_local(s[l - 1]) {
        l -= 1;
    }
    if json && l > floor && escapes(s, floor, l - 1) {
        // `\n`, `\t`, ... (one letter) or `\uXXXX` (five) belong to the escape.
        let skip = if s[l] == b'u' { 5 } else { 1 };
        l = (l + skip).min(at);
    }
    while l < at && s[l] == b'.' {
        l += 1;
    }
    let local = at - l;
    if local == 0 || local > 64 {
        return None;
    }

    let mut r = at + 1;
    while r < hi && is_domain(s[r]) {
        r += 1;
    }
    while r > at + 1 && matches!(s[r - 1], b'.' | b'-') {
        r -= 1;
    }
    let domain = &s[at + 1..r];
    if domain.is_empty() || domain.len() > 253 {
        return None;
    }
    let mut labels = domain.split(|&b| b == b'.');
    let mut count = 0;
    let mut last: &[u8] = &[];
    for label in &mut labels {
        if label.is_empty() || label[0] == b'-' || label[label.len() - 1] == b'-' || label.len() > 63 {
            return None;
        }
        count += 1;
        last = label;
    }
    if count < 2 || last.len() < 2 || !last.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    Some((l, r))
}

fn is_phone_char(b: u8) -> bool {
    b.is_ascii_digit() || matches!(b, b' ' | b'-' | b'.' | b'(' | b')' | b'+')
}

/// Whether a phone number may start at `i` (`lo` is where the text begins).
fn left_boundary(s: &[u8], lo: usize, i: usize, json: bool) -> bool {
    if i == lo {
        return true;
    }
    let p = s[i - 1];
    if is_word(p) {
        // `\n4155550100` inside a JSON string: the `n` belongs to the escape.
        return json && matches!(p, b'n' | b't' | b'r' | b'b' | b'f') && i - 1 > lo && escapes(s, lo, i - 2);
    }
    if matches!(p, b'.' | b'-') && i - 1 > lo && s[i - 2].is_ascii_digit() {
        return false; // the continuation of another number
    }
    if matches!(p, b'+' | b'(') {
        return left_boundary(s, lo, i - 1, json);
    }
    true
}

/// Whether a phone number may end at `e` (exclusive).
fn right_boundary(s: &[u8], e: usize, hi: usize) -> bool {
    if e == hi {
        return true;
    }
    let n = s[e];
    if is_word(n) {
        return false;
    }
    !(matches!(n, b'.' | b'-') && e + 1 < hi && s[e + 1].is_ascii_digit())
}

/// Phone numbers in `s[from..to]` (`lo` is where the text begins).
fn phones_in(s: &[u8], lo: usize, from: usize, to: usize, json: bool, out: &mut Vec<(usize, usize, Kind)>) {
    let mut i = from;
    while i < to {
        let b = s[i];
        if !(b.is_ascii_digit() || b == b'+' || b == b'(') {
            i += 1;
            continue;
        }
        if !left_boundary(s, lo, i, json) {
            // Skip the rest of this word or number.
            i += 1;
            while i < to && (is_word(s[i]) || (matches!(s[i], b'.' | b'-') && i + 1 < to && s[i + 1].is_ascii_digit()))
            {
                i += 1;
            }
            continue;
        }
        let mut run_end = i;
        while run_end < to && is_phone_char(s[run_end]) {
            run_end += 1;
        }
        match phone_in_run(s, i, run_end, to) {
            Some(end) => {
                out.push((i, end, Kind::Phone));
                i = end;
            }
            None => {
                // Not a phone: skip the digits and separators (and, if the run
                // ends glued to a word, the word too).
                i = run_end.max(i + 1);
                while i < to && is_word(s[i]) {
                    i += 1;
                }
            }
        }
    }
}

/// The end of the longest phone number that starts at `i` within the run
/// `s[i..run_end]` of phone characters (`hi`: end of text).
fn phone_in_run(s: &[u8], i: usize, run_end: usize, hi: usize) -> Option<usize> {
    // Split into: prefix, then digit groups with the separators between them.
    let mut pos = i;
    while pos < run_end && !s[pos].is_ascii_digit() {
        pos += 1;
    }
    let prefix = &s[i..pos];
    if !matches!(prefix, b"" | b"+" | b"(" | b"+(" | b"+ (") {
        return None;
    }
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut seps: Vec<&[u8]> = Vec::new();
    while pos < run_end {
        let g = pos;
        while pos < run_end && s[pos].is_ascii_digit() {
            pos += 1;
        }
        groups.push((g, pos));
        let sep_start = pos;
        while pos < run_end && !s[pos].is_ascii_digit() {
            pos += 1;
        }
        if pos == run_end {
            break; // trailing separators are not part of the number
        }
        seps.push(&s[sep_start..pos]);
        if groups.len() == 8 {
            break;
        }
    }

    for j in (1..=groups.len()).rev() {
        if qualifies(prefix, &groups[..j], &seps[..j - 1]) && right_boundary(s, groups[j - 1].1, hi) {
            return Some(groups[j - 1].1);
        }
    }
    None
}

fn qualifies(prefix: &[u8], groups: &[(usize, usize)], seps: &[&[u8]]) -> bool {
    let lens: Vec<usize> = groups.iter().map(|(a, b)| b - a).collect();
    let digits: usize = lens.iter().sum();
    if !(10..=15).contains(&digits) {
        return false;
    }
    // Parentheses: at most one pair, around a single group.
    let mut open = prefix.contains(&b'(');
    let mut pairs = 0;
    for sep in seps {
        if !matches!(
            *sep,
            b" " | b"-" | b"." | b")" | b") " | b")-" | b" (" | b"(" | b"-(" | b" - "
        ) {
            return false;
        }
        let closes = sep.contains(&b')');
        let opens = sep.contains(&b'(');
        if closes {
            if !open {
                return false;
            }
            open = false;
            pairs += 1;
        }
        if opens {
            if open {
                return false;
            }
            open = true;
        }
    }
    if open || pairs > 1 {
        return false;
    }
    let k = groups.len();
    if k == 1 {
        return true;
    }
    if k > 6 {
        return false;
    }
    for (n, &len) in lens.iter().enumerate() {
        let max = if n == k - 1 { 8 } else { 4 };
        if len > max || (n >= 2 && len < 2) {
            return false;
        }
    }
    if k == 2 && seps[0] == b"." {
        return false; // a decimal number
    }
    if k >= 3 && seps[0] == b"-" && matches!((lens[0], lens[1], lens[2]), (4, 2, 2) | (2, 2, 4)) {
        return false; // a date
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(input: &str) -> String {
        match redact_text(input.as_bytes(), Options::default()) {
            Some((out, _)) => String::from_utf8(out).unwrap(),
            None => input.to_string(),
        }
    }

    fn body(input: &str) -> String {
        match redact_body(input.as_bytes(), Options::default()) {
            Some((out, _)) => String::from_utf8(out).unwrap(),
            None => input.to_string(),
        }
    }

    #[test]
    fn emails() {
        assert_eq!(text("mail john.doe+tag@example.co.uk today"), "mail [EMAIL] today");
        assert_eq!(text("a@b.io"), "[EMAIL]");
        assert_eq!(text("<bob_smith@mail-server.example.com>"), "<[EMAIL]>");
        assert_eq!(text("mailto:bob@x.org, alice@y.net."), "mailto:[EMAIL], [EMAIL].");
        assert_eq!(text("write to bob@example.com."), "write to [EMAIL].");
        assert_eq!(text("a@b.io@c.io"), "[EMAIL]@c.io");
        assert_eq!(text(".bob@x.io"), ".[EMAIL]");
        assert_eq!(text("x@a-b.example.com-"), "[EMAIL]-");
        assert_eq!(text("ünïcode bob@x.io ✓"), "ünïcode [EMAIL] ✓");
    }

    #[test]
    fn not_emails() {
        for s in [
            "a@b",
            "@x.com",
            "foo@bar",
            "user@localhost",
            "x@y.c",
            "x@y.c0m",
            "x@-y.com",
            "x@y..com",
            "me @ example.com",
            "price: 5@3.50",
            "@@",
            "",
        ] {
            assert_eq!(text(s), s, "{s:?}");
        }
    }

    #[test]
    fn phones() {
        assert_eq!(text("call +1 415-555-0100 now"), "call [PHONE] now");
        assert_eq!(text("call (415) 555-0100 now"), "call [PHONE] now");
        assert_eq!(text("call 415.555.0100"), "call [PHONE]");
        assert_eq!(text("call 4155550100."), "call [PHONE].");
        assert_eq!(text("+14155550100"), "[PHONE]");
        assert_eq!(text("+44 20 7946 0958"), "[PHONE]");
        assert_eq!(text("+33 1 23 45 67 89"), "[PHONE]");
        assert_eq!(text("+49 30 12345678"), "[PHONE]");
        assert_eq!(text("+1 (415) 555-0100"), "[PHONE]");
        assert_eq!(text("415-555-0100, 415-555-0101"), "[PHONE], [PHONE]");
        assert_eq!(text("4155550100 4155550101"), "[PHONE] [PHONE]");
        assert_eq!(text("415 555 0100 2 times"), "[PHONE] 2 times");
        assert_eq!(text("tel:4155550100"), "tel:[PHONE]");
        assert_eq!(text("123456789012345"), "[PHONE]");
        assert_eq!(text("(415)555-0100"), "[PHONE]");
    }

    #[test]
    fn not_phones() {
        for s in [
            "123456789",
            "1234567890123456",
            "3.14159265358979",
            "12.34567890",
            "1.4155550100",
            "2024-01-15 10:30",
            "15-01-2024 10:30",
            "v1.2.3 build 42",
            "order 12345",
            "abc4155550100",
            "4155550100abc",
            "id_4155550100",
            "415-555-0100-2",
            "1 2 3 4 5 6 7 8 9 0",
            "(415 555 0100",
            "415) 555 0100",
            "a+4155550100",
            "415--555--0100",
        ] {
            assert_eq!(text(s), s, "{s:?}");
        }
    }

    #[test]
    fn email_wins_over_phone() {
        assert_eq!(text("4155550100@example.com"), "[EMAIL]");
        assert_eq!(text("bob@x.io 4155550100"), "[EMAIL] [PHONE]");
    }

    #[test]
    fn options() {
        let s = b"bob@x.io 4155550100";
        let only_email = Options {
            email: true,
            phone: false,
        };
        let only_phone = Options {
            email: false,
            phone: true,
        };
        assert_eq!(redact_text(s, only_email).unwrap().0, b"[EMAIL] 4155550100");
        assert_eq!(redact_text(s, only_phone).unwrap().0, b"bob@x.io [PHONE]");
        assert_eq!(
            redact_body(
                s,
                Options {
                    email: false,
                    phone: false
                }
            ),
            None
        );
        assert_eq!(
            redact_text(s, Options::default()).unwrap().1,
            Counts { emails: 1, phones: 1 }
        );
    }

    #[test]
    fn nothing_found_is_none() {
        assert_eq!(redact_body(b"{\"messages\":[]}", Options::default()), None);
        assert_eq!(redact_body(b"", Options::default()), None);
    }

    #[test]
    fn json_only_inside_strings() {
        let input = "{\"seed\": 4155550100, \"n\":1.4155550100e3,\n  \"messages\": [ {\"role\":\"user\",\
                     \"content\":\"call 415-555-0100 or mail a@b.io\\nthanks\"} ] }";
        let want = "{\"seed\": 4155550100, \"n\":1.4155550100e3,\n  \"messages\": [ {\"role\":\"user\",\
                    \"content\":\"call [PHONE] or mail [EMAIL]\\nthanks\"} ] }";
        assert_eq!(body(input), want);
        serde_json::from_str::<serde_json::Value>(&body(input)).unwrap();
    }

    #[test]
    fn json_escapes_are_not_text() {
        let cases = [
            (r#"{"c":"line\n4155550100"}"#, r#"{"c":"line\n[PHONE]"}"#),
            (r#"{"c":"x\tbob@x.io"}"#, r#"{"c":"x\t[EMAIL]"}"#),
            (r#"{"c":"\nbob@x.io"}"#, r#"{"c":"\n[EMAIL]"}"#),
            (r#"{"c":"\u00e9bob@x.io"}"#, r#"{"c":"\u00e9[EMAIL]"}"#),
            (r#"{"c":"C:\\bob@x.io"}"#, r#"{"c":"C:\\[EMAIL]"}"#),
            (r#"{"c":"say \"bob@x.io\""}"#, r#"{"c":"say \"[EMAIL]\""}"#),
            (r#"{"c":"\"4155550100\""}"#, r#"{"c":"\"[PHONE]\""}"#),
            (r#"{"c":"\u00414155550100"}"#, r#"{"c":"\u00414155550100"}"#),
            (r#"["bob@x.io","4155550100"]"#, r#"["[EMAIL]","[PHONE]"]"#),
        ];
        for (input, want) in cases {
            let got = body(input);
            assert_eq!(got, want, "{input}");
            serde_json::from_str::<serde_json::Value>(&got).unwrap();
        }
    }

    #[test]
    fn plain_text_has_no_escapes() {
        // Outside JSON a backslash is just a character.
        assert_eq!(body(r"C:\temp\bob@x.io"), r"C:\temp\[EMAIL]");
        assert_eq!(body("  hello bob@x.io"), "  hello [EMAIL]");
    }

    #[test]
    fn other_bytes_stay_exact() {
        let mut input = b"\xff\xfe bob@x.io \x00\x01 4155550100 \xc3\xa9\r\n\t".to_vec();
        input.extend_from_slice("日本語 end".as_bytes());
        let (out, counts) = redact_body(&input, Options::default()).unwrap();
        let mut want = b"\xff\xfe [EMAIL] \x00\x01 [PHONE] \xc3\xa9\r\n\t".to_vec();
        want.extend_from_slice("日本語 end".as_bytes());
        assert_eq!(out, want);
        assert_eq!(counts, Counts { emails: 1, phones: 1 });
    }

    #[test]
    fn unterminated_json_string() {
        assert_eq!(body(r#"{"c":"bob@x.io"#), r#"{"c":"[EMAIL]"#);
        assert_eq!(body(r#"{"c":"a\"#), r#"{"c":"a\"#);
    }

    #[test]
    fn big_body() {
        let mut input = String::from("{\"messages\":[{\"role\":\"user\",\"content\":\"");
        for i in 0..2000 {
            input.push_str(&format!(
                "line {i}: reach me at user{i}@corp.example.com or +1 415-555-{:04}. ",
                i % 10000
            ));
        }
        input.push_str("\"}]}");
        let (out, counts) = redact_body(input.as_bytes(), Options::default()).unwrap();
        assert_eq!(
            counts,
            Counts {
                emails: 2000,
                phones: 2000
            }
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let content = v["messages"][0]["content"].as_str().unwrap();
        assert!(content.starts_with("line 0: reach me at [EMAIL] or [PHONE]. line 1:"));
    }
}
