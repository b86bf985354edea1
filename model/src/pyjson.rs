//! JSON text exactly as Python's `json.dump(v, indent=N, sort_keys=True)` writes it
//! (ASCII-escaped strings, `repr` floats), so files we write byte-match Python's.

use serde_json::Value;

pub fn dump(v: &Value, level: usize, out: &mut String) {
    const INDENT: usize = 2;
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (_, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) => out.push_str(&float_repr(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => string(s, out),
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Object(o) if o.is_empty() => out.push_str("{}"),
        Value::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(level + 1, INDENT, out);
                dump(item, level + 1, out);
            }
            newline(level, INDENT, out);
            out.push(']');
        }
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(level + 1, INDENT, out);
                string(k, out);
                out.push_str(": ");
                dump(&o[k.as_str()], level + 1, out);
            }
            newline(level, INDENT, out);
            out.push('}');
        }
    }
}

fn newline(level: usize, indent: usize, out: &mut String) {
    out.push('\n');
    out.extend(std::iter::repeat_n(' ', level * indent));
}

fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, positional for
/// 1e-4 <= |x| < 1e16, else `d.ddde±XX`.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{:e}", f); // shortest digits, e.g. "-1.2345e-5"
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if neg { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let body = if exp >= 0 {
            let int_len = exp + 1;
            if n <= int_len {
                format!("{digits}{}.0", "0".repeat((int_len - n) as usize))
            } else {
                format!(
                    "{}.{}",
                    &digits[..int_len as usize],
                    &digits[int_len as usize..]
                )
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits.clone()
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python_repr() {
        for (f, want) in [
            (0.1, "0.1"),
            (1e-12, "1e-12"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (0.02, "0.02"),
            (123.456, "123.456"),
            (1e16, "1e+16"),
            (1.5e300, "1.5e+300"),
            (2.0, "2.0"),
            (-0.5, "-0.5"),
            (1234567890123456.0, "1234567890123456.0"),
        ] {
            assert_eq!(float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn objects_sorted_and_indented_like_json_dump() {
        let v: Value = serde_json::from_str(r#"{"b":[1,{"z":null}],"a":"é\n","c":{},"d":[]}"#)
            .expect("valid json");
        let mut s = String::new();
        dump(&v, 0, &mut s);
        assert_eq!(
            s,
            "{\n  \"a\": \"\\u00e9\\n\",\n  \"b\": [\n    1,\n    {\n      \"z\": null\n    }\n  ],\n  \"c\": {},\n  \"d\": []\n}"
        );
    }
}
