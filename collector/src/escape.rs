//! The one way a value from a peer (span attributes: driver id, host, model, backend,
//! device, policy, run id; report names and labels) reaches the report's markdown,
//! HTML or SVG. Anyone who can send OTLP, join a run or pick a `--driver-id` chooses
//! these strings, so none of them may become markup: they are flattened to one line,
//! capped, and escaped for where they land.

/// Characters kept of one value at most; longer ones end in `…`. Keeps a 10 kB
/// driver id from swamping a table.
pub const MAX_CHARS: usize = 200;

/// One line of at most [`MAX_CHARS`] characters: newlines, tabs and other control
/// characters (which would end a table row or a heading) become spaces.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_CHARS * 4));
    for (i, c) in s.chars().enumerate() {
        if i == MAX_CHARS {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// Characters that mean something to CommonMark or GFM inline or in a table cell:
/// emphasis, code spans, links and images, raw HTML and entities, headings' closing
/// `#`s, table cells, strikethrough. A backslash before each makes it literal.
fn md_significant(c: char) -> bool {
    matches!(
        c,
        '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '&' | '|' | '#' | '~' | '!'
    )
}

/// `s` as literal markdown text, safe inline and inside a table cell.
pub fn md(s: &str) -> String {
    let line = one_line(s);
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if md_significant(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `s` as a markdown code span (backticks included): nothing inside one is markup,
/// so only its fence must outlast any run of backticks in `s`. Not for table cells,
/// where a `|` would still split the cell.
pub fn md_code(s: &str) -> String {
    let line = one_line(s);
    let longest = line.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    // A space each side keeps a leading or trailing backtick off the fence; the
    // renderer strips one from each side again.
    let pad = if line.starts_with('`') || line.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{line}{pad}{fence}")
}

/// `s` as a markdown link target: every byte outside letters, digits and `-._~/:`
/// percent-encoded, so a space, parenthesis, `|` or `>` in a path cannot end the link
/// or the table cell it sits in. Not capped: a truncated path would not lead anywhere.
pub fn md_url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `s` as HTML text or a quoted attribute value (also valid in SVG).
pub fn html(s: &str) -> String {
    let line = one_line(s);
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_escapes_every_significant_character() {
        assert_eq!(md("plain-name_1"), r"plain-name\_1");
        assert_eq!(
            md("<script>alert(1)</script>"),
            r"\<script\>alert(1)\</script\>"
        );
        assert_eq!(
            md("a|b`c`*d*[e](f)#&amp;"),
            r"a\|b\`c\`\*d\*\[e\](f)\#\&amp;"
        );
        assert_eq!(md(r"back\slash"), r"back\\slash");
        assert_eq!(md("two\nlines\r\tend"), "two lines  end");
    }

    #[test]
    fn code_spans_outlast_the_backticks_inside() {
        assert_eq!(md_code("BAAI/bge"), "`BAAI/bge`");
        assert_eq!(md_code("a`b"), "``a`b``");
        assert_eq!(md_code("`x``"), "``` `x`` ```");
        assert_eq!(md_code("<b>\nx"), "`<b> x`");
    }

    #[test]
    fn link_targets_are_percent_encoded() {
        assert_eq!(md_url("/tmp/a b/r(1)|x.md"), "/tmp/a%20b/r%281%29%7Cx.md");
        assert_eq!(md_url("run-1_2.svg"), "run-1_2.svg");
    }

    #[test]
    fn long_values_are_capped_with_an_ellipsis() {
        let long = "x".repeat(10_000);
        let got = md(&long);
        assert_eq!(got.chars().count(), MAX_CHARS + 1);
        assert!(got.ends_with('…'));
        assert_eq!(one_line(&"é".repeat(MAX_CHARS)), "é".repeat(MAX_CHARS));
    }

    #[test]
    fn html_escapes_text_and_attribute_breakers() {
        assert_eq!(
            html(r#"<img src=x onerror="alert('1')">&"#),
            "&lt;img src=x onerror=&quot;alert(&#39;1&#39;)&quot;&gt;&amp;"
        );
        assert_eq!(html("a\nb"), "a b");
    }
}
