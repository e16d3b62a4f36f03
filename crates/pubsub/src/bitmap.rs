//! The bitmaps change events name fields with over the Pub/Sub API
//! (`changedFields`, `nulledFields`, `diffFields` of the ChangeEventHeader).
//!
//! Salesforce's "Event Deserialization Considerations" (Pub/Sub API guide)
//! defines them: a bitmap field is a list of strings. The first holds a
//! bitmap, as `0x` and hexadecimal digits, of the top-level fields that are
//! not compound, bit *n* standing for the field at position *n* of the
//! event's Avro schema (the header is position 0). Each compound field
//! (a nested record: a lead's `Name`, an account's `BillingAddress`) with
//! fields set gets an element of its own, `{ParentFieldPosition}-{bitmap}`,
//! the bitmap over the nested record's fields. The documented example is
//! `['0x650004E0', '4-0x10', '7-0x06']`.
//!
//! The hexadecimal is the bitmap as a big-endian number (bit 0 is the last
//! digit's lowest bit), in whole bytes: Salesforce's Java sample decodes it
//! two digits at a time and reverses the bytes into a `BitSet`, the Python
//! sample reads it as one bit string and reverses it; both read what
//! [`encode`] writes. A list with no top-level field starts with the first
//! compound element, which both samples accept (they only expand a first
//! element that starts with `0x`).

/// One top-level field of an event schema, for [`decode`]: its name and,
/// for a compound field, the names of its nested fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldShape {
    pub name: String,
    pub nested: Option<Vec<String>>,
}

/// `0x` and the bitmap of `positions`, in whole bytes, upper case.
fn hex(positions: &[usize]) -> String {
    let top = positions.iter().copied().max().unwrap_or(0);
    let mut bytes = vec![0u8; top / 8 + 1];
    let len = bytes.len();
    for &p in positions {
        bytes[len - 1 - p / 8] |= 1 << (p % 8);
    }
    let digits: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
    format!("0x{digits}")
}

/// The positions set in a `0x...` bitmap, lowest first; `None` if it is not
/// hexadecimal.
fn positions(bitmap: &str) -> Option<Vec<usize>> {
    let digits = bitmap.strip_prefix("0x").or_else(|| bitmap.strip_prefix("0X"))?;
    let mut out = Vec::new();
    for (i, c) in digits.chars().rev().enumerate() {
        let nibble = c.to_digit(16)? as usize;
        for bit in 0..4 {
            if nibble & (1 << bit) != 0 {
                out.push(i * 4 + bit);
            }
        }
    }
    Some(out)
}

/// The bitmap list naming the top-level fields at `top` and, per compound
/// field (its position), the nested fields at the given positions. Empty
/// when nothing is named.
pub fn encode(top: &[usize], nested: &[(usize, Vec<usize>)]) -> Vec<String> {
    let mut out = Vec::new();
    if !top.is_empty() {
        out.push(hex(top));
    }
    for (parent, children) in nested {
        if !children.is_empty() {
            out.push(format!("{parent}-{}", hex(children)));
        }
    }
    out
}

/// The field names a bitmap list stands for, given the schema's top-level
/// fields: `Name.FirstName` for a nested field. Unreadable elements and
/// positions beyond the schema are skipped.
pub fn decode(bitmaps: &[String], schema: &[FieldShape]) -> Vec<String> {
    let mut out = Vec::new();
    for element in bitmaps {
        match element.split_once('-') {
            None => {
                for p in positions(element).unwrap_or_default() {
                    if let Some(f) = schema.get(p) {
                        out.push(f.name.clone());
                    }
                }
            }
            Some((parent, bitmap)) => {
                let Some(parent) = parent.parse::<usize>().ok().and_then(|p| schema.get(p)) else { continue };
                let Some(nested) = &parent.nested else { continue };
                for p in positions(bitmap).unwrap_or_default() {
                    if let Some(child) = nested.get(p) {
                        out.push(format!("{}.{child}", parent.name));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(names: &[&str]) -> Vec<FieldShape> {
        names
            .iter()
            .map(|n| match n.split_once('{') {
                Some((name, rest)) => {
                    FieldShape { name: name.into(), nested: Some(rest.trim_end_matches('}').split(',').map(str::to_owned).collect()) }
                }
                None => FieldShape { name: (*n).into(), nested: None },
            })
            .collect()
    }

    #[test]
    fn the_documented_example_decodes_to_its_fields_and_back() {
        // Salesforce's example, '0x650004E0': bits 5-7, 10, 24, 26, 29, 30.
        assert_eq!(positions("0x650004E0").unwrap(), vec![5, 6, 7, 10, 24, 26, 29, 30]);
        assert_eq!(encode(&[5, 6, 7, 10, 24, 26, 29, 30], &[(4, vec![4]), (7, vec![1, 2])]), ["0x650004E0", "4-0x10", "7-0x06"]);
    }

    #[test]
    fn bitmaps_are_whole_bytes_in_upper_case() {
        assert_eq!(encode(&[1], &[]), ["0x02"]);
        assert_eq!(encode(&[0, 11], &[]), ["0x0801"]);
        assert_eq!(encode(&[], &[]), Vec::<String>::new());
        // Only nested fields: the list starts with the compound element.
        assert_eq!(encode(&[], &[(1, vec![2])]), ["1-0x04"]);
    }

    #[test]
    fn decoding_names_nested_fields_after_their_parent() {
        let schema = shape(&["ChangeEventHeader", "Name{Salutation,FirstName,LastName}", "Title", "Email"]);
        let bitmaps = encode(&[2, 3], &[(1, vec![1, 2])]);
        assert_eq!(decode(&bitmaps, &schema), ["Title", "Email", "Name.FirstName", "Name.LastName"]);
        assert!(decode(&["0xZZ".into(), "9-0x01".into()], &schema).is_empty());
    }
}
