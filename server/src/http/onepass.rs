//! The common JSON infer request read in one pass. serde_json reads a request in two: it
//! delimits each input's `data` as a `RawValue`, checking its syntax byte by byte, and only
//! then are the numbers parsed (by `numbers`). On `mlp_large` (784 numbers a request) that
//! first pass was about 15% of the server's CPU. Here the numbers of an input whose `datatype`
//! comes before its `data` (as Triton's and KServe's clients write it) are parsed as they are
//! read, and the grammar is checked on the way.
//!
//! This reader only accepts what serde_json's reading of the same text would, and produces the
//! same request. Anything it does not handle is declined with `None` and the whole body goes to
//! serde_json, which also words every error: escapes in strings, `null` where a value may be
//! absent, duplicate keys, nesting deeper than `MAX_DEPTH`, `data` before its `datatype`,
//! data that `numbers` declines, and any text that is not valid JSON. `parameters` objects are delimited here and handed to
//! serde_json on their own, since their values are arbitrary JSON.

use std::collections::HashMap;

use bytes::BytesMut;
use infergate_runtime::{DataType, element_count};
use serde_json::Value;

use super::codec::{Data, JsonInput, JsonOutput, JsonRequest};
use super::numbers::{self, number_end, skip_ws};

/// Values nested deeper than this are left to serde_json, whose recursion limit (128) words
/// the error.
const MAX_DEPTH: usize = 100;

/// Reads `json` as an infer request; `None` when this reader declines it (see the module).
pub(super) fn read(json: &[u8]) -> Option<JsonRequest<'_>> {
    let mut r = Reader { bytes: json, i: 0 };
    let mut req = JsonRequest {
        id: None,
        parameters: None,
        inputs: Vec::new(),
        outputs: None,
    };
    let mut seen = [false; 4];
    r.object(|r, key| {
        let field = match key {
            "id" => 0,
            "parameters" => 1,
            "inputs" => 2,
            "outputs" => 3,
            _ => return r.skip(0),
        };
        if std::mem::replace(&mut seen[field], true) {
            return None;
        }
        match field {
            0 => req.id = Some(r.string()?.to_string()),
            1 => req.parameters = Some(r.parameters()?),
            2 => r.array(|r| {
                req.inputs.push(r.input()?);
                Some(())
            })?,
            _ => {
                let mut outputs = Vec::new();
                r.array(|r| {
                    outputs.push(r.output()?);
                    Some(())
                })?;
                req.outputs = Some(outputs);
            }
        }
        Some(())
    })?;
    // `inputs` is required (serde_json says so when it is missing), and nothing but whitespace
    // may follow the object.
    (seen[2] && skip_ws(json, r.i) == json.len()).then_some(req)
}

struct Reader<'a> {
    bytes: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    /// The next byte after whitespace, without taking it.
    fn peek(&mut self) -> Option<u8> {
        self.i = skip_ws(self.bytes, self.i);
        self.bytes.get(self.i).copied()
    }

    /// Takes `byte` after whitespace.
    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// An object's members in order: `member` is called with each key, positioned at its
    /// value, and must read that value.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array's elements in order: `element` reads each one.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            element(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string without escapes or control characters (declined: serde_json reads those).
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.i;
        let len = self.bytes[start..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if self.bytes[start + len] != b'"' {
            return None;
        }
        self.i = start + len + 1;
        std::str::from_utf8(&self.bytes[start..start + len]).ok()
    }

    /// Steps over one JSON value of any kind, checking its grammar.
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => self.object(|r, _| r.skip(depth + 1)),
            b'[' => self.array(|r| r.skip(depth + 1)),
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => {
                self.i = number_end(self.bytes, self.i)?;
                Some(())
            }
            _ => {
                let word: &[u8] = match self.bytes[self.i] {
                    b't' => b"true",
                    b'f' => b"false",
                    // `null`, where serde_json would read an absent value, is declined by the
                    // callers that care; elsewhere it is a value like any other.
                    b'n' => b"null",
                    _ => return None,
                };
                self.bytes[self.i..]
                    .starts_with(word)
                    .then(|| self.i += word.len())
            }
        }
    }

    /// The text of the next value, its grammar checked.
    fn raw(&mut self) -> Option<&'a str> {
        let start = skip_ws(self.bytes, self.i);
        self.skip(0)?;
        // A checked value is ASCII outside its strings, and its strings are checked UTF-8.
        std::str::from_utf8(&self.bytes[start..self.i]).ok()
    }

    /// A `parameters` object, delimited here and read by serde_json (its values are any JSON).
    fn parameters(&mut self) -> Option<HashMap<String, Value>> {
        if self.peek()? != b'{' {
            return None;
        }
        serde_json::from_str(self.raw()?).ok()
    }

    /// A shape: an array of integers that fit in `i64`.
    fn shape(&mut self) -> Option<Vec<i64>> {
        let mut shape = Vec::new();
        self.array(|r| {
            r.peek()?;
            let start = r.i;
            r.i = number_end(r.bytes, start)?;
            let text = std::str::from_utf8(&r.bytes[start..r.i]).ok()?;
            // serde_json reads `-0` as a float, which a shape refuses.
            if text.starts_with("-0") {
                return None;
            }
            shape.push(text.parse().ok()?);
            Some(())
        })?;
        Some(shape)
    }

    fn input(&mut self) -> Option<JsonInput<'a>> {
        let (mut name, mut shape, mut datatype, mut parameters, mut data) =
            (None, None, None, None, None);
        self.object(|r, key| {
            match key {
                "name" if name.is_none() => name = Some(r.string()?.to_string()),
                "shape" if shape.is_none() => shape = Some(r.shape()?),
                "datatype" if datatype.is_none() => datatype = Some(r.string()?),
                "parameters" if parameters.is_none() => parameters = Some(r.parameters()?),
                "data" if data.is_none() => data = Some(r.data(datatype, shape.as_deref())?),
                "name" | "shape" | "datatype" | "parameters" | "data" => return None,
                _ => r.skip(0)?,
            }
            Some(())
        })?;
        Some(JsonInput {
            name: name?,
            shape: shape?,
            datatype: datatype?.to_string(),
            parameters,
            data,
        })
    }

    /// An input's `data`: its numbers decoded now when `numbers` handles the datatype, otherwise
    /// its text, for `codec` to decode. Declined before the datatype: delimiting `data` here and
    /// decoding it later is a second pass, which costs more than serde_json's (`json_decode`:
    /// 1.5 times serde_json alone).
    fn data(&mut self, datatype: Option<&str>, shape: Option<&[i64]>) -> Option<Data<'a>> {
        if self.peek()? == b'n' {
            return None;
        }
        let datatype = DataType::parse(datatype?);
        let Some(dtype) = datatype.filter(|&d| numbers::handles(d)) else {
            return Some(Data::Text(self.raw()?));
        };
        // Never trust the shape for allocation: the text left bounds the element count.
        let left = (self.bytes.len() - self.i) / 2 + 1;
        let count = shape
            .and_then(|s| element_count(s).ok())
            .map_or(left, |c| c.min(left));
        let mut out = BytesMut::with_capacity(count.saturating_mul(dtype.size().unwrap_or(1)));
        self.i = numbers::decode_value(self.bytes, self.i, dtype, &mut out)?;
        Some(Data::Decoded(out))
    }

    fn output(&mut self) -> Option<JsonOutput> {
        let (mut name, mut parameters) = (None, None);
        self.object(|r, key| {
            match key {
                "name" if name.is_none() => name = Some(r.string()?.to_string()),
                "parameters" if parameters.is_none() => parameters = Some(r.parameters()?),
                "name" | "parameters" => return None,
                _ => r.skip(0)?,
            }
            Some(())
        })?;
        Some(JsonOutput {
            name: name?,
            parameters,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::read;
    use crate::http::codec::{decode, decode_serde};

    /// What a decoded body comes to (`decode::summary`, and the output preferences), or the
    /// error it failed with.
    fn outcome(json: &[u8], serde_only: bool) -> Result<String, String> {
        let decoded = if serde_only {
            decode_serde("m".into(), None, json, Bytes::new())
        } else {
            decode("m".into(), None, json, Bytes::new())
        };
        let (req, prefs) = decoded.map_err(|e| e.to_string())?;
        Ok(format!("{} {prefs:?}", crate::decode::summary(&req)))
    }

    /// `json`, a valid request, is read in one pass, to what serde_json reads it as.
    fn assert_read_alike(json: &str) {
        assert!(read(json.as_bytes()).is_some(), "declined: {json}");
        let (one, reference) = (
            outcome(json.as_bytes(), false),
            outcome(json.as_bytes(), true),
        );
        assert!(reference.is_ok(), "{json}: {reference:?}");
        assert_eq!(one, reference, "{json}");
    }

    #[test]
    fn common_requests_are_read_in_one_pass_as_serde_reads_them() {
        for json in [
            // Triton's and KServe's clients: datatype before data.
            r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1.5,-2,3e-1]}]}"#,
            // Nested data, shape last.
            r#"{"inputs":[{"name":"x","datatype":"INT32","data":[[1,2],[3,4]],"shape":[2,2]}]}"#,
            // Everything optional, whitespace everywhere, keys nobody reads.
            " {\n \"id\" : \"r-1\" , \"parameters\" : {\"binary_data_output\": false, \"n\": 3},\n\
             \"inputs\" : [ { \"name\" : \"a\" , \"shape\" : [ 2 ] , \"datatype\" : \"FP64\" ,\
             \"parameters\" : { } , \"data\" : [ 0.25 , -1E+2 ] , \"extra\" : [true, false, null, \"s\", {\"a\": [1, {}]}] } ,\
             {\"name\":\"b\",\"shape\":[0],\"datatype\":\"UINT8\",\"data\":[]} ] ,\
             \"outputs\" : [ {\"name\":\"y\",\"parameters\":{\"binary_data\":false}}, {\"name\":\"z\",\"x\":{}} ] } \n",
            // Datatypes `numbers` leaves to serde: text, decoded after.
            r#"{"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","data":["ab","c"]},{"name":"b","shape":[1],"datatype":"BOOL","data":[true]},{"name":"h","shape":[1],"datatype":"FP16","data":[0.5]}]}"#,
            r#"{"inputs":[]}"#,
        ] {
            assert_read_alike(json);
        }
        // Where the reader accepts and decoding fails after, it fails alike.
        let short = br#"{"inputs":[{"name":"input","shape":[2],"datatype":"FP32","data":[1]}]}"#;
        assert!(read(short).is_some());
        let error = Err("input 'input': expected 2 elements for shape [2], got 1".to_string());
        assert_eq!(outcome(short, false), error);
        assert_eq!(outcome(short, true), error);
    }

    #[test]
    fn declines_what_it_leaves_to_serde() {
        for json in [
            // Escapes, and null where a value may be absent.
            r#"{"inputs":[{"name":"in\"put","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            r#"{"id":null,"inputs":[]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":null}]}"#,
            // Duplicate keys (serde_json refuses them), a missing field, a shape serde refuses.
            r#"{"inputs":[],"inputs":[]}"#,
            r#"{"inputs":[{"name":"x","name":"y","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"shape":[1],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[-0],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1.0],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[9223372036854775808],"datatype":"FP32","data":[1]}]}"#,
            // Data `numbers` declines, after the datatype and before it.
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["1"]}]}"#,
            // Data before its datatype (serde_json's own key order): serde_json reads it faster.
            r#"{"inputs":[{"data":[[1,2],[3,4]],"datatype":"INT32","name":"x","shape":[2,2]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1e39]}]}"#,
            // Not JSON, or not all of it.
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[01]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1.]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[.5]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1 2]}]}"#,
            r#"{"inputs":[{"data":[1,,2],"datatype":"FP32","name":"x","shape":[1]}]}"#,
            r#"{"inputs":[{"data":[tru],"datatype":"BOOL","name":"x","shape":[1]}]}"#,
            r#"{"inputs":[]} x"#,
            r#"{"inputs":[]"#,
            r#"{"outputs":[]}"#,
            r#"["inputs"]"#,
            "",
        ] {
            assert!(read(json.as_bytes()).is_none(), "accepted: {json}");
        }
        // Deep nesting is serde_json's to judge.
        let deep = format!(
            r#"{{"inputs":[],"x":{}1{}}}"#,
            "[".repeat(101),
            "]".repeat(101)
        );
        assert!(read(deep.as_bytes()).is_none());
    }

    /// A request as a client might write it: members in any order but `datatype` before
    /// `data`, any whitespace.
    fn request() -> impl Strategy<Value = String> {
        let ws = prop::sample::select(vec!["", " ", "\n  ", "\t"]);
        let input = (
            "[a-z]{1,6}",
            prop::sample::select(vec![
                "FP32", "FP64", "INT64", "UINT8", "BOOL", "BYTES", "FP16",
            ]),
            proptest::collection::vec(-300i32..300, 0..6),
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(0usize..4, 4),
        );
        (
            proptest::collection::vec(input, 0..3),
            proptest::option::of("[a-z0-9-]{0,8}"),
            ws,
            any::<bool>(),
        )
            .prop_map(|(inputs, id, ws, outputs)| {
                let inputs: Vec<String> = inputs
                    .into_iter()
                    .map(|(name, dtype, values, nested, extra, order)| {
                        let data: Vec<String> = values
                            .iter()
                            .map(|&v| match dtype {
                                "BOOL" => (v > 0).to_string(),
                                "BYTES" => format!("\"{v}\""),
                                "FP32" | "FP64" | "FP16" => format!("{}", f64::from(v) / 8.0),
                                "UINT8" => v.unsigned_abs().min(255).to_string(),
                                _ => v.to_string(),
                            })
                            .collect();
                        let data = if nested && data.len().is_multiple_of(2) && !data.is_empty() {
                            let rows: Vec<String> = data
                                .chunks(2)
                                .map(|c| format!("[{}]", c.join(",")))
                                .collect();
                            format!("[{}]", rows.join(&format!(",{ws}")))
                        } else {
                            format!("[{}]", data.join(&format!("{ws},")))
                        };
                        let mut members = vec![
                            format!("\"name\":{ws}\"{name}\""),
                            format!("\"shape\":[{}]", values.len()),
                            format!("\"datatype\":\"{dtype}\""),
                            format!("\"data\":{ws}{data}"),
                        ];
                        if extra {
                            members.push("\"parameters\":{\"k\":1.5}".into());
                        }
                        // A shuffle from the drawn indices.
                        let last = members.len() - 1;
                        for (i, &j) in order.iter().enumerate() {
                            members.swap(i, j.min(last));
                        }
                        // The reader declines data before its datatype.
                        let at = |key: &str| members.iter().position(|m| m.starts_with(key));
                        if let (Some(d), Some(t)) = (at("\"data\""), at("\"datatype\""))
                            && d < t
                        {
                            members.swap(d, t);
                        }
                        format!("{{{ws}{}{ws}}}", members.join(&format!(",{ws}")))
                    })
                    .collect();
                let mut top = vec![format!("\"inputs\":{ws}[{}]", inputs.join(","))];
                if let Some(id) = id {
                    top.push(format!("\"id\":\"{id}\""));
                }
                if outputs {
                    top.insert(0, "\"outputs\":[{\"name\":\"o\"}]".into());
                }
                format!("{ws}{{{}}}{ws}", top.join(&format!("{ws},{ws}")))
            })
    }

    proptest! {
        /// Any such request is read in one pass, to the same request serde_json reads.
        #[test]
        fn requests_read_alike(json in request()) {
            assert_read_alike(&json);
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        /// With a byte changed, removed or added anywhere, the reader never accepts what
        /// serde_json refuses, and what it accepts decodes to the same request.
        #[test]
        fn changed_requests_are_never_read_otherwise(
            json in request(),
            at in any::<prop::sample::Index>(),
            edit in 0u8..3,
            byte in prop::sample::select(b"[]{},:\"-.0123456789eE+ tnx\\".to_vec()),
        ) {
            let mut bytes = json.into_bytes();
            let at = at.index(bytes.len() + 1);
            match edit {
                0 if at < bytes.len() => bytes[at] = byte,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, byte),
            }
            if read(&bytes).is_some() {
                let reference = outcome(&bytes, true);
                prop_assert_eq!(outcome(&bytes, false), reference, "{}", String::from_utf8_lossy(&bytes));
            }
        }
    }
}
